"""Checks made while the workflow's DAG is built, before any job starts, so that a run that cannot finish
fails at once with what to do. (On SLURM, jobs run on GPU nodes: there each job checks first thing, with
the same messages.)"""
from __future__ import annotations

import re
import shutil
import subprocess


def dependencies(config: dict) -> None:
    """The optional libraries the jobs import in this environment (no --sdm conda): overcomplete for the
    baselines and Table 4's coherence (:class:`elude.baselines.BaselineDependencyError` names the extra)."""
    if config["baselines"]["families"] or config["dictionary"]["enabled"]:
        from ..util.optional import overcomplete_check

        overcomplete_check()


def no_other_run() -> None:
    """No other Snakemake run is active in this directory (clearer than Snakemake's LockException, which
    suggests --unlock)."""
    from .artifacts import active_run

    if other := active_run():
        raise RuntimeError(
            f"run {other['run_name']!r} is running in this directory (Snakemake pid {other['pid']}, started "
            f"{other['started']}); wait for it to finish: a second invocation here would write the same files. "
            "To run another config at the same time on the same results, start it from its own directory whose "
            "`results` links to this one (docs/reliability.md); shared artifacts are then built once. Do not "
            "--unlock while that process runs.")


def preflight(config: dict, local: bool) -> None:
    """The image data exists; where the jobs run here (``local``), that what the run asks for (cuML,
    CUDA, judge and CLIP models, UMAP) can run here; where they are submitted, that the cluster has the GPU shards
    that compute.gpu_shards describes. Raises RuntimeError, ValueError or FileNotFoundError.
    Each check imports its module only when the run needs it: the workflow's main process stays free of torch
    for the runs that need none of them."""
    if config["data"]["kind"] in ("imagefolder", "filelist", "text"):  # on the shared file system: checked anywhere
        from ..models.data import check_data

        check_data(config["data"])
    if not local:
        if config["compute"]["gpu_shards"]:
            gpu_shards_offered(config["compute"]["gpu_shards"])
        return
    if config["labels"]["model"]:
        from ..evaluation.labels import clip_check

        clip_check(config["labels"]["model"])
    if config["judges"]["models"]:
        from ..evaluation.judges.backends import model_check, vllm_check

        for model in config["judges"]["models"]:
            model_check(model)
        if config["judges"]["backend"] == "vllm":
            vllm_check()
    if config["explain"]["model"]:
        from ..evaluation.judges.backends import model_check, vllm_check

        model_check(config["explain"]["model"], key="explain.model")
        if config["explain"]["backend"] == "vllm":
            vllm_check()
    reductions = [config["cluster"]["reduce"]["method"]] + [
        v.get("cluster", {}).get("reduce", {}).get("method") for v in config["ablations"]["variants"]]
    if "umap" in reductions:
        from ..method.clustering import umap_check

        umap_check()
    if config["cluster"]["backend"] == "cuml":
        from ..method.clustering import resolve_backend

        resolve_backend("cuml")
    if config["compute"]["device"] == "cuda":
        from ..models.backbones import resolve_device

        resolve_device("cuda")


def gres_counts(gres: str) -> dict[str, int]:
    """Counts per GRES name in one of sinfo's ``%G`` fields: ``gpu:a100:4(S:0-1),shard:32`` -> {gpu: 4, shard: 32}
    (types summed; ``(null)``: none)."""
    counts: dict[str, int] = {}
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if len(parts) >= 2 and parts[-1].isdigit():
            counts[parts[0]] = counts.get(parts[0], 0) + int(parts[-1])
    return counts


def gpu_shards_offered(sharing: dict) -> None:
    """compute.gpu_shards against the cluster, from where the run submits (sinfo): its partition exists and every
    node there offers gres/shard, ``per_gpu`` of them per GPU. (The GPU's memory, ``gpu_mb``, is not visible from
    a login node.) A job that asks for shards a partition lacks is refused by sbatch, or waits forever."""
    key = "compute.gpu_shards"
    if not shutil.which("sinfo"):
        raise RuntimeError(f"{key} is set but SLURM's sinfo is not found here: submit from a SLURM login node, or "
                           f"remove {key} (it is for SLURM runs)")
    partition, per_gpu = sharing["partition"], sharing["per_gpu"]
    proc = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%G"], capture_output=True, text=True, timeout=60)
    fields = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    if proc.returncode != 0 or not fields:
        raise RuntimeError(f"{key}.partition: SLURM lists no nodes in partition {partition!r} "
                           f"({proc.stderr.strip() or 'sinfo printed nothing'}); name one that `sinfo -s` lists")
    for field in sorted(fields):
        counts = gres_counts(field)
        gpus, shards = counts.get("gpu", 0), counts.get("shard", 0)
        if not shards:
            raise RuntimeError(f"{key}: nodes of partition {partition!r} offer no gres/shard (sinfo: {field}): ask "
                               f"the cluster's admins for GPU sharding (gres.conf Name=shard), or remove {key} "
                               "(one whole GPU per job)")
        if gpus and shards != gpus * per_gpu:
            raise RuntimeError(f"{key}.per_gpu is {per_gpu}, but nodes of partition {partition!r} have shard:{shards} "
                               f"over gpu:{gpus} (sinfo: {field}): set per_gpu to {shards / gpus:g}")
