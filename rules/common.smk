# Config validation, content ids, artifact paths and input functions shared by all rules.
#
# Every rule's output is results/<stage>/{id}[/<shard>]: the id wildcard selects the artifact's
# parameters and input ids from REG (elude.pipeline.plan.run_artifacts), so one DAG can hold several variants
# of a stage (one per seeded token dataset) and each rule is written once.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from elude.evaluation.judges import judge_name
from elude.pipeline import checks, resources
from elude.pipeline.artifacts import record_run, remember_run
from elude.pipeline.config import ConfigError, resolve_config
from elude.pipeline.input_keys import (REPORT_STUDIES, ablation_runs, dictionary_runs, ef_sweep_runs, qualified,
                                       rank_runs)
from elude.pipeline.plan import n_shards, registry, run_artifacts
from elude.pipeline.stages.reporting import publish_run

try:  # fails before any job, naming every problem
    # The run's config (elude.pipeline.config.resolve_config): the demo (config.yaml, which the Snakefile loads)
    # with any --config values; or with --configfile, the user's files over the schema's defaults alone.
    _resolved = resolve_config(workflow.config_settings.configfiles, dict(workflow.config_settings.config))
    config.clear()
    config.update(_resolved)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

if not workflow.dryrun:
    try:
        if not workflow.deployment_settings.deployment_method:  # jobs run in this environment (no --sdm conda)
            checks.dependencies(config)
        if workflow.is_main_process:
            checks.no_other_run()
    except RuntimeError as exc:
        raise WorkflowError(str(exc)) from None

RUN = run_artifacts(config)
REG = registry(RUN)  # stage -> id -> {"id", "params", "inputs"}
RUN_DIR = f"results/runs/{config['run_name']}"
CACHE_SHARDS = [f"{s:04d}" for s in range(config["cache"]["shards"])]
RUNTIME = {"workers": config["compute"]["workers"],  # job settings that do not change results
           "trust_pickle": config["backbone"]["timm"].get("trust_pickle", False),
           "units_at_once": config["cluster"]["units_at_once"]}


wildcard_constraints:
    id=r"[0-9a-f]{12}",
    shard=r"\d{4}",


_GPUS = resources.gpus(config)  # resource `gpu` per kind of job
FORWARD_GPUS, CLUSTER_GPUS, JUDGE_GPUS = _GPUS["forward"], _GPUS["cluster"], _GPUS["judge"]
BACKBONE_GPUS = _GPUS["backbone"]


include: "gpu.smk"  # the GPU jobs' resources: gpu_resources


def forward_gpu(batch_size):
    """A job that runs the model on batches of ``batch_size`` images (resources.forward_job_gpu_mb)."""
    return gpu_resources(FORWARD_GPUS, lambda w, input: resources.forward_job_gpu_mb(input.backbone, batch_size))


FORWARD_THREADS = config["compute"]["threads"]  # cache, verify, evaluate
# Order among ready jobs (`priority`; results do not depend on it): every rule but the baselines' first.
# Snakemake picks the set of ready jobs with the largest sum of priorities, so the gap must exceed what a
# core-full of baseline jobs (priority 0) sums to. The baselines' chain to the report (grids, judges) is
# the longest, and ELUDe's chain and what hangs off it (labels, ablations, repeated runs) then fill the
# cores beside it instead of trailing after it.
PRIORITY = 100
CLUSTER_ENV = f"../envs/cluster-{'cuml' if config['cluster']['backend'] == 'cuml' else 'cpu'}.yaml"


def preflight():
    """elude.pipeline.checks.preflight, before any job starts (not in a dry run)."""
    try:
        workflow.dryrun or checks.preflight(config, workflow.local_exec)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        raise WorkflowError(str(exc)) from None


def up_id(stage, i, upstream):
    """The id of the ``upstream`` artifact that artifact ``stage``/``i`` was made from (any distance). Past a
    target-EF search (cluster.target_ef) the way up goes through the cluster artifact it chose."""
    while upstream not in (inputs := REG[stage][i]["inputs"]):
        if "ef_search" in inputs:
            stage, i = "cluster", ef_choice(inputs["ef_search"])
            if upstream == "cluster":
                return i
        else:
            stage, i = next(iter(inputs.items()))
    return inputs[upstream]


def ef_choice(search_id):
    """The cluster artifact a target-EF search chose: known once its last step (a checkpoint) ran."""
    folder = checkpoints.ef_search.get(id=search_id).output.folder
    return json.loads(Path(folder, "search.json").read_text())["chosen"]["cluster"]


def searched(stage, i):
    """Whether artifact ``stage``/``i`` comes from a target-EF search (cluster.target_ef)."""
    return "ef_search" in REG["surgery"][up_id(stage, i, "surgery") if stage != "surgery" else i]["inputs"]


