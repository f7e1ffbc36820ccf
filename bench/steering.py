"""Steering sweep (Section C.3; not a test): for every class of the evaluation split, suppress the kappa
sub-units matched to it with gain gamma, and report how much that class's accuracy drops against the other
classes', over a grid of (gamma, kappa): the sweep that chose `elude.evaluation.steering`'s defaults. ``--by class``
matches by class selectivity; ``--by label`` by the sub-units' CLIP-Dissect labels, with the class's name
(``--names``, default the digits') as the concept (``--groups``: their whole concept groups).

    .venv/bin/python bench/steering.py [--run DIR] [--configfile F] [--by class|label] [--gammas 0,-3,-10]
                                       [--kappas 8,16,32] [--nu N] [--groups]

Columns: gamma, kappa, the own class's drop (percentage points, mean over classes), the other classes'
mean drop, the worst other class's drop (mean over classes), and for how many classes the own drop is the
largest.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elude.demo.clip import DIGIT_NAMES  # noqa: E402
from elude.evaluation.steering import load_labels, steer_classes, steer_labels  # noqa: E402
from elude.method.layers import LazyDisentangledLayer  # noqa: E402
from elude.pipeline.config import load_run_config  # noqa: E402
from elude.pipeline.plan import run_artifacts, token_seeds
from elude.pipeline.stages.job import dataset, load_layer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT))
    ap.add_argument("--configfile")
    ap.add_argument("--gammas", default="0,-3,-10")
    ap.add_argument("--kappas", default="8,16,32")
    ap.add_argument("--nu", type=int, default=None)
    ap.add_argument("--by", choices=["class", "label"], default="class")
    ap.add_argument("--names", default=",".join(DIGIT_NAMES), help="--by label: the classes' names, in order")
    ap.add_argument("--groups", action="store_true")
    args = ap.parse_args()
    cfg = load_run_config(args.configfile)
    arts = run_artifacts(cfg)["seeds"][token_seeds(cfg)[0]]
    backbone_dir, merge_dir = (Path(args.run) / "results" / s / arts[s]["id"] for s in ("backbone", "merge"))
    model, original, info = load_layer(backbone_dir)
    layer = LazyDisentangledLayer.load(merge_dir, original)
    ds = dataset(arts["evaluate"]["params"]["data"], "eval", backbone_dir)
    if args.by == "label":
        labels, clip = load_labels(Path(args.run) / "results" / "labels" / arts["labels"]["id"])
        names = args.names.split(",")

    def steered(c, **settings):
        if args.by == "class":
            return steer_classes(model, info["path"], layer, ds, suppress=[c], **settings)
        return steer_labels(model, info["path"], layer, ds, labels, clip, suppress=[names[c]], groups=args.groups,
                            **settings)

    print(f"{'gamma':>6} {'kappa':>5} {'own drop':>9} {'others':>7} {'worst other':>12} {'own largest':>12}")
    for gamma in (float(g) for g in args.gammas.split(",")):
        for kappa in (int(k) for k in args.kappas.split(",")):
            own, others, worst, largest = [], [], [], 0
            for c in range(10 if not hasattr(ds, "labels") else int(max(ds.labels)) + 1):
                r = steered(c, kappa=kappa, gamma=gamma, nu=args.nu)
                drop = {k: 100 * (r["before"][k] - r["after"][k]) for k in r["before"]}
                rest = [d for k, d in drop.items() if k != c]
                own.append(drop[c])
                others.append(np.mean(rest))
                worst.append(max(rest))
                largest += drop[c] >= max(rest)
            print(f"{gamma:>6g} {kappa:>5} {np.mean(own):>9.1f} {np.mean(others):>7.1f} {np.mean(worst):>12.1f} "
                  f"{largest:>9}/{len(own)}", flush=True)


if __name__ == "__main__":
    main()
