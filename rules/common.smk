# Config validation, content ids, artifact paths and input functions shared by all rules.
#
# Every rule's output is results/<stage>/{id}[/<shard>]: the id wildcard selects the artifact's
# parameters and input ids from REG (elude.plan.run_artifacts), so one DAG can hold several variants
# of a stage (one per seeded token dataset) and each rule is written once.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from elude.artifacts import active_run, record_run
from elude.config import ConfigError, validate_config
from elude.plan import flatten, run_artifacts
from elude.stages import (cache_memory_mb, evaluate_memory_mb, n_shards, publish_run, shard_memory_mb,
                          topk_memory_mb)

try:
    config.update(validate_config(config))  # defaults filled in; fails before any job with every problem
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

if (config["baselines"]["families"] or config["dictionary"]["enabled"]) and not workflow.dryrun and not workflow.deployment_settings.deployment_method:
    # Jobs run in this environment (no --sdm conda): without overcomplete (baselines; Table 4's coherence),
    # say which extra to install before any job starts (the jobs check again, for --sdm conda).
    from elude.baselines import BaselineDependencyError, overcomplete_sae

    try:
        overcomplete_sae()
    except BaselineDependencyError as exc:
        raise WorkflowError(str(exc)) from None

if workflow.is_main_process and not workflow.dryrun:
    if _other := active_run():  # clearer than Snakemake's LockException, which suggests --unlock
        raise WorkflowError(
            f"run {_other['run_name']!r} is running in this directory (Snakemake pid {_other['pid']}, started "
            f"{_other['started']}); wait for it to finish: a second invocation here would write the same files. "
            "To run another config at the same time on the same results, start it from its own directory whose "
            "`results` links to this one (README, Reliability); shared artifacts are then built once. Do not "
            "--unlock while that process runs.")

def _keep_artifacts_finished_meanwhile():
    """Before a job runs, Snakemake removes its existing outputs: also one that was missing when the DAG was
    built and that another process finished since (a second run sharing this results folder, or a job that
    outlived a killed Snakemake). Removing it would pull a finished artifact from under that run's
    readers; kept, the job finds it finished and reuses it (elude.stages.run_logged). Outputs that existed
    when the DAG was built (--forcerun, an incomplete job) are removed as before. This replaces Snakemake 9's
    Job.remove_existing_output with the same steps plus that exception (README, Reliability)."""
    from snakemake.io import is_flagged
    from snakemake.jobs import Job

    async def remove_existing_output(self):
        missing = {str(f) for f in self.dag.reason(self).missing_output}
        kept = [f for f in self.output if str(f) in missing and Path(f, "manifest.json").is_file()]
        for f in self.output:
            if is_flagged(f, "update") or f in kept:
                continue
            try:
                await f.remove(remove_non_empty_dir=False)
            except FileNotFoundError:
                pass
        if kept:  # and its log, which the job appends to
            logger.info(f"Keeping {', '.join(map(str, kept))}: finished by another process since the DAG was built")
            return
        for f in self.log:
            await f.remove(remove_non_empty_dir=False)

    if hasattr(Job, "remove_existing_output"):
        Job.remove_existing_output = remove_existing_output
    else:
        logger.warning("Snakemake has no Job.remove_existing_output (not Snakemake 9): two runs sharing this "
                       "results folder must not run at the same time")


_keep_artifacts_finished_meanwhile()
RUN = run_artifacts(config)
REG = {}  # stage -> id -> {"id", "params", "inputs"}
for _a in flatten([{"stage": s, **a} for arts in RUN["seeds"].values() for s, a in arts.items()]
                  + RUN["baselines"] + RUN["studies"]):
    REG.setdefault(_a["stage"], {})[_a["id"]] = _a
if RUN["aggregate"]:
    REG["aggregate"] = {RUN["aggregate"]["id"]: RUN["aggregate"]}
RUN_DIR = f"results/runs/{config['run_name']}"
CACHE_SHARDS = [f"{s:04d}" for s in range(config["cache"]["shards"])]
RUNTIME = {"workers": config["compute"]["workers"]}  # job settings that do not change results