def cluster_shards(cluster_id):
    """A cluster artifact's shard folders (their number is known once its top-k, a checkpoint, ran)."""
    n_units = _topk_manifest(up_id("cluster", cluster_id, "topk"))["n_units"]
    return [f"results/cluster/{cluster_id}/shard-{s:04d}" for s in range(n_shards(n_units, config["cluster"]["units_per_shard"]))]


def ef_search_inputs(w):
    """A target-EF search step: the step before it (a checkpoint) and the candidate it clusters, if any."""
    from elude.method.expansion import initial_state, next_index

    p = REG["ef_search"][w.id]["params"]
    prev = {"prev": checkpoints.ef_search.get(id=p["after"]).output.folder} if p["after"] else {}
    state = json.loads(Path(prev["prev"], "search.json").read_text()) if prev else initial_state(len(p["candidates"]))
    j = next_index(state)
    return {**prev, "clusters": [] if j is None else cluster_shards(p["candidates"][j])}


def path_of(stage, i):
    """Where an artifact's inputs are read from: cache = its dataset shards, topk = the merged result."""
    if stage == "cache":
        return [f"results/cache/{i}/shard-{s}" for s in CACHE_SHARDS]
    if stage == "topk":
        return f"results/topk/{i}/merged"
    return f"results/{stage}/{i}"


def upstream(stage, up):
    """Input function: the ``up`` artifact of ``stage``'s artifact {id}."""
    return lambda w: path_of(up, up_id(stage, w.id, up))


def stage_info(stage):
    """Params function: what a workflow script needs to publish artifact {id} of ``stage``."""
    return lambda w: {"name": stage, **{k: REG[stage][w.id][k] for k in ("id", "params", "inputs")}, "runtime": RUNTIME}


def log_path(stage, suffix=""):
    return f"results/logs/{stage}/{{id}}{suffix}.log"


def bench_path(stage, suffix=""):
    """Snakemake benchmark (wall time, peak RSS) of a stage job, next to its log."""
    return f"results/benchmarks/{stage}/{{id}}{suffix}.tsv"


def _topk_manifest(topk_id):
    return json.loads(open(f"{checkpoints.topk.get(id=topk_id).output.folder}/manifest.json").read())


# --- job resources (elude.pipeline.resources: the models and their measured constants) ---------------------
def shard_mem_mb(w):
    stage = "cluster" if w.id in REG["cluster"] else "surgery"
    return resources.shard_job_mb(config["cluster"], _topk_manifest(up_id(stage, w.id, "topk"))["k"],
                                  path_of("backbone", up_id(stage, w.id, "backbone")), config["cache"]["dtype"],
                                  bool(CLUSTER_GPUS))


def cluster_gpu_mb(w, input):
    return resources.cluster_gpu_mb(config["cluster"], _topk_manifest(up_id("cluster", w.id, "topk"))["k"], input.backbone)


def shard_runtime(w):
    return resources.shard_job_minutes(config["cluster"])


def topk_mem_mb(w, input):
    return resources.topk_job_mb(REG["topk"][w.id]["params"]["k"], input.backbone)


def cache_mem_mb(w, input):
    return resources.cache_job_mb(config["cache"], config["compute"]["workers"], input.backbone)


def evaluate_mem_mb(w, input):
    return resources.evaluate_job_mb(config["evaluate"], input.backbone, merge_dir=input.merge)


def baseline_eval_mem_mb(w, input):
    return resources.evaluate_job_mb(config["evaluate"], input.backbone, model_dir=input.model)


def baseline_train_mem_mb(w, input):
    return resources.baseline_train_job_mb(REG["baseline_train"][w.id]["params"], input.backbone,
                                           config["cache"]["chunk_rows"])


def labels_mem_mb(w, input):
    return resources.labels_job_mb(input.evaluate, input.merge)


def unit_shards(stage):
    """Input function of merge: the ``stage`` (cluster or surgery) shard folders, known once top-k (a
    checkpoint) has recorded the number of units."""

    def f(w):
        n = len(cluster_shards(up_id("merge", w.id, "cluster")))
        return [f"results/{stage}/{up_id('merge', w.id, stage)}/shard-{s:04d}" for s in range(n)]

    return f


def seed_reports():
    return {seed: f"results/report/{arts['report']['id']}" for seed, arts in RUN["seeds"].items()}


def final_target():
    """The run's result: the report, or the aggregate over several token seeds."""
    if RUN["aggregate"]:
        return f"results/aggregate/{RUN['aggregate']['id']}"
    return next(iter(seed_reports().values()))


def publish():
    publish_run(final_target(), RUN_DIR, seed_reports() if RUN["aggregate"] else None)


def final_report(wildcards):
    """The run's report. results/runs/<run_name>/ is an alias of it, refreshed by the main process, not by
    a job, so that going back to an earlier config runs nothing: here when the report already exists
    (Snakemake calls no hook when there is nothing to do), and in `onsuccess` after a run that made it."""
    preflight()
    if workflow.is_main_process and not workflow.dryrun:
        publish()
    return final_target()


