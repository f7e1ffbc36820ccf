"""Checks made while the workflow's DAG is built, before any job starts, so that a run that cannot finish
fails at once with what to do. (On SLURM, jobs run on GPU nodes: there each job checks first thing, with
the same messages.)"""
from __future__ import annotations


def dependencies(config: dict) -> None:
    """The optional libraries the jobs import in this environment (no --sdm conda): overcomplete for the
    baselines and Table 4's coherence (:class:`elude.baselines.BaselineDependencyError` names the extra)."""
    if config["baselines"]["families"] or config["dictionary"]["enabled"]:
        from ..baselines import overcomplete_sae

        overcomplete_sae()


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
    """The image data exists; and, where the jobs run here (``local``), that what the run asks for (cuML,
    CUDA, judge and CLIP models, UMAP) can run here. Raises RuntimeError, ValueError or FileNotFoundError.
    Each check imports its module only when the run needs it: the workflow's main process stays free of torch
    for the runs that need none of them."""
    if config["data"]["kind"] in ("imagefolder", "filelist", "text"):  # on the shared file system: checked anywhere
        from ..models.data import check_data

        check_data(config["data"])
    if not local:
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
