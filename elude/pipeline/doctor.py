"""Before a long run, what will and will not work here, and why (``python -m elude.doctor``).

Usage::

    python -m elude.doctor [--configfile F ...] [--results DIR]

The config is resolved as ``snakemake [--configfile F ...]`` resolves it (without one: the demo). One line per
check: the GPUs and their memory, what ``cluster.backend`` runs as here, cuML, vLLM (when judges need it),
every configured model (backbone weights, judges, labeller) found locally, the data folders with their image
counts, the target layer's shape, top-k and min_cluster_size against the instances (beside the paper's ratios), free
disk against the run's largest artifacts (cache, top-k, clusters), SLURM (reachable, the profile's partitions
there, and the GPU shards that compute.gpu_shards describes), how many jobs the run plans per stage, and their
time (:mod:`elude.pipeline.estimate`: measured per-stage costs, the forward pass timed here). Exit status
1 when any check FAILs (what the run would stop on), else 0; ``warn`` lines will not stop it.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .estimate import assumed_ef, describe, forward_seconds_per_image, probe_instances, stage_seconds

PROFILE_PARTITIONS = Path(__file__).resolve().parents[2] / "profiles/slurm/partitions.yaml"
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass
class Finding:
    status: str  # "ok", "warn" or "FAIL"
    topic: str
    text: str


def _check(topic: str, fn, *args) -> Finding:
    """``fn`` returns the ok text or a Finding; an exception is the FAIL text (the checks' errors name the key)."""
    try:
        out = fn(*args)
        return out if isinstance(out, Finding) else Finding("ok", topic, out)
    except Exception as exc:  # noqa: BLE001 (every failure is reported, none stops the other checks)
        return Finding("FAIL", topic, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def device(config: dict) -> str | Finding:
    import torch

    from ..models.backbones import resolve_device

    gpus = [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
            for i in range(torch.cuda.device_count())]
    text = f"compute.device {config['compute']['device']}; GPUs here: {', '.join(gpus) or 'none'}; {os.cpu_count()} CPU cores"
    if config["compute"]["device"] == "cuda" and not gpus and shutil.which("sbatch"):  # a login node
        return Finding("warn", "device", text + ": fine on SLURM (each GPU job gets one, or shards of one with "
                       "compute.gpu_shards), not with profiles/local")
    resolve_device(config["compute"]["device"])
    return text


def clustering(config: dict) -> str:
    from ..method.clustering import cuml_available, resolve_backend

    runs_as = resolve_backend(config["cluster"]["backend"])
    ok, why = cuml_available()
    return f"cluster.backend {config['cluster']['backend']!r} runs as {runs_as} here; cuML {'usable' if ok else f'not usable ({why})'}"


def judges(config: dict) -> str:
    from ..evaluation.judges.backends import model_check, vllm_check

    models = config["judges"]["models"]
    if not models:
        return "judges.models is empty: LLM Rank is off"
    for model in models:
        model_check(model)
    if config["judges"]["backend"] == "vllm":
        vllm_check()
    return f"{len(models)} judge(s) found locally ({config['judges']['backend']})"


def models(config: dict) -> str:
    """The backbone's weights (and the labeller's) can be loaded here without a download."""
    from ..models import backbones

    bb = config["backbone"]
    kind, found = bb["kind"], []
    if kind == "timm" and bb["timm"].get("weights"):
        if not Path(bb["timm"]["weights"]).is_file():
            raise FileNotFoundError(f"backbone.timm.weights: {bb['timm']['weights']} does not exist")
        found.append(f"weights {bb['timm']['weights']}")
    elif kind == "factory":
        backbones.import_target(bb["factory"]["target"], "backbone.factory.target")
        found.append(f"factory {bb['factory']['target']}")
    elif kind == "hf":
        from ..evaluation.judges.backends import model_check

        model_check(bb["hf"]["model"], key="backbone.hf.model")
        found.append(f"Hugging Face {bb['hf']['model']}")
    else:
        demo = "the demo GPT-2 and its tokenizer" if config["data"]["kind"] == "text" else "the demo ViT"
        found.append({"demo": f"{demo} (trained in the backbone job)", "hub": f"torch.hub {bb['hub'].get('repo')} "
                      "(checked by the backbone job)", "timm": "timm random init / kwargs (no weights file)"}[kind])
    if config["data"]["kind"] == "text" and kind != "demo":  # the texts are tokenized by it
        from transformers import AutoTokenizer

        name = bb["tokenizer"] or bb["hf"].get("model")
        try:
            AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ValueError(f"backbone.tokenizer: no tokenizer {name!r} loads here ({str(exc).splitlines()[0][:200]})") from None
        found.append(f"tokenizer {name}")
    if config["labels"]["model"]:
        from ..evaluation.labels import clip_check

        clip_check(config["labels"]["model"])
        found.append(f"labeller {config['labels']['model']}")
    return "; ".join(found)


def data(config: dict) -> tuple[str, dict | None]:
    """The probe and evaluation images, counted (the counts feed the disk and time estimates)."""
    from ..models.data import DigitsDataset, check_data, folder_items, list_items, open_dataset

    d = config["data"]
    check_data(d)
    if d["kind"] == "digits":
        n = {s: len(DigitsDataset(s, d["eval_fraction"], d["split_seed"])) for s in ("probe", "eval")}
    elif d["kind"] == "imagefolder":
        n = {s: len(folder_items(d[f"{s}_dir"], f"data.{s}_dir")) for s in ("probe", "eval")}
    elif d["kind"] == "filelist":
        n = {s: len(list_items(d[f"{s}_list"], f"data.{s}_list")) for s in ("probe", "eval")}
    elif d["kind"] == "text":  # counted without the tokenizer (it is the backbone's)
        n = {s: len(open_dataset(d, s)) for s in ("probe", "eval")}
        source = d["text"]["path"] or f"builtin {d['text']['builtin']}"
        return f"data.kind text ({source}): {n['probe']} probe texts, {n['eval']} evaluation texts", n
    else:  # factory: the user's datasets, built here as the jobs build them
        n = {s: len(open_dataset(d, s)) for s in ("probe", "eval")}
        return f"data.kind factory: {n['probe']} probe examples, {n['eval']} evaluation examples", n
    return f"data.kind {d['kind']}: {n['probe']} probe images, {n['eval']} evaluation images", n


def factory_examples(data_cfg: dict):
    """``examples(n)``: the model input of the first n evaluation examples of a factory dataset (repeated
    when it has fewer), for the layer check and the timing: a factory model may take no image (a text
    model's token ids)."""
    from ..models.data import collate, open_dataset

    ds = open_dataset(data_cfg, "eval")

    def examples(n: int):
        idx = [i % len(ds) for i in range(n)]
        return collate([ds[i] for i in idx], idx).inputs
    return examples


def layer_shape(config: dict) -> dict | None:
    """units, inputs per unit and instances per image of the target layer, from an architecture built here
    without weights (demo, timm, factory), and its forward pass timed here (seconds per image, on the
    configured device where this machine has it); None for the kinds that need their weights to be built."""
    import torch

    from ..demo.vit import demo_model_spec
    from ..models import backbones

    bb = config["backbone"]
    examples = factory_examples(config["data"]) if config["data"]["kind"] == "factory" else None
    if bb["kind"] == "demo" and config["data"]["kind"] == "text":  # the demo GPT-2, on random token ids
        from ..demo.lm import demo_lm_config

        text = config["data"]["text"]
        config_lm = demo_lm_config(bb["demo"]["arch"], bb["demo"]["vocab_size"], text["max_len"])
        spec = {"kind": "hf", "module": "transformers:GPT2LMHeadModel", "config_class": "transformers:GPT2Config",
                "config": config_lm.to_dict()}

        def examples(n: int):
            ids = torch.randint(0, bb["demo"]["vocab_size"], (n, text["max_len"]), generator=torch.Generator().manual_seed(0))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    elif bb["kind"] == "demo":
        spec = demo_model_spec(bb["demo"]["arch"])
    elif bb["kind"] in ("timm", "factory"):
        spec = {"kind": bb["kind"], **({"name": bb["timm"]["name"], "kwargs": bb["timm"].get("kwargs", {})}
                                       if bb["kind"] == "timm" else bb["factory"])}  # (built without its weights)
    else:
        return None
    model = backbones.build_from_spec(spec).eval()
    layer = backbones.get_module(model, bb["layer"])
    backbones.check_target_layer(layer, bb["layer"])
    pre = {} if spec["kind"] == "hf" else {
        **(backbones.native_preprocess(model, spec) or {"size": bb["demo"]["arch"]["img_size"], "channels": 1}),
        **(bb.get("preprocess") or {})}
    seen = {}
    hook = layer.register_forward_hook(lambda m, i, o: seen.update(q=i[0]))  # (returns None: output kept)
    with torch.no_grad():
        backbones.call_model(model, examples(1) if examples is not None else
                             torch.zeros(1, pre["channels"], pre["size"], pre["size"]))
    hook.remove()
    w, _ = backbones.layer_weight_bias(layer)
    on = "cuda" if config["compute"]["device"] == "cuda" and torch.cuda.is_available() else "cpu"
    return {"units": w.shape[0], "inputs": w.shape[1], "per_image": backbones.instances_of(layer, seen["q"]).shape[1],
            "per_image_s": forward_seconds_per_image(model, pre.get("size"), pre.get("channels"), on, examples=examples),
            "timed_on": on}


def disk(config: dict, results: Path, probe_images: int | None, shape: dict | None) -> Finding:
    """Free space where results/ is written against the run's largest artifacts: the cache (instances x layer
    inputs in cache.dtype, before compression), the top-k lists and the clusters, per token seed."""
    where = next(p for p in [results, *results.resolve().parents] if p.exists())
    free = shutil.disk_usage(where).free
    if probe_images is None or shape is None:
        return Finding("warn", "disk", f"{free / 2**30:.1f} GiB free at {where}; the run's size is not estimated "
                       "here (a backbone or data kind that only its jobs measure)")
    seeds = config["cache"]["token_seed"] if isinstance(config["cache"]["token_seed"], list) else [0]
    instances = probe_instances(config, shape, probe_images)
    k = min(config["topk"]["k"], instances)
    need = len(seeds) * (instances * shape["inputs"] * DTYPE_BYTES.get(config["cache"]["dtype"], 4)
                         + shape["units"] * k * (8 + 4 + 4 + 4))  # top-k (index, value), labels, probabilities
    text = (f"{free / 2**30:.1f} GiB free at {where}; the run's cache, top-k and clusters take about "
            f"{need / 2**30:.2f} GiB ({len(seeds)} token seed(s) x {instances:,} instances x {shape['inputs']} inputs)")
    if need > free:
        raise OSError(text + ": not enough space (free some: `python -m elude.housekeeping`)")
    return Finding("warn" if need > free / 2 else "ok", "disk", text)


PAPER_K, PAPER_INSTANCES, PAPER_MCS = 400_000, 2 * 1_281_167, 1000  # Sec. 4.1, E.7: ImageNet train x 2 tokens


def scale(config: dict, counts: dict | None, shape: dict | None) -> str | Finding:
    """topk.k and cluster.min_cluster_size against the instances the run has, beside the paper's ratios (its
    defaults are ImageNet's: a smaller dataset needs both scaled, or no unit can split)."""
    if counts is None or shape is None:
        return Finding("warn", "scale", "the instances are only counted by the jobs: check topk.k and "
                       "cluster.min_cluster_size against them (the paper: k = 15.6% of the instances, min_cluster_size = k/400)")
    instances = probe_instances(config, shape, counts["probe"])
    k, mcs = min(config["topk"]["k"], instances), config["cluster"]["min_cluster_size"]
    ratio = f"k/{k / mcs:.0f}" if mcs < k else f"{mcs / k:.1f} x k"
    text = (f"topk.k {k:,} of {instances:,} instances ({k / instances:.1%}), cluster.min_cluster_size {mcs:,} = {ratio}; "
            f"the paper: {PAPER_K / PAPER_INSTANCES:.1%} and k/{PAPER_K // PAPER_MCS}")
    if config["topk"]["k"] > instances:
        text += f"; topk.k {config['topk']['k']:,} is clamped to the {instances:,} instances"
    top, n_eval = config["evaluate"]["ms_top_k"], counts["eval"]
    text += (f"; evaluate.ms_top_k {top} of {n_eval:,} evaluation images ({min(top, n_eval) / n_eval:.1%}; the paper: "
             "100 of 50,000 = 0.2%)")
    if 2 * mcs > k:
        return Finding("warn", "scale", text + ": no unit can split into two clusters of min_cluster_size: "
                       "lower cluster.min_cluster_size (e.g. k/400, the paper's ratio)")
    if top >= n_eval:
        return Finding("warn", "scale", text + ": the MS-Score's top set is every evaluation image: lower "
                       "evaluate.ms_top_k or add evaluation images (docs/findings/faithfulness-audit.md, D1)")
    return Finding("warn" if config["topk"]["k"] > instances else "ok", "scale", text)


def run_time(config: dict, counts: dict | None, shape: dict | None) -> str | Finding:
    if counts is None or shape is None:
        return Finding("warn", "time", "not estimated (the layer or the data are only measured by the jobs)")
    seconds = stage_seconds(config, shape, counts["probe"], counts["eval"], shape["per_image_s"])
    line = describe(seconds, shape["per_image_s"], shape["timed_on"], config["compute"]["device"])
    if config["baselines"]["families"] and config["baselines"]["expansion_factor"] in ("match", "match_live"):
        ef = assumed_ef(config)  # the baselines' size follows the EF the clustering gives, unknown until it has run
        line += (f"; the baselines at {config['baselines']['expansion_factor']} are sized for ELUDe at EF {ef:g} "
                 + ("(cluster.target_ef)" if config["cluster"]["target_ef"] else
                    "(assumed: their training grows with the EF the clustering gives; set cluster.target_ef to fix it)"))
    return line


def slurm(config: dict) -> Finding:
    import yaml

    from .checks import gpu_shards_offered

    sharing = config["compute"]["gpu_shards"]
    if not shutil.which("sinfo"):
        return Finding("warn" if sharing else "ok", "slurm", "no SLURM client here: run with profiles/local (or "
                       "from a login node)" + ("; compute.gpu_shards is for SLURM runs: here it does nothing" if sharing
                                              else ""))
    proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    if proc.returncode:
        why = " ".join(proc.stderr.split())[:160]
        return Finding("warn", "slurm", f"a SLURM client but no controller reachable (sinfo: {why})")
    here = {p.strip().rstrip("*") for p in proc.stdout.split()}
    wanted = set(yaml.safe_load(PROFILE_PARTITIONS.read_text())["partitions"])
    missing = sorted(wanted - here)
    if sharing:
        gpu_shards_offered(sharing)  # raises (a FAIL line) with what to set
    return Finding("warn" if missing else "ok", "slurm", f"partitions here: {', '.join(sorted(here))}" + (
        f"; profiles/slurm/partitions.yaml names {', '.join(missing)}, which this cluster does not have: EDIT it"
        if missing else "; profiles/slurm/partitions.yaml's partitions exist") + (
        f"; compute.gpu_shards: partition {sharing['partition']!r} offers {sharing['per_gpu']} shards per GPU"
        if sharing else ""))


def jobs(config: dict, shape: dict | None) -> str:
    """Jobs the run plans per stage: one per artifact, cache and unit stages one per shard."""
    from .plan import all_ids

    counts = {stage: len(ids) for stage, ids in all_ids(config).items() if ids}
    counts["cache"] = counts.get("cache", 0) * config["cache"]["shards"]
    counts["topk"] = counts.get("topk", 0) * (config["cache"]["shards"] + 1)  # a part per cache shard, the merge
    if shape:
        unit_shards = math.ceil(shape["units"] / config["cluster"]["units_per_shard"])
        for stage in ("cluster", "surgery"):
            counts[stage] = counts.get(stage, 0) * unit_shards
    total = sum(counts.values())
    return f"about {total} jobs: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + (
        "" if shape else " (cluster/surgery: x the layer's unit shards)")


def diagnose(configfiles: list[str], results: Path) -> list[Finding]:
    from .config import resolve_config

    try:
        config = resolve_config(configfiles)
    except Exception as exc:  # noqa: BLE001
        return [Finding("FAIL", "config", str(exc))]
    found = [Finding("ok", "config", f"run {config['run_name']!r} from "
                     f"{', '.join(map(str, configfiles)) or 'config.yaml (the demo)'}")]
    found += [_check("device", device, config), _check("clustering", clustering, config),
              _check("judges", judges, config), _check("models", models, config)]
    counts = None
    try:
        text, counts = data(config)
        found.append(Finding("ok", "data", text))
    except Exception as exc:  # noqa: BLE001
        found.append(Finding("FAIL", "data", str(exc).splitlines()[0]))
    try:
        shape = layer_shape(config)
        found.append(Finding("ok", "layer", f"{config['backbone']['layer']}: {shape['units']} units x {shape['inputs']} "
                             f"inputs, {shape['per_image']} instances per image") if shape else
                     Finding("warn", "layer", "not built here (hub/hf models need their weights): the backbone job checks it"))
    except Exception as exc:  # noqa: BLE001
        shape = None
        found.append(Finding("FAIL", "layer", str(exc).splitlines()[0]))
    found += [_check("disk", disk, config, results, counts and counts["probe"], shape), _check("slurm", slurm, config),
              _check("scale", scale, config, counts, shape), _check("jobs", jobs, config, shape),
              _check("time", run_time, config, counts, shape)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elude.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="+", default=[], help="the run's --configfile(s) (default: the demo)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    args = parser.parse_args(argv)
    found = diagnose(args.configfile, args.results)
    width = max(len(f.topic) for f in found)
    for f in found:
        print(f"{f.status:<4}  {f.topic:<{width}}  {f.text}")
    failed = [f.topic for f in found if f.status == "FAIL"]
    print(f"\n{'FAIL: ' + ', '.join(failed) + ' (the run would stop there)' if failed else 'nothing here stops the run'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
