"""Where each baseline family is sparse (not a test; issue 26): the evaluation-free L0 of every family over a
wide range of its sparsity setting, trained on a finished run's own probe instances (its activation cache, token
seed: the first) with the run's epochs, batch and learning rate, by the workflow's training code.

    .venv/bin/python bench/sparsity_range.py [--run DIR] [--configfile FILE] [--epochs N] [--families ...]
                                             [--values W ...]

The penalty families (Vanilla and the Transcoder: the L1 weight w_l1; JumpReLU: the L0 weight w_sp) are swept
over the paper's grid (Sec. E.1) and two decades beyond it; the k families (TopK, BatchTopK, Matryoshka, MP;
Archetypal: a ratio) fix their L0 by construction and are trained once at the run's setting. Prints per point:
L0 (features active per training instance), L0 as % of the dictionary, dead features, R^2 and the standardised
MSE (eq. 9's inputs), and whether the point is sparse by the report's flag (L0 <= 10% of the features); for
JumpReLU the learnt thresholds' median (they start at overcomplete's exp(-3) = 0.05 and, under Adam, each log-threshold
moves about lr per step at most: the number of steps, not w_sp, bounds how sparse a short training can get).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elude.baselines import FAMILIES, family_grid  # noqa: E402
from elude.baselines.models import Baseline  # noqa: E402
from elude.baselines.train import InstanceStream, archetypal_points, fit, normalisation, training_metrics  # noqa: E402
from elude.models.cache import Cache  # noqa: E402
from elude.pipeline.config import load_run_config  # noqa: E402
from elude.pipeline.plan import run_folders, token_seeds  # noqa: E402
from elude.pipeline.stages.job import layer_weights  # noqa: E402
from elude.reporting.tables import NOT_SPARSE_L0  # noqa: E402

PENALTY = {"vanilla": ("w_l1", [1e-3, 5e-3, 2e-2, 0.1, 0.5, 2.0]), "transcoder": ("w_l1", [1e-3, 5e-3, 2e-2, 0.1, 0.5, 2.0]),
           "jumprelu": ("w_sp", [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT), help="the run's working folder (holding results/)")
    ap.add_argument("--configfile", default=None, help="the run's --configfile (default: the demo)")
    ap.add_argument("--epochs", type=int, default=None, help="default: the run's baselines.epochs")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--values", type=float, nargs="+", default=None,
                    help="the penalty families' weights to try (default: the paper's grid and two decades beyond)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    config = load_run_config(args.configfile)
    folders = run_folders(args.configfile, args.run)
    if "cache" not in folders or "backbone" not in folders:
        sys.exit("bench/sparsity_range.py: the run's cache is missing: run the pipeline first")
    b = config["baselines"]
    epochs = args.epochs or b["epochs"]
    shards = sorted(str(p) for p in folders["cache"].glob("shard-*"))
    w, bias, info = layer_weights(str(folders["backbone"]))
    stream = InstanceStream(Cache(shards), w, bias)
    n_feat = round(8 * info["n_units"]) if not isinstance(b["expansion_factor"], (int, float)) else \
        max(1, round(b["expansion_factor"] * info["n_units"]))
    print(f"run {config['run_name']!r} (token seed {token_seeds(config)[0]}): {stream.n_rows} probe instances, layer "
          f"{w.shape[1]} -> {w.shape[0]}, {n_feat} features, {epochs} epochs, batch {b['batch_size']}")
    print("| family | setting | L0 | L0 (% of features) | dead | R² | MSE | sparse | time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for family in args.families:
        settings = {"family": family, **{k: b[k] for k in ("sparsity", "archetypal_ratio", "archetypal_points",
                                                           "matryoshka_prefixes", "init_seed")}}
        grid = family_grid(b, family)
        hp = {axis: values[len(values) // 2] for axis, values in grid.items()}  # the middle of the run's own grid
        axis, values = PENALTY.get(family, (None, [None]))
        values = args.values if axis and args.values else values
        norm = normalisation(stream, family == "transcoder", b["standardise"])
        points = (archetypal_points(stream, b["archetypal_points"], b["init_seed"], norm["in_mean"], norm["in_scale"])
                  if family == "archetypal" else None)
        for v in values:
            point = {**hp, **({axis: v} if axis else {})}
            torch.manual_seed(b["init_seed"])
            model = Baseline(settings, w.shape[1], w.shape[0], n_feat, points)
            model.set_normalisation(norm["in_mean"], norm["in_scale"], norm["out_mean"], norm["out_scale"])
            t = time.perf_counter()
            fit(model, stream, hp=point, epochs=epochs, batch_size=b["batch_size"], seed=b["init_seed"],
                device=torch.device("cpu"))
            m = training_metrics(model, stream, torch.device("cpu"))
            sparse = m["l0"] <= NOT_SPARSE_L0 * n_feat
            setting = f"{axis} = {v:g}" if axis else f"k = {b['sparsity']}" if family != "archetypal" else \
                f"ratio {b['archetypal_ratio']:g}"
            if family == "jumprelu":  # how far the learnt thresholds moved from overcomplete's exp(-3) = 0.05
                setting += f" (median threshold {float(torch.exp(model.model.thresholds.detach()).median()):.3f})"
            print(f"| {family} | {setting} | {m['l0']:.1f} | {100 * m['l0_fraction']:.1f} | {m['dead_features']} | "
                  f"{100 * m['r2']:.2f} | {m['mse']:.4f} | {'yes' if sparse else '**no**'} | "
                  f"{time.perf_counter() - t:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
