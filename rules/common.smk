# Config validation, content ids, artifact paths and input functions shared by all rules.
import json

from snakemake.exceptions import WorkflowError

from elude.config import ConfigError, artifact_ids, validate_config
from elude.stages import n_shards, publish_run, shard_memory_mb

try:
    config.update(validate_config(config))  # defaults filled in; fails before any job with every problem
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

ARTIFACTS = artifact_ids(config)
IDS = {stage: a["id"] for stage, a in ARTIFACTS.items()}
PATHS = {stage: f"results/{stage}/{i}" for stage, i in IDS.items()}
RUN_DIR = f"results/runs/{config['run_name']}"


# GPU requests (resource `gpu`: SLURM --gpus, and a concurrency limit under profiles/local).
FORWARD_GPUS = int(config["compute"]["device"] == "cuda")  # cache, verify, evaluate
CLUSTER_GPUS = int(config["cluster"]["backend"] == "cuml")  # 'auto' asks for none: it uses a GPU only if given one
CLUSTER_ENV = f"../envs/cluster-{'cuml' if CLUSTER_GPUS else 'cpu'}.yaml"


def preflight():
    """Checks that need the executor: a local run that asks for cuML or CUDA where they cannot run fails
    here, while the DAG is built and before any job starts. (On SLURM, jobs run on GPU nodes: there each
    job checks first thing, with the same message.)"""
    if not workflow.local_exec or workflow.dryrun:
        return
    from elude.backbones import resolve_device
    from elude.clustering import resolve_backend

    try:
        if config["cluster"]["backend"] == "cuml":
            resolve_backend("cuml")
        if config["compute"]["device"] == "cuda":
            resolve_device("cuda")
    except RuntimeError as exc:
        raise WorkflowError(str(exc)) from None


def _layer_and_topk():
    topk_dir = checkpoints.topk.get().output.folder
    top = json.loads(open(f"{topk_dir}/manifest.json").read())
    layer = json.loads(open(f"{PATHS['backbone']}/layer.json").read())
    return layer["n_upstream"], top["k"]


def shard_mem_mb(wildcards):
    """Memory of a cluster/surgery shard job (elude.stages.shard_memory_mb)."""
    n_up, k = _layer_and_topk()
    return shard_memory_mb(config["cluster"]["units_per_shard"], k, n_up)


def shard_runtime(wildcards):
    """Minutes: 10 + units_per_shard x cluster.minutes_per_unit."""
    return int(10 + config["cluster"]["units_per_shard"] * config["cluster"]["minutes_per_unit"])


def stage_info(stage):
    """What a workflow script needs to publish a stage's artifact: name, id, parameters, input ids."""
    return {"name": stage, **ARTIFACTS[stage]}


def log_path(stage, suffix=""):
    return f"results/logs/{stage}/{IDS[stage]}{suffix}.log"


def bench_path(stage, suffix=""):
    """Snakemake benchmark (wall time, peak RSS) of a stage job, next to its log."""
    return f"results/benchmarks/{stage}/{IDS[stage]}{suffix}.tsv"


def shard_ids(wildcards):
    """Unit shards, known once top-k (a checkpoint) has recorded the number of units."""
    topk_dir = checkpoints.topk.get().output.folder
    n_units = json.loads(open(f"{topk_dir}/manifest.json").read())["n_units"]
    return [f"{s:04d}" for s in range(n_shards(n_units, config["cluster"]["units_per_shard"]))]


def surgery_shards(wildcards):
    return expand(f"{PATHS['surgery']}/shard-{{shard}}", shard=shard_ids(wildcards))


def cluster_shards(wildcards):
    return expand(f"{PATHS['cluster']}/shard-{{shard}}", shard=shard_ids(wildcards))


def final_report(wildcards):
    """The run's report. results/runs/<run_name>/ is an alias of it, refreshed by the main process, not by
    a job, so that going back to an earlier config runs nothing: here when the report already exists
    (Snakemake calls no hook when there is nothing to do), and in `onsuccess` after a run that made it."""
    preflight()
    if workflow.is_main_process and not workflow.dryrun:
        publish_run(PATHS["report"], RUN_DIR)
    return PATHS["report"]
