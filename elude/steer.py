"""Steering by sub-units (Section C.3): nominate concepts to amplify and suppress, match each to the kappa
sub-units that carry it best, and scale those by alpha (amplify) or gamma (suppress) — at every instance
or only at the nu instances (tokens, positions) of each example where each responds most — with the
disentangled layer hot-swapped into the loaded model; everything else is unchanged, and gains of 1 give
the original outputs exactly.

Two ways to match a concept to sub-units:
- ``--by label`` (the paper's): the kappa sub-units whose CLIP-Dissect labels (the labels stage) are most
  similar to the concept's text, by cosine similarity of their text embeddings; the paper embeds with a
  sentence-embedding model (pplx-embed), here with the labels' own CLIP-like text tower, so no second
  model is needed; ties (one label on many sub-units) go to the higher soft-WPMI score. ``--groups`` widens
  the match to the matched sub-units' whole concept groups (sub-units of other neurons that correlate).
- ``--by class``: concepts are the evaluation classes; a sub-unit's match to class c is its class
  selectivity, the mean over class-c images of its per-image max activation minus the mean over the other
  images, in units of its standard deviation over images.
- ``--by token`` (a causal language model; the default for text runs): concepts are words; a sub-unit's match
  to a word is its first-order effect on the model's next-token log-probability of the word's tokens over the
  evaluation texts (activation x gradient at its unit's output); ``--prompt`` (repeatable) shows, before and
  after, the largest next-token probability changes at the prompt's end and a greedy continuation.

    .venv/bin/python -m elude.steer [--run DIR] [--configfile F] [--by label|class] --suppress three
                                    [--amplify five] [--kappa 16] [--gamma -10] [--alpha 5] [--nu N] [--groups]

Defaults: the paper fixes no values (its operating points range over alpha 5-50, gamma -0.5 to -50, kappa
50-200 sub-units of a 1152-wide layer, chosen per concept by a coarse sweep); kappa 16 of the demo's ~240
sub-units, gamma -10 and alpha 5 are such a point for the demo (docs/studies.md: the sweep).

prints accuracy per class before and after (a language model: each word's mean next-token probability, and per
prompt the changes and continuations), and the largest output change with all gains 1 (0 = exact).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .evaluation.steering import load_labels, steer_classes, steer_labels, steer_tokens
from .method.layers import LazyDisentangledLayer
from .pipeline.config import load_run_config
from .pipeline.plan import run_artifacts, token_seeds
from .pipeline.stages.job import dataset, load_layer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m elude.steer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=".", help="working directory of a finished run (holds results/)")
    ap.add_argument("--configfile", help="the run's --configfile (default: none, the demo's config.yaml)")
    ap.add_argument("--by", choices=["label", "class", "token"], default=None,
                    help="match concepts to sub-unit labels (default when the run has labels), classes, or a "
                         "language model's next tokens (default for text runs)")
    ap.add_argument("--prompt", action="append", default=[], help="--by token: a prompt to continue (repeatable)")
    ap.add_argument("--new-tokens", type=int, default=12, help="--by token: greedy continuation length")
    ap.add_argument("--amplify", action="append", default=[], help="concept to amplify (repeatable)")
    ap.add_argument("--suppress", action="append", default=[], help="concept to suppress (repeatable)")
    ap.add_argument("--kappa", type=int, default=16, help="sub-units matched per concept")
    ap.add_argument("--groups", action="store_true", help="--by label: steer the matched sub-units' concept groups")
    ap.add_argument("--alpha", type=float, default=5.0, help="gain of amplified sub-units")
    ap.add_argument("--gamma", type=float, default=-10.0, help="gain of suppressed sub-units (C.3: strongly negative)")
    ap.add_argument("--nu", type=int, default=None, help="instances per example to steer (default: all)")
    args = ap.parse_args(argv)
    cfg = load_run_config(args.configfile)
    arts = run_artifacts(cfg)["seeds"][token_seeds(cfg)[0]]
    text = arts["evaluate"]["params"]["data"]["kind"] == "text"
    by = args.by or ("label" if "labels" in arts else "token" if text else "class")
    if by == "token" and not text:
        ap.error("--by token needs a run on text (data.kind: text) with a causal language model")
    if by == "label" and "labels" not in arts:
        ap.error("--by label needs the run's labels: set labels.model in the config and run the pipeline")
    dirs = {s: Path(args.run) / "results" / s / arts[s]["id"] for s in ("backbone", "merge", "labels") if s in arts}
    missing = [str(d) for d in dirs.values() if not d.is_dir()]
    if missing:
        ap.error(f"the run's artifacts are missing ({', '.join(missing)}): run the pipeline first with the same "
                 "--configfile in --run's directory")
    model, original, info = load_layer(dirs["backbone"])
    layer = LazyDisentangledLayer.load(dirs["merge"], original)
    ds = dataset(arts["evaluate"]["params"]["data"], "eval", dirs["backbone"])
    settings = dict(kappa=args.kappa, alpha=args.alpha, gamma=args.gamma, nu=args.nu,
                    accuracy=cfg["evaluate"]["accuracy"])
    if by == "token":
        from .models.text import load_tokenizer

        res = steer_tokens(model, info["path"], layer, ds, load_tokenizer(dirs["backbone"] / "tokenizer"),
                           amplify=args.amplify, suppress=args.suppress, prompts=args.prompt,
                           new_tokens=args.new_tokens, kappa=args.kappa, alpha=args.alpha, gamma=args.gamma, nu=args.nu)
        print_tokens(res)
        return
    if by == "label":
        labels, clip = load_labels(dirs["labels"])
        res = steer_labels(model, info["path"], layer, ds, labels, clip, amplify=args.amplify, suppress=args.suppress,
                           groups=args.groups, **settings)
        for name, ids in (("amplified", res["amplified"]), ("suppressed", res["suppressed"])):
            print(f"{name} sub-units ({len(ids)}), labels: {sorted({labels[i]['label'] for i in ids})}")
    else:
        try:
            classes = {k: [int(c) for c in getattr(args, k)] for k in ("amplify", "suppress")}
        except ValueError:
            ap.error("--by class takes class indices (integers)")
        res = steer_classes(model, info["path"], layer, ds, **classes, **settings)
    print(f"amplified sub-units: {res['amplified']}\nsuppressed sub-units: {res['suppressed']}")
    print(f"gains of 1: max |output change| {res['gains_one_max_change']:.3g}; steered: {res['max_output_change']:.3g}")
    print(f"{'class':>5} {'before %':>9} {'after %':>8} {'change':>7}")
    for c in res["before"]:
        b, a = 100 * res["before"][c], 100 * res["after"][c]
        print(f"{c:>5} {b:>9.1f} {a:>8.1f} {a - b:>+7.1f}")


def print_tokens(res: dict) -> None:
    print(f"amplified sub-units: {res['amplified']}\nsuppressed sub-units: {res['suppressed']}")
    print(f"{'word':>12} {'tokens':>14} {'p before':>9} {'gains 1':>9} {'p after':>9}")
    for word, (b, one, a) in res["concept_mass"].items():
        print(f"{word:>12} {str(res['concepts'][word]):>14} {b:>9.5f} {one:>9.5f} {a:>9.5f}")
    for r in res["prompts"]:
        print(f"\nprompt {r['prompt']!r} (gains of 1: max |next-token probability change| {r['gains_one_max_change']:.3g})")
        for tok, b, a in r["changes"]:
            print(f"  {tok!r:>14}: {b:.4f} -> {a:.4f}")
        print(f"  before: {r['before']!r}\n  after:  {r['after']!r}")


if __name__ == "__main__":
    main()
