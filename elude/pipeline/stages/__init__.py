"""One function per workflow stage: read inputs, call the method, write a content-addressed artifact.

Each function takes a :class:`~.job.Stage` (name, id, parameters, input ids) and plain paths, and publishes
its output folder atomically (:func:`elude.pipeline.artifacts.atomic_dir`). The Snakemake scripts in
``workflow_scripts/`` only unpack ``snakemake.*`` and call these, inside :func:`~.running.run_logged`.
Modules: :mod:`.job` (the Stage, the model-job prologue), :mod:`.chain` (ELUDe's own stages, backbone to
evaluate), :mod:`.baselines`, :mod:`.studies` (Tables 4, 5, 7 and the EF axis), :mod:`.judging` (LLM Rank),
:mod:`.labeling`, :mod:`.reporting` (report, aggregate, the run's alias), :mod:`.running`.
"""
from .chain import (
                    NotLosslessError,
                    backbone,
                    cache_shard,
                    cluster_shard,
                    evaluate,
                    merge,
                    read_clusters,
                    surgery_shard,
                    topk,
                    topk_part,
                    verify,
)
from .job import Stage
from .reporting import aggregate, publish_run, report
from .running import run_logged

__all__ = ["NotLosslessError", "Stage", "aggregate", "backbone", "cache_shard", "cluster_shard", "evaluate", "merge",
           "publish_run", "read_clusters", "report", "run_logged", "surgery_shard", "topk", "topk_part", "verify"]
