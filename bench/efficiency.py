"""Inference cost benchmark (Table 5, Section B.4; not a test): ms per batch and peak memory of the backbone
alone, ELUDe dense (disentangling Linear + merge), ELUDe lazy (the original layer; sub-units on demand) and
each SAE/transcoder family hooked after the layer, every variant on one loaded backbone, side by side.

    .venv/bin/python bench/efficiency.py [--run DIR] [--configfile FILE]        # a finished pipeline run
    .venv/bin/python bench/efficiency.py --vit-b [--families topk,mp|all|none]   # a ViT-B-sized layer

- default: the artifacts of a finished run (``DIR``/results, default this checkout; the config is
  config.yaml, or ``--configfile`` as ``snakemake --configfile`` reads it): its backbone, ELUDe's merged
  layer and each family's selected baseline, measured by the workflow's own code
  (:func:`elude.pipeline.stages.studies.efficiency_table`), with the run's efficiency settings unless overridden;
- ``--vit-b``: a random-init timm ViT-B/16 at 224 px (the shape of the paper's DINOv2-B/14 layer 11 MLP:
  fc2 3072 -> 768) with fc2 of the last block split at expansion factor 8 (6,144 sub-units; K_u and the
  partitions random: the cost does not depend on which split), and random-init baselines at EF 8.

Prints per variant ms/batch (mean ± std over the timed passes), the ratio to the backbone, peak memory
(GPU: max_memory_allocated; CPU: peak resident set above the process's before any model), its ratio,
and the weights; beside the paper's ELUDe overhead (+14.9% time, +15.2% memory; H100, batch 256).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elude.evaluation.efficiency import measure, method_variants, rss_mb  # noqa: E402
from elude.models import backbones  # noqa: E402
from elude.pipeline.config import load_run_config  # noqa: E402
from elude.pipeline.plan import baseline_models, run_artifacts, token_seeds
from elude.pipeline.stages.studies import (  # noqa: E402
    efficiency_settings,
    efficiency_table,
    table5_of,
)

PAPER = {"time": 437.73 / 380.83 - 1, "memory": 577.49 / 501.10 - 1}


def run_table(args) -> dict:
    """Table 5 of a finished run's artifacts, as the workflow's efficiency stage measures it."""
    results = Path(args.run) / "results"
    config = load_run_config(args.configfile)
    run = run_artifacts(config)
    chain = run["seeds"][token_seeds(config)[0]]
    dirs = {"backbone": results / "backbone" / chain["backbone"]["id"], "merge": results / "merge" / chain["merge"]["id"]}
    selected = baseline_models(config, args.run, selection=True)
    missing = [str(d) for d in [*dirs.values(), *selected.values()] if not d.exists()]
    if missing:
        sys.exit(f"bench/efficiency.py: the run's artifacts are missing ({', '.join(missing[:3])}): run the pipeline "
                 f"first (`.venv/bin/snakemake --profile profiles/local --directory {args.run}"
                 f"{' --configfile ' + args.configfile if args.configfile else ''}`)")
    device = backbones.resolve_device(args.device or config["compute"]["device"])
    settings = override(efficiency_settings(config["efficiency"], device), args)
    return efficiency_table(str(dirs["backbone"]), str(dirs["merge"]), {f: str(d) for f, d in selected.items()},
                            config["data"], device, settings)


def vit_b_table(args) -> dict:
    """Table 5 of a random-init ViT-B/16 with fc2 of its last block split at EF 8."""
    import timm

    from elude.baselines import FAMILIES
    from elude.baselines.models import Baseline
    from elude.method.layers import DisentangledLayer, LazyDisentangledLayer
    from elude.method.surgery import bias_fractions, random_partition

    device = backbones.resolve_device(args.device or "cpu")
    settings = override({"batch_size": 256, "warmup": 100, "iterations": 500, "rounds": 1, "compile": True}
                        if device.type == "cuda" else
                        {"batch_size": 16, "warmup": 2, "iterations": 12, "rounds": 3, "compile": False}, args)
    floor = rss_mb()
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).to(device).eval()
    path = "blocks.11.mlp.fc2"
    layer = backbones.get_module(model, path)
    n_out, n_in = layer.weight.shape
    rng = np.random.default_rng(0)
    k = 1 + rng.multinomial(8 * n_out - n_out, np.full(n_out, 1 / n_out))  # K_u >= 1, 8 x units in all
    fracs = [random_partition(int(ku), n_in, rng) for ku in k]
    folder = Path(tempfile.mkdtemp(prefix="elude-vitb-"))
    DisentangledLayer.from_fractions(layer, fracs, [bias_fractions(f) for f in fracs]).save(folder)
    del fracs
    families = FAMILIES if args.families == "all" else [] if args.families == "none" else args.families.split(",")
    common = {"sparsity": 20, "archetypal_ratio": 0.1, "matryoshka_prefixes": [0.0625, 0.125, 0.25, 0.5, 1.0]}

    def baseline(family):
        torch.manual_seed(0)
        points = torch.randn(2048, n_out) if family == "archetypal" else None
        sae = Baseline({"family": family, **common}, n_in, n_out, 8 * n_out, points, device).eval()
        if hasattr(sae.model, "running_threshold"):  # BatchTopK's inference threshold, learnt in training
            sae.model.running_threshold = torch.zeros((), device=device)
        return sae

    variants = method_variants(model, path, dense=lambda: DisentangledLayer.load(folder).to(device),
                               lazy=lambda: LazyDisentangledLayer.load(folder, layer),
                               baselines={f: (lambda f=f: baseline(f)) for f in families})
    x = torch.randn(settings["batch_size"], 3, 224, 224, device=device)
    rows = measure(model, x, variants, warmup=settings["warmup"], iterations=settings["iterations"],
                   rounds=settings["rounds"], compile=settings["compile"], floor_mb=floor)
    return table5_of(rows, layer, device, settings)


def override(settings: dict, args) -> dict:
    for key in ("batch_size", "warmup", "iterations", "rounds"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.compile != "auto":
        settings["compile"] = args.compile == "on"
    return settings


def print_table(title: str, table: dict) -> None:
    s = table["settings"]
    print(f"\n{title}: {table['device_name']}; batch {s['batch_size']}, {s['warmup']} warm-up + {s['iterations']} "
          f"timed passes in {s['rounds']} round(s), compile {'on' if s['compile'] else 'off'}; memory: {table['memory']}")
    print(f"{'variant':<14} {'input dim':>9} {'ms/batch':>16} {'x time':>7} {'peak MB':>9} {'x mem':>6} {'weights MB':>10}")
    for name, r in table["rows"].items():
        print(f"{name:<14} {str(r['input_dim'] or 'N/A'):>9} {r['ms_per_batch']:>9.2f} ± {r['ms_std']:<5.2f}"
              f"{r['ms_per_batch_ratio']:>7.3f} {r['peak_mem_mb']:>9.1f} {r['peak_mem_mb_ratio']:>6.3f} {r['param_mb']:>10.2f}")
    rows = table["rows"]
    for name in ("elude_dense", "elude_lazy"):
        if name in rows:
            print(f"{name}: {100 * (rows[name]['ms_per_batch_ratio'] - 1):+.1f}% time, "
                  f"{100 * (rows[name]['peak_mem_mb_ratio'] - 1):+.1f}% peak memory, "
                  f"{100 * (rows[name]['param_mb_ratio'] - 1):+.1f}% weights over the backbone "
                  f"(paper, dense: {100 * PAPER['time']:+.1f}% time, {100 * PAPER['memory']:+.1f}% memory)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=str(ROOT), help="folder holding the finished run's results/ (default: this checkout)")
    ap.add_argument("--configfile", help="the run's --configfile (default: none, the demo's config.yaml)")
    ap.add_argument("--vit-b", action="store_true", help="a random-init ViT-B/16 layer at EF 8 instead of a run")
    ap.add_argument("--families", default="all", help="--vit-b: baseline families (comma-separated, all, none)")
    ap.add_argument("--device", help="cpu or cuda (default: the run's compute.device; --vit-b: cpu)")
    ap.add_argument("--batch-size", dest="batch_size", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--threads", type=int, help="torch threads on the CPU")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vit_b:
        print_table("ViT-B/16 (random init), blocks.11.mlp.fc2 3072 -> 768, EF 8", vit_b_table(args))
    else:
        print_table(f"run artifacts under {args.run}", run_table(args))


if __name__ == "__main__":
    main()