wildcard_constraints:
    id=r"[0-9a-f]{12}",
    shard=r"\d{4}",


# GPU requests (resource `gpu`: SLURM --gpus, and a concurrency limit under profiles/local).
FORWARD_GPUS = int(config["compute"]["device"] == "cuda")  # cache, verify, evaluate
# Cluster jobs: cuML needs a GPU; the torch backend (auto/torch) uses one when the run computes on CUDA.
CLUSTER_GPUS = int(config["cluster"]["backend"] == "cuml"
                   or (config["cluster"]["backend"] in ("auto", "torch") and config["compute"]["device"] == "cuda"))
CLUSTER_ENV = f"../envs/cluster-{'cuml' if config['cluster']['backend'] == 'cuml' else 'cpu'}.yaml"


def preflight():
    """Checks made while the DAG is built, before any job starts: the image data exists; and, where the
    jobs run locally, that what the run asks for (cuML, CUDA, judge and CLIP models, UMAP) can run here.
    (On SLURM, jobs run on GPU nodes: there each job checks first thing, with the same message.)"""
    if workflow.dryrun:
        return
    from elude.backbones import resolve_device
    from elude.clustering import resolve_backend
    from elude.data import check_data

    try:
        check_data(config["data"])  # image folders and lists: on the shared file system, checked anywhere
        if not workflow.local_exec:
            return
        if config["labels"]["model"]:
            from elude.labels import clip_check

            clip_check(config["labels"]["model"])
        if config["judges"]["models"]:
            from elude.judges.backends import model_check, vllm_check

            for model in config["judges"]["models"]:
                model_check(model)
            if config["judges"]["backend"] == "vllm":
                vllm_check()
        reductions = [config["cluster"]["reduce"]["method"]] + [
            v["cluster"].get("reduce", {}).get("method") for v in config["ablations"]["variants"]]
        if "umap" in reductions:
            from elude.clustering import umap_check

            umap_check()
        if config["cluster"]["backend"] == "cuml":
            resolve_backend("cuml")
        if config["compute"]["device"] == "cuda":
            resolve_device("cuda")
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
    from elude.expansion import initial_state, next_index

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


def shard_mem_mb(wildcards):
    """Memory of a cluster/surgery shard job (elude.stages.shard_memory_mb)."""
    stage = "cluster" if wildcards.id in REG["cluster"] else "surgery"
    topk_id = up_id(stage, wildcards.id, "topk")
    layer = json.loads(open(f"results/backbone/{up_id(stage, wildcards.id, 'backbone')}/layer.json").read())
    itemsize = 2 if config["cache"]["dtype"] == "float16" else 4
    return shard_memory_mb(config["cluster"], _topk_manifest(topk_id)["k"], layer["n_upstream"], itemsize,
                           gpu=bool(CLUSTER_GPUS))


def topk_mem_mb(wildcards, input):
    """Memory of a top-k job (elude.stages.topk_memory_mb); the unit count is read from the backbone
    artifact once it exists (at submission), assumed 1024 before (a dry run)."""
    layer = Path(str(input.backbone)) / "layer.json"
    n_units = json.loads(layer.read_text())["n_units"] if layer.exists() else 1024
    return topk_memory_mb(REG["topk"][wildcards.id]["params"]["k"], n_units)


def cache_mem_mb(wildcards, input):
    """Memory of a cache job (elude.stages.cache_memory_mb); image size from the backbone's
    preprocessing once it exists, 224 before (a dry run)."""
    pre_file = Path(str(input.backbone)) / "preprocess.json"
    pre = json.loads(pre_file.read_text()) if pre_file.exists() else None
    return cache_memory_mb(config["cache"]["batch_size"], config["compute"]["workers"], pre["size"] if pre else 224)


