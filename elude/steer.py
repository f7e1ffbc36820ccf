"""Steering by sub-units (Section C.3): nominate concepts to amplify and suppress, match each to the kappa
sub-units that carry it best, and scale those by alpha (amplify) or gamma (suppress) — at every instance
or only at the nu instances (tokens, positions) of each example where each responds most — with the
disentangled layer hot-swapped into the loaded model; everything else is unchanged, and gains of 1 give
the original outputs exactly.

Concepts here are the evaluation labels (classes): a sub-unit's match to class c is its class selectivity,
the mean over class-c images of its per-image max activation minus the mean over the other images, in
units of its standard deviation over images. (Matching by the text similarity of CLIP-Dissect labels is the
paper's other route; it needs the labels stage.)

    .venv/bin/python -m elude.steer [--run DIR] [--configfile F] --suppress 3 [--amplify 5] [--kappa 16]
                                    [--gamma -10] [--alpha 5] [--nu N]

Defaults: the paper fixes no values (its operating points range over alpha 5-50, gamma -0.5 to -50, kappa
50-200 sub-units of a 1152-wide layer, chosen per concept by a coarse sweep); kappa 16 of the demo's ~240
sub-units, gamma -10 and alpha 5 are such a point for the demo (README: the sweep).

prints accuracy per class before and after, and the largest output change with all gains 1 (0 = exact).
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import iter_batches
from .evaluation import forward_batch, logits_of
from .layers import swapped


@torch.no_grad()
def class_selectivity(model: nn.Module, layer_path: str, layer, dataset, batch_size: int = 256) -> np.ndarray:
    """(n_sub-units, n_classes): how specifically each sub-unit responds to each class on ``dataset``
    (the original model's layer input, so the model is not changed here)."""
    per_image, labels = [], []
    for batch in iter_batches(dataset, batch_size):
        f = forward_batch(model, layer_path, batch)
        s = layer.subunits_of_instances(f.layer_in).masked_fill(~f.valid[..., None], -torch.inf)
        per_image.append(s.amax(1))
        labels.append(batch.labels)
    acts, labels = torch.cat(per_image).double(), torch.cat(labels)
    ok = labels >= 0
    acts, labels = acts[ok], labels[ok]
    std = acts.std(0).clamp_min(1e-12)
    out = []
    for c in range(int(labels.max()) + 1):
        inside = labels == c
        out.append(((acts[inside].mean(0) - acts[~inside].mean(0)) / std) if inside.any() else torch.zeros_like(std))
    return torch.stack(out, 1).numpy()


def match(selectivity: np.ndarray, concept: int, kappa: int) -> list[int]:
    """The kappa sub-units most selective for class ``concept``."""
    return [int(i) for i in np.argsort(-selectivity[:, concept], kind="stable")[:kappa]]


def gains(n_subunits: int, amplify: list[int] = (), suppress: list[int] = (), alpha: float = 5.0,
          gamma: float = -10.0) -> torch.Tensor:
    """Per sub-unit gain: alpha on ``amplify``, gamma on ``suppress``, 1 elsewhere; a sub-unit matched by
    both is amplified (C.3)."""
    g = torch.ones(n_subunits)
    g[list(suppress)] = gamma
    g[list(amplify)] = alpha
    return g


@contextlib.contextmanager
def steering(layer, gain: torch.Tensor | None, nu: int | None = None):
    """The layer's sub-units scaled by ``gain`` (restricted to the nu most active instances per example
    when ``nu`` is set) inside the block; its previous steering restored after."""
    before = layer.subunit_gain, layer.gain_instances
    layer.subunit_gain, layer.gain_instances = gain, nu
    try:
        yield layer
    finally:
        layer.subunit_gain, layer.gain_instances = before


@torch.no_grad()
def per_class_accuracy(model: nn.Module, layer_path: str, dataset, batch_size: int = 256,
                       reference: list[torch.Tensor] | None = None) -> tuple[dict[int, float], list[torch.Tensor]]:
    """Top-1 accuracy per class of the model as it is now, and its logits per batch (pass the original
    run's as ``reference`` to also get the largest absolute logit change under key -1)."""
    correct, total, logits_all, change = {}, {}, [], 0.0
    for i, batch in enumerate(iter_batches(dataset, batch_size)):
        logits = logits_of(forward_batch(model, layer_path, batch))
        logits_all.append(logits)
        if reference is not None:
            change = max(change, float((logits - reference[i]).abs().max()))
        for c, hit in zip(batch.labels.tolist(), (logits.argmax(-1) == batch.labels).tolist()):
            if c >= 0:
                total[c] = total.get(c, 0) + 1
                correct[c] = correct.get(c, 0) + int(hit)
    acc = {c: correct[c] / total[c] for c in sorted(total)}
    if reference is not None:
        acc[-1] = change
    return acc, logits_all


def steer_classes(model: nn.Module, layer_path: str, layer, dataset, *, amplify: list[int] = (),
                  suppress: list[int] = (), kappa: int = 16, alpha: float = 5.0, gamma: float = -10.0,
                  nu: int | None = None, batch_size: int = 256) -> dict:
    """Steer ``model`` (``layer`` hot-swapped in at ``layer_path``) by class concepts: the matched
    sub-units, accuracy per class before (original layer), with gains of 1 (must equal it), and after."""
    sel = class_selectivity(model, layer_path, layer, dataset, batch_size)
    up = sorted({s for c in amplify for s in match(sel, c, kappa)})
    down = sorted({s for c in suppress for s in match(sel, c, kappa)})
    before, ref = per_class_accuracy(model, layer_path, dataset, batch_size)
    with swapped(model, layer_path, layer):
        with steering(layer, torch.ones(layer.n_subunits), nu):
            unit_gain, _ = per_class_accuracy(model, layer_path, dataset, batch_size, ref)
        with steering(layer, gains(layer.n_subunits, up, down, alpha, gamma), nu):
            after, _ = per_class_accuracy(model, layer_path, dataset, batch_size, ref)
    return {"amplified": up, "suppressed": down, "before": before, "gains_one_max_change": unit_gain.pop(-1),
            "gains_one": unit_gain, "max_logit_change": after.pop(-1), "after": after,
            "settings": {"kappa": kappa, "alpha": alpha, "gamma": gamma, "nu": nu}}


def main(argv: list[str] | None = None) -> None:
    import yaml

    from .config import merge_config, run_artifacts, token_seeds, validate_config
    from .layers import LazyDisentangledLayer
    from .stages import _dataset, _load_layer

    ap = argparse.ArgumentParser(prog="python -m elude.steer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=".", help="working directory of a finished run (holds results/)")
    ap.add_argument("--configfile", help="the run's --configfile, merged over config.yaml")
    ap.add_argument("--amplify", type=int, action="append", default=[], help="class to amplify (repeatable)")
    ap.add_argument("--suppress", type=int, action="append", default=[], help="class to suppress (repeatable)")
    ap.add_argument("--kappa", type=int, default=16, help="sub-units matched per concept")
    ap.add_argument("--alpha", type=float, default=5.0, help="gain of amplified sub-units")
    ap.add_argument("--gamma", type=float, default=-10.0, help="gain of suppressed sub-units (C.3: strongly negative)")
    ap.add_argument("--nu", type=int, default=None, help="instances per example to steer (default: all)")
    args = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    if args.configfile:
        cfg = merge_config(cfg, yaml.safe_load(Path(args.configfile).read_text()))
    cfg = validate_config(cfg)
    arts = run_artifacts(cfg)["seeds"][token_seeds(cfg)[0]]
    run = Path(args.run)
    backbone_dir, merge_dir = (run / "results" / s / arts[s]["id"] for s in ("backbone", "merge"))
    model, original, info = _load_layer(backbone_dir)
    layer = LazyDisentangledLayer.load(merge_dir, original)
    res = steer_classes(model, info["path"], layer, _dataset(arts["evaluate"]["params"]["data"], "eval", backbone_dir),
                        amplify=args.amplify, suppress=args.suppress, kappa=args.kappa, alpha=args.alpha,
                        gamma=args.gamma, nu=args.nu)
    print(f"amplified sub-units: {res['amplified']}\nsuppressed sub-units: {res['suppressed']}")
    print(f"gains of 1: max |logit change| {res['gains_one_max_change']:.3g}; steered: {res['max_logit_change']:.3g}")
    print(f"{'class':>5} {'before %':>9} {'after %':>8} {'change':>7}")
    for c in res["before"]:
        b, a = 100 * res["before"][c], 100 * res["after"][c]
        print(f"{c:>5} {b:>9.1f} {a:>8.1f} {a - b:>+7.1f}")


if __name__ == "__main__":
    main()