# --- input functions of the baselines, the studies, LLM Rank and the report (decoders: elude.pipeline.plan) ----
BASELINE_THREADS = resources.baseline_threads(config)
JUDGE_MEM_MB = resources.judge_mem_mb(config)
EXPLAIN_MEM_MB = resources.explain_mem_mb(config)
JUDGE_ENV = "../envs/judges-vllm.yaml" if config["judges"]["backend"] == "vllm" else "../envs/torch.yaml"
JUDGE_THREADS = 4 if config["judges"]["backend"] == "vllm" else FORWARD_THREADS


def inputs_of(stage, w):
    return REG[stage][w.id]["inputs"]


def paths(stage, ids):
    """ids (a dict or a list) -> the artifacts' folders."""
    return {k: path_of(stage, i) for k, i in ids.items()} if isinstance(ids, dict) else [path_of(stage, i) for i in ids]


def model_path(i):
    """A trained baseline's folder: a selection (the selected model) or a training."""
    return path_of("baseline_select" if i in REG.get("baseline_select", {}) else "baseline_train", i)


def baseline_train_inputs(w):
    inputs = inputs_of("baseline_train", w)
    optional = {"merge": "merge", "select": "baseline_select"}  # expansion_factor: match; a later token seed
    return {"cache": path_of("cache", inputs["cache"]), "backbone": path_of("backbone", inputs["backbone"]),
            **{k: path_of(s, inputs[s]) for k, s in optional.items() if s in inputs}}


def baseline_model(w):
    """Where a baseline evaluation reads its model: the selection (first seed) or a later seed's training."""
    (stage, i), = [(s, i) for s, i in inputs_of("baseline_eval", w).items() if s != "backbone"]
    return path_of(stage, i)


def baseline_cache(w):
    """The activation cache a baseline evaluation's model was trained on: its probe instances (live features)."""
    (stage, i), = [(s, i) for s, i in inputs_of("baseline_eval", w).items() if s != "backbone"]
    train = i if stage == "baseline_train" else next(iter(REG["baseline_select"][i]["inputs"].values()))
    return path_of("cache", REG["baseline_train"][train]["inputs"]["cache"])


def baseline_evals(report_id):
    """family -> the baseline_eval artifact a report reads (Table 2)."""
    return paths("baseline_eval", qualified(REG["report"][report_id]["inputs"], "baseline_eval"))


def explained_baselines(explanations_id):
    """family -> the baseline_eval artifact whose features the explanations explain."""
    return paths("baseline_eval", qualified(REG["explanations"][explanations_id]["inputs"], "baseline_eval"))


def study_dirs(report_id):
    """stage -> the study artifact (dictionary, efficiency, rank, ablation, ef_sweep; its seed's labels) a report
    reads, where it has one."""
    return {s: path_of(s, i) for s, i in REG["report"][report_id]["inputs"].items() if s in REPORT_STUDIES}


def dictionary_inputs(w):
    """Table 4's runs: ELUDe's merges and each family's models (one per init seed)."""
    merges, families = dictionary_runs(inputs_of("dictionary", w))
    return paths("merge", merges), {f: [model_path(i) for i in ids] for f, ids in families.items()}


def efficiency_baselines(w):
    """family -> the selected baseline that Table 5 times."""
    return paths("baseline_select", qualified(inputs_of("efficiency", w), "baseline"))


def ablation_inputs(w, kind="evaluate"):
    """variant ("base" first) -> token seed -> evaluate artifact (Table 7); kind "verify": the lossless check
    of each variant that changes the surgery."""
    return {v: paths(kind, seeds) for v, seeds in ablation_runs(inputs_of("ablation", w), kind).items()}


def ef_sweep_inputs(w):
    """Table 6's EF axis: {"evaluate" | "ef_search" | "baseline_eval" | "rank": {key: folder}}, keys as
    elude.pipeline.plan.ef_sweep_runs gives them, joined by '-' (the ef_sweep stage splits them again)."""
    return {kind: {"-".join(k) if isinstance(k, tuple) else k: path_of(kind, i) for k, i in ids.items()}
            for kind, ids in ef_sweep_runs(inputs_of("ef_sweep", w)).items()}


def grids_baselines(w):
    """family -> the baseline_eval artifact whose features a grids artifact shows."""
    return paths("baseline_eval", qualified(inputs_of("grids", w), "baseline_eval"))


def rank_inputs(w):
    """(token seed -> grids artifact, token seed -> judge name -> judge artifact) of a rank artifact."""
    grids, judges = rank_runs(inputs_of("rank", w))
    return paths("grids", grids), {s: {judge_name(REG["judge"][i]["params"]["model"]): path_of("judge", i) for i in ids}
                                   for s, ids in judges.items()}