def evaluate_mem_mb(wildcards, input):
    """Memory of an evaluate job (elude.stages.evaluate_memory_mb); unit and sub-unit counts read from the
    artifacts once they exist (1024 and 8 x 1024 before)."""
    layer, merged = Path(str(input.backbone)) / "layer.json", Path(str(input.merge)) / "manifest.json"
    units = json.loads(layer.read_text())["n_units"] if layer.exists() else 1024
    subunits = json.loads(merged.read_text())["n_subunits"] if merged.exists() else 8 * units
    return evaluate_memory_mb(units, subunits, config["evaluate"]["ms_top_k"], config["evaluate"]["batch_size"])


def shard_runtime(wildcards):
    """Minutes: 10 + units_per_shard x cluster.minutes_per_unit."""
    return int(10 + config["cluster"]["units_per_shard"] * config["cluster"]["minutes_per_unit"])


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


# --- baselines (rules/baselines.smk) and Table 2 (rules/report.smk) -------------------------------------
# CPU runs: one thread per training job (small models; jobs run side by side); GPU jobs: a few threads to
# feed the GPU (reading and decompressing cache chunks).
BASELINE_THREADS = 1 if config["compute"]["device"] == "cpu" else 4


def baseline_train_inputs(w):
    inputs = REG["baseline_train"][w.id]["inputs"]
    out = {"cache": path_of("cache", inputs["cache"]), "backbone": path_of("backbone", inputs["backbone"])}
    if "merge" in inputs:  # expansion_factor: match
        out["merge"] = path_of("merge", inputs["merge"])
    if "baseline_select" in inputs:  # a later token seed: the first seed's selected point
        out["select"] = path_of("baseline_select", inputs["baseline_select"])
    return out


def baseline_train_mem_mb(wildcards, input):
    """Memory of a baseline training job (elude.stages.baselines.baseline_memory_mb); layer shape from the
    backbone artifact once it exists (768 x 3072 before)."""
    from elude.stages.baselines import baseline_memory_mb

    layer = Path(str(input.backbone)) / "layer.json"
    info = json.loads(layer.read_text()) if layer.exists() else {"n_units": 768, "n_upstream": 3072}
    return baseline_memory_mb(REG["baseline_train"][wildcards.id]["params"], info["n_units"], info["n_upstream"],
                              config["cache"]["chunk_rows"])


def baseline_model(w):
    """Where a baseline evaluation reads its model: the selection (first seed) or a later seed's training."""
    (stage, i), = [(s, i) for s, i in REG["baseline_eval"][w.id]["inputs"].items() if s != "backbone"]
    return path_of(stage, i)


def baseline_eval_mem_mb(wildcards, input):
    """Memory of a baseline evaluation: as an evaluate job (elude.stages.evaluate_memory_mb) with the
    baseline's features counted as sub-units (an overestimate)."""
    layer, model = Path(str(input.backbone)) / "layer.json", Path(str(input.model)) / "model.json"
    units = json.loads(layer.read_text())["n_units"] if layer.exists() else 1024
    features = json.loads(model.read_text())["n_features"] if model.exists() else 16 * units
    return evaluate_memory_mb(units, features, config["evaluate"]["ms_top_k"], config["evaluate"]["batch_size"])


def baseline_evals(report_id):
    """family -> the baseline_eval artifact a report reads (Table 2)."""
    return {k.split("-", 1)[1]: path_of("baseline_eval", i) for k, i in REG["report"][report_id]["inputs"].items()
            if k.startswith("baseline_eval-")}


# --- Tables 4 and 5 (rules/studies.smk) -----------------------------------------------------------------
def baseline_model_path(i):
    """A trained baseline's folder: a selection (the selected model) or a training."""
    return path_of("baseline_select" if i in REG.get("baseline_select", {}) else "baseline_train", i)


def dictionary_inputs(w):
    """Table 4's runs: ELUDe's merges (merge-<run>) and each family's runs (<family>-<init seed>)."""
    inputs = REG["dictionary"][w.id]["inputs"]
    merges = [path_of("merge", i) for k, i in inputs.items() if k.startswith("merge-")]
    families = {}
    for k, i in inputs.items():
        if not k.startswith("merge-"):
            families.setdefault(k.rsplit("-", 1)[0], []).append(baseline_model_path(i))
    return merges, families


