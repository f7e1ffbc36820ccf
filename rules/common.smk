# Config validation, content ids, artifact paths and input functions shared by all rules.
import json

from snakemake.utils import validate

from elude.artifacts import artifact_id
from elude.stages import n_shards


validate(config, "../schemas/config.schema.yaml")

DATA = config["data"]
_backbone = {"kind": config["backbone"]["kind"], "layer": config["backbone"]["layer"]}
_backbone[_backbone["kind"]] = config["backbone"][_backbone["kind"]]
if _backbone["kind"] == "demo":
    _backbone["data"] = DATA  # the demo model is trained on the probe split
elif not config["backbone"]["timm"]["name"]:
    raise ValueError("config: backbone.timm.name is required when backbone.kind is 'timm'")

# Each stage: its own parameters, and the ids of the artifacts it reads (content addressing).
STAGES = {
    "backbone": (_backbone, []),
    "cache": ({**config["cache"], "data": DATA}, ["backbone"]),
    "topk": (config["topk"], ["cache"]),
    "cluster": (config["cluster"], ["topk"]),
    "surgery": (config["surgery"], ["cluster"]),
    "merge": ({}, ["surgery"]),
    "verify": ({**config["verify"], "data": DATA}, ["merge"]),
    "evaluate": ({**config["evaluate"], "data": DATA}, ["merge"]),
    "report": ({**config["report"], "data": DATA, "run_name": config["run_name"]}, ["verify", "evaluate"]),
}
IDS = {}
INPUT_IDS = {}
for _stage, (_params, _upstream) in STAGES.items():
    INPUT_IDS[_stage] = {u: IDS[u] for u in _upstream}
    IDS[_stage] = artifact_id(_stage, _params, INPUT_IDS[_stage])
PATHS = {s: f"results/{s}/{IDS[s]}" for s in STAGES}
RUN_DIR = f"results/runs/{config['run_name']}"


def stage_info(stage):
    """What a workflow script needs to publish a stage's artifact: name, id, parameters, input ids."""
    return {"name": stage, "id": IDS[stage], "params": STAGES[stage][0], "inputs": INPUT_IDS[stage]}


def log_path(stage, suffix=""):
    return f"results/logs/{stage}/{IDS[stage]}{suffix}.log"


def shard_ids(wildcards):
    """Unit shards, known once top-k (a checkpoint) has recorded the number of units."""
    topk_dir = checkpoints.topk.get().output.folder
    n_units = json.loads(open(f"{topk_dir}/manifest.json").read())["n_units"]
    return [f"{s:04d}" for s in range(n_shards(n_units, config["cluster"]["units_per_shard"]))]


def surgery_shards(wildcards):
    return expand(f"{PATHS['surgery']}/shard-{{shard}}", shard=shard_ids(wildcards))


def cluster_shards(wildcards):
    return expand(f"{PATHS['cluster']}/shard-{{shard}}", shard=shard_ids(wildcards))


def bench_path(stage, suffix=""):
    """Snakemake benchmark (wall time, peak RSS) of a stage job, next to its log."""
    return f"results/benchmarks/{stage}/{IDS[stage]}{suffix}.tsv"
