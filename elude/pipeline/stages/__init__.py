"""One function per workflow stage: read inputs, call the method, write a content-addressed artifact.

Each function takes a :class:`~.job.Stage` (name, id, parameters, input ids) and plain paths, and publishes
its output folder atomically (:func:`elude.pipeline.artifacts.atomic_dir`). The Snakemake scripts in
``workflow_scripts/`` only unpack ``snakemake.*`` and call these, inside :func:`~.running.run_logged`.
Modules: :mod:`.job` (the Stage, the model-job prologue), :mod:`.chain` (ELUDe's own stages, backbone to
evaluate), :mod:`.baselines`, :mod:`.studies` (Tables 4, 5, 7 and the EF axis), :mod:`.judging` (LLM Rank),
:mod:`.labeling`, :mod:`.reporting` (report, aggregate, the run's alias), :mod:`.running`.
"""
import importlib

# Imported on first use: a job imports only its own stage's module, and the workflow's main process (which
# imports stages.reporting while it builds the DAG) none of the torch ones.
_WHERE = {**dict.fromkeys(("NotLosslessError", "backbone", "cache_shard", "cluster_shard", "evaluate", "merge",
                           "read_clusters", "surgery_shard", "topk", "topk_part", "verify"), "chain"),
          "Stage": "job", **dict.fromkeys(("aggregate", "publish_run", "report"), "reporting"), "run_logged": "running"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