def efficiency_baselines(w):
    """family -> the selected baseline that Table 5 times."""
    return {k.split("-", 1)[1]: path_of("baseline_select", i)
            for k, i in REG["efficiency"][w.id]["inputs"].items() if k.startswith("baseline-")}


def study_dirs(report_id):
    """stage -> the study artifact (dictionary, efficiency, rank, ablation; its seed's labels) a report reads,
    where it has one."""
    return {s: path_of(s, i) for s, i in REG["report"][report_id]["inputs"].items()
            if s in ("dictionary", "efficiency", "rank", "ablation", "ef_sweep", "labels")}


def ablation_inputs(w):
    """variant ("base" first) -> token seed -> evaluate artifact of an ablation artifact (Table 7)."""
    out = {}
    for k, i in REG["ablation"][w.id]["inputs"].items():
        _, rest = k.split("-", 1)
        name, seed = rest.rsplit("-", 1)
        out.setdefault(name, {})[seed] = path_of("evaluate", i)
    return out


def ef_sweep_inputs(w):
    """Table 6's EF axis: per target EF and token seed, ELUDe's evaluation and search and each family's
    baseline evaluation; per target its LLM Rank, where judges ran: {"ef_search" | "evaluate" | "baseline_eval"
    | "rank": {key: folder}}, keys "<target>-<seed>" ("<family>-<target>-<seed>"; rank: "<target>")."""
    out = {}
    for k, i in REG["ef_sweep"][w.id]["inputs"].items():
        stage, key = k.split("-", 1)
        out.setdefault(stage, {})[key] = path_of(stage, i)
    return out


# --- LLM Rank (rules/judges.smk) -------------------------------------------------------------------------
_J = config["judges"]
JUDGE_VLLM = _J["backend"] == "vllm"
JUDGE_GPUS = _J["tensor_parallel_size"] if JUDGE_VLLM else FORWARD_GPUS
JUDGE_ENV = "../envs/judges-vllm.yaml" if JUDGE_VLLM else "../envs/torch.yaml"
JUDGE_MEM_MB = 64000 if JUDGE_VLLM else 16000  # host memory: vLLM maps the weights; transformers loads them


def grids_baselines(w):
    """family -> the baseline_eval artifact whose features a grids artifact shows."""
    return {k.split("-", 1)[1]: path_of("baseline_eval", i) for k, i in REG["grids"][w.id]["inputs"].items()
            if k.startswith("baseline_eval-")}


def rank_inputs(w):
    """(token seed -> grids artifact, token seed -> judge name -> judge artifact) of a rank artifact."""
    from elude.judges import judge_name

    inputs = REG["rank"][w.id]["inputs"]
    grids = {k.split("-", 1)[1]: path_of("grids", i) for k, i in inputs.items() if k.startswith("grids-")}
    judges = {s: {} for s in grids}
    for k, i in inputs.items():
        if k.startswith("judge-"):
            seed = k.split("-")[1]
            judges[seed][judge_name(REG["judge"][i]["params"]["model"])] = path_of("judge", i)
    return grids, judges


# --- concept labels (rules/labels.smk) -------------------------------------------------------------------
def labels_mem_mb(wildcards, input):
    """Memory of a labels job (elude.stages.labeling.labels_memory_mb); image and sub-unit counts from the
    evaluate and merge artifacts once they exist (50,000 and 8 x 1024 before)."""
    from elude.stages.labeling import labels_memory_mb

    metrics, merged = Path(str(input.evaluate)) / "metrics.json", Path(str(input.merge)) / "manifest.json"
    m = json.loads(metrics.read_text()) if metrics.exists() else {"n_images": 50_000, "n_units": 1024}
    subunits = json.loads(merged.read_text())["n_subunits"] if merged.exists() else 8 * m["n_units"]
    return labels_memory_mb(m["n_images"], m["n_units"] + subunits)
