"""The MS-Score protocol's open choices, measured side by side on a finished run (not a test;
docs/findings/faithfulness-audit.md, D1 and D6): the mean MS-Score (layer space, eq. 7) of the original units,
ELUDe's sub-units, the random-partition control and each selected baseline, at several top-K sizes
(``evaluate.ms_top_k``; the paper: 100 of ImageNet's 50,000 validation images, 0.2%) and under both readings
of Section B.2's weight normalisation ("the activation range observed across the entire evaluation split":
the range over every instance, the workflow's, or over the images' max activations).

    .venv/bin/python bench/ms_protocol.py [--run DIR] [--configfile FILE] [--top-k 5 10 25 50 100]

Every number comes from the workflow's own scoring code (:func:`elude.evaluation.scoring.score`) on the run's
backbone, merged layer and baselines (token seed: the first); only K and the reading change.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elude.baselines.models import Baseline  # noqa: E402
from elude.evaluation import scoring  # noqa: E402
from elude.evaluation.top_images import WEIGHT_RANGES  # noqa: E402
from elude.method.layers import DisentangledLayer  # noqa: E402
from elude.pipeline.config import load_run_config  # noqa: E402
from elude.pipeline.plan import baseline_models, run_artifacts, token_seeds  # noqa: E402
from elude.pipeline.stages.job import model_job  # noqa: E402
from elude.util.optional import overcomplete_sae  # noqa: E402


def feature_sets(job, merged: DisentangledLayer, baselines: dict[str, Baseline], random_seed: int) -> dict:
    """name -> activations of a Forward: the evaluate stage's sets, then each baseline's codes (as
    :func:`elude.evaluation.scoring.score_baseline` reads them)."""
    sets = scoring.elude_feature_sets(job.layer, merged, random_seed)
    sets["ELUDe"] = sets.pop("subunits")
    sets = {name: sets[name] for name in ("units", "ELUDe", "random")}
    for family, b in baselines.items():
        sets[family] = lambda f, b=b: b.apply(f.layer_in, f.layer_out)[0]
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT), help="the run's working folder (holding results/)")
    ap.add_argument("--configfile", default=None, help="the run's --configfile (default: the demo)")
    ap.add_argument("--top-k", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = Path(args.run) / "results"
    config = load_run_config(args.configfile)
    run = run_artifacts(config)
    chain = run["seeds"][token_seeds(config)[0]]
    backbone_dir, merge_dir = (results / s / chain[s]["id"] for s in ("backbone", "merge"))
    selected = baseline_models(config, args.run)  # the models Table 2 scored
    missing = [str(d) for d in [backbone_dir, merge_dir, *selected.values()] if not d.exists()]
    if missing:
        sys.exit(f"bench/ms_protocol.py: the run's artifacts are missing ({', '.join(missing[:3])}): run the "
                 "pipeline first")
    ev = config["evaluate"]
    job = model_job({"device": config["compute"]["device"], "data": config["data"]}, backbone_dir, "eval")
    merged = DisentangledLayer.load(merge_dir)
    if selected:
        overcomplete_sae()  # (the families from overcomplete; a clear error without the extra)
    baselines = {f: Baseline.load(d, job.device) for f, d in selected.items()}
    sets = feature_sets(job, merged, baselines, ev["random_seed"])
    n_images = len(job.data)
    print(f"run {config['run_name']!r}: {n_images} evaluation images; the run's own setting: top {ev['ms_top_k']}, "
          "weights over the instances' range")
    print("| top-K (% of images) | weight range | " + " | ".join(sets) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in sets) + " |")
    for k in args.top_k:
        for reading in WEIGHT_RANGES:
            res = scoring.score(job.model, job.info["path"], job.data, sets, {}, ms_top_k=k,
                                batch_size=ev["batch_size"], weight_range=reading)
            means = [scoring.nanmean(res["ms"][name]["layer"]) for name in sets]
            print(f"| {k} ({100 * min(k, n_images) / n_images:.1f}%) | {reading} | "
                  + " | ".join("n/a" if m is None else f"{100 * m:.2f}" for m in means) + " |", flush=True)


if __name__ == "__main__":
    main()
