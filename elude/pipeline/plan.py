"""A run's artifacts: every stage's parameters, inputs and content id for a validated config (the one
place ids are computed; the workflow's ``rules/common.smk`` and the housekeeping CLI both use it), for each
token seed, the baselines, the studies (Tables 3-7), the target-EF search and Table 6's EF axis."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .artifacts import artifact_id
from .config import ablation_config
from .input_keys import input_key

DATA_KEYS = {"digits": ("kind", "eval_fraction", "split_seed"),
             "imagefolder": ("kind", "probe_dir", "eval_dir", "on_bad_image"),
             "filelist": ("kind", "probe_list", "eval_list", "on_bad_image"),
             "text": ("kind", "text", "eval_fraction", "split_seed"),
             "factory": ("kind", "factory")}


def data_params(data: dict) -> dict:
    """The data keys that matter for the chosen kind (others do not enter any id)."""
    return {k: data[k] for k in DATA_KEYS[data["kind"]]}


def token_seeds(config: dict) -> list[int]:
    """The seeded token datasets of a run: one seed, or the list given in cache.token_seed."""
    seed = config["cache"]["token_seed"]
    return list(seed) if isinstance(seed, list) else [seed]


def cluster_params(cluster: dict) -> dict:
    """The cluster stage's id parameters: not the runtime request, and no reduction settings when off."""
    out = {k: v for k, v in cluster.items() if k not in ("minutes_per_unit", "units_at_once", "target_ef", "ef_search")}
    if out.get("reduce", {}).get("method", "none") == "none":
        out.pop("reduce", None)
    return out


def surgery_params(surgery: dict) -> dict:
    """The surgery stage's id parameters: ``merge_siblings`` only when on (a threshold set), so the paper's
    surgery keeps its ids."""
    out = {k: v for k, v in surgery.items() if k != "merge_siblings"}
    merge = surgery.get("merge_siblings") or {}
    return {**out, "merge_siblings": merge} if any(v is not None for v in merge.values()) else out


def stage_specs(config: dict, seed: int | None = None, run: int = 0) -> dict[str, tuple[dict, list[str]]]:
    """Each stage's own parameters and the stages whose artifacts it reads, in DAG order, for one seeded
    token dataset (``seed``; default: the config's only seed). ``run`` > 0: a repeat of the clustering (and
    what follows) on identical inputs, for Table 4's ELUDe runs."""
    data = data_params(config["data"])
    bb = {"kind": config["backbone"]["kind"], "layer": config["backbone"]["layer"],
          "preprocess": config["backbone"]["preprocess"]}
    bb[bb["kind"]] = {k: v for k, v in config["backbone"][bb["kind"]].items() if k != "trust_pickle"}  # how, not what
    if bb["kind"] == "demo":
        bb["data"] = data  # the demo model is trained on the probe split
        if data["kind"] != "text":  # the language model's keys (image runs keep their ids)
            bb["demo"] = {k: v for k, v in bb["demo"].items() if k != "vocab_size"}
        if config["compute"]["device"] != "cpu":  # trained there: other bytes (CPU runs keep their ids)
            bb["device"] = config["compute"]["device"]
    elif data["kind"] == "text":  # text is tokenized by the tokenizer saved with the backbone
        bb["tokenizer"] = config["backbone"]["tokenizer"] or config["backbone"]["hf"].get("model")
    cache = {**config["cache"], "data": data, "device": config["compute"]["device"]}
    cache["token_seed"] = token_seeds(config)[0] if seed is None else seed
    if cache["tokens_per_image"] is None:
        del cache["token_seed"]  # every instance is cached: the seed changes nothing
    return {
        "backbone": (bb, []),
        "cache": (cache, ["backbone"]),
        "topk": (config["topk"], ["cache"]),
        "cluster": ({**cluster_params(config["cluster"]), **({"run": run} if run else {})}, ["topk"]),
        "surgery": (surgery_params(config["surgery"]), ["ef_search" if config["cluster"]["target_ef"] else "cluster"]),
        "merge": ({}, ["surgery"]),
        "verify": ({**config["verify"], "data": data, "device": config["compute"]["device"]}, ["merge"]),
        "evaluate": ({**config["evaluate"], "data": data, "device": config["compute"]["device"]}, ["merge"]),
        "report": ({**config["report"], "data": data, "run_name": config["run_name"]}, ["verify", "evaluate"]),
    }


def _chain_ids(config: dict, seed: int | None, run: int = 0) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for stage, (params, upstream) in stage_specs(config, seed, run).items():
        if stage == "cluster" and config["cluster"]["target_ef"]:
            out["ef_search"] = ef_search_artifact(config, seed, run)
            continue
        inputs = {u: out[u]["id"] for u in upstream}
        out[stage] = {"id": artifact_id(stage, params, inputs), "params": params, "inputs": inputs}
    return out


def ef_search_artifact(config: dict, seed: int | None, run: int = 0) -> dict:
    """``cluster.target_ef``'s search (:mod:`elude.method.expansion`): its last step, whose ``search`` lists the other
    artifacts it may build: each grid candidate's cluster artifact (and with the topk_k axis its top-k), ids
    as a run with that setting would give them, so candidates are shared by targets and plain runs; and the
    bisection's steps, each after the one before (a step's candidate is known once the step before it ran)."""
    from ..method.expansion import candidate_values, n_steps

    cl = config["cluster"]
    axis, values = cl["ef_search"]["axis"], candidate_values(cl, config["topk"]["k"])
    search, candidates = [], []
    for v in values:
        plain = {**config, "cluster": {**cl, "target_ef": None}}
        if axis == "min_cluster_size":
            plain["cluster"]["min_cluster_size"] = v
        else:
            plain["topk"] = {**config["topk"], "k": v}
        chain = _chain_ids(plain, seed, run)
        search += [{"stage": s, **chain[s]} for s in ("topk", "cluster") if s == "cluster" or axis == "topk_k"]
        candidates.append(chain["cluster"]["id"])
    step = None
    for s in range(n_steps(len(values))):
        if step:
            search.append({"stage": "ef_search", **step})
        params = {"target_ef": cl["target_ef"], "axis": axis, "values": values, "candidates": candidates, "step": s,
                  "after": step and step["id"]}
        step = {"id": artifact_id("ef_search", params, {}), "params": params, "inputs": {}}
    return {**step, "search": search}


def flatten(artifacts) -> list[dict]:
    """Artifacts with those a target-EF search may build (its ``search``) after each."""
    return [x for a in artifacts for x in (a, *a.get("search", []))]


def elude_tail(chain: dict, stages=("surgery", "merge", "evaluate")) -> list[dict]:
    """A chain's artifacts from the clustering (or its target-EF search) on, stage-tagged."""
    first = "ef_search" if "ef_search" in chain else "cluster"
    return flatten({"stage": s, **chain[s]} for s in (first, *stages))


# Settings that shape each family's training besides its grid (a family's ids depend on its own only).
BASELINE_SHARED = ("expansion_factor", "epochs", "batch_size", "init_seed")
BASELINE_FAMILY_KEYS = {"topk": ("sparsity",), "batchtopk": ("sparsity",), "mp": ("sparsity",),
                        "matryoshka": ("sparsity", "matryoshka_prefixes"),
                        "archetypal": ("archetypal_ratio", "archetypal_points")}


def _family_settings(config: dict, family: str) -> dict:
    b = config["baselines"]
    raw = {} if b["standardise"] else {"standardise": False}  # in the id only when off: the default keeps its ids
    return {"family": family, **{k: b[k] for k in BASELINE_SHARED + BASELINE_FAMILY_KEYS.get(family, ())},
            "device": config["compute"]["device"], **raw}


def _train_inputs(config: dict, chain: dict) -> dict:
    inputs = {"cache": chain["cache"]["id"], "backbone": chain["backbone"]["id"]}
    if config["baselines"]["expansion_factor"] in ("match", "match_live"):
        inputs["merge"] = chain["merge"]["id"]
    return inputs


def _art(stage: str, params: dict, inputs: dict, **extra) -> dict:
    return {"stage": stage, "id": artifact_id(stage, params, inputs), "params": params, "inputs": inputs, **extra}


def baseline_artifacts(config: dict, seed: int | None = None) -> list[dict]:
    """The baseline artifacts one token seed's report needs, each {"stage", "id", "params", "inputs",
    "family"}: on the first seed, the sweep (one ``baseline_train`` per grid point) and the eq. 9
    ``baseline_select``, whose model is the seed's; on the others, a ``baseline_train`` of the selected
    point; then a ``baseline_eval`` per family (Section E.1). With ``expansion_factor: match_live`` the sweep
    trains at ``match`` (its artifacts are a ``match`` run's) and every seed's selected point is trained again
    at the size whose live features match ELUDe's sub-units (the first seed's search starts from the selection's
    own model)."""
    from ..baselines import family_grid, grid_points

    b = config["baselines"]
    seeds = token_seeds(config)
    seed = seeds[0] if seed is None else seed
    first, mine = _chain_ids(config, seeds[0]), _chain_ids(config, seed)
    out = []

    def add(stage, params, inputs, family):
        out.append(_art(stage, params, inputs, family=family))
        return out[-1]

    def train_inputs(chain):
        return _train_inputs(config, chain)

    live = b["expansion_factor"] == "match_live"
    for family in b["families"]:
        settings = _family_settings(config, family)
        grid = family_grid(b, family)
        sweep_settings = {**settings, "expansion_factor": "match"} if live else settings
        sweep = {input_key("train", f"{i:03d}"): add("baseline_train", {**sweep_settings, "hp": hp}, train_inputs(first),
                                                     family)["id"] for i, hp in enumerate(grid_points(grid))}
        select = add("baseline_select", {"family": family, "grid": grid}, sweep, family)
        source = {"baseline_select": select["id"]}
        if seed != seeds[0] or live:
            first_try = {"first_try": "selection"} if live and seed == seeds[0] else {}
            fit = add("baseline_train", {**settings, "hp": "selected", **first_try}, {**train_inputs(mine), **source},
                      family)
            source = {"baseline_train": fit["id"]}
        ev = config["evaluate"]
        add("baseline_eval", {"ms_top_k": ev["ms_top_k"], "accuracy": ev["accuracy"], "batch_size": ev["batch_size"],
                              "data": data_params(config["data"]), "device": config["compute"]["device"]},
            {**source, "backbone": mine["backbone"]["id"]}, family)
    return out


def study_artifacts(config: dict) -> list[dict]:
    """The first token seed's studies, each {"stage", "id", "params", "inputs"}: with ``dictionary.enabled``
    Table 4's runs (ELUDe's repeated cluster/surgery/merge chains, each family's selected point trained per
    init seed) and the ``dictionary`` stage over them; with ``efficiency.enabled`` the ``efficiency`` stage
    (Table 5) over the backbone, ELUDe's layer and each family's selected model."""
    seed = token_seeds(config)[0]
    chain = _chain_ids(config, seed)
    b, out = config["baselines"], []
    selected = {a["family"]: a["id"] for a in baseline_artifacts(config, seed) if a["stage"] == "baseline_select"}
    dic = config["dictionary"]
    if dic["enabled"]:
        inputs = {"merge-0": chain["merge"]["id"]}
        for run in range(1, dic["elude_runs"]):
            rerun = _chain_ids(config, seed, run)
            out += elude_tail(rerun, ("surgery", "merge"))
            inputs[input_key("merge", run)] = rerun["merge"]["id"]
        for family, select_id in selected.items():
            for init in dic["init_seeds"]:
                if init == b["init_seed"]:
                    inputs[input_key(family, init)] = select_id  # the selected model is this seed's run
                    continue
                # another initialisation; the data order and archetypal candidates stay the selected run's (B.3)
                params = {**_family_settings(config, family), "init_seed": init, "data_seed": b["init_seed"],
                          "hp": "selected"}
                out.append(_art("baseline_train", params, {**_train_inputs(config, chain), "baseline_select": select_id},
                                family=family))
                inputs[input_key(family, init)] = out[-1]["id"]
        out.append(_art("dictionary", dict(dic), inputs))
    eff = config["efficiency"]
    if eff["enabled"]:
        params = {**eff, "data": data_params(config["data"]), "device": config["compute"]["device"]}
        inputs = {"backbone": chain["backbone"]["id"], "merge": chain["merge"]["id"],
                  **{input_key("baseline", f): i for f, i in selected.items()}}
        out.append(_art("efficiency", params, inputs))
    return out


def judge_artifacts(config: dict) -> list[dict]:
    """LLM Rank (B.1), when ``judges.models`` is set: per token seed a ``grids`` artifact (from its evaluate
    and baseline_eval artifacts) and one ``judge`` per model; then one ``rank`` over all of them. A judge's
    id depends on its own model and settings and its seed's grids only, so one more judge adds its jobs
    and reuses the others'."""
    j = config["judges"]
    if not j["models"]:
        return []
    out, rank_inputs = [], {}
    for seed in token_seeds(config):
        chain = _chain_ids(config, seed)
        evals = {input_key("baseline_eval", a["family"]): a["id"] for a in baseline_artifacts(config, seed)
                 if a["stage"] == "baseline_eval"}
        params = {k: j[k] for k in ("pairs_per_method_pair", "sample_seed", "cell_size")}
        g = _art("grids", {**params, "token_seed": seed, "data": data_params(config["data"])},
                 {"evaluate": chain["evaluate"]["id"], "backbone": chain["backbone"]["id"], **evals})
        out.append(g)
        rank_inputs[input_key("grids", seed)] = g["id"]
        for k, model in enumerate(j["models"]):
            settings = {key: j[key] for key in ("backend", "max_tokens", "max_model_len", "tensor_parallel_size",
                                                "batch_size", "trust_remote_code")}
            out.append(_art("judge", {"model": model, **settings, "device": config["compute"]["device"]},
                            {"grids": g["id"]}))
            rank_inputs[input_key("judge", seed, k)] = out[-1]["id"]
    out.append(_art("rank", {"bootstrap": j["bootstrap"], "bootstrap_seed": j["bootstrap_seed"]}, rank_inputs))
    return out


def ablation_artifacts(config: dict) -> list[dict]:
    """Table 7, when ``ablations.variants`` is set: per variant and token seed the ELUDe chain from the
    clustering on (cluster, surgery, merge, evaluate; the cache and top-k ids are the base run's, so they
    are shared; a variant that changes the surgery also verify, so its row is checked lossless), then one
    ``ablation`` artifact over them and the base run's evaluations."""
    variants = config["ablations"]["variants"]
    if not variants:
        return []
    out, inputs = [], {}
    for seed in token_seeds(config):
        inputs[input_key("evaluate", "base", seed)] = _chain_ids(config, seed)["evaluate"]["id"]
        for v in variants:
            chain, verified = _chain_ids(ablation_config(config, v), seed), bool(v.get("surgery"))
            out += elude_tail(chain, ("surgery", "merge", *(("verify",) if verified else ()), "evaluate"))
            inputs[input_key("evaluate", v["name"], seed)] = chain["evaluate"]["id"]
            if verified:
                inputs[input_key("verify", v["name"], seed)] = chain["verify"]["id"]
    params = {"base": cluster_params(config["cluster"]), "variants": variants}
    return out + [_art("ablation", params, inputs)]


def ef_config(config: dict, target: float) -> dict:
    """The run's config at expansion factor ``target``: ELUDe matched to it, the baselines at it (8.0 is 8: the
    ids of a run whose own baselines are at that EF are shared)."""
    target = int(target) if float(target).is_integer() else target
    live = config["baselines"]["expansion_factor"] == "match_live"  # then matched by live features at every EF
    return {**config, "cluster": {**config["cluster"], "target_ef": target},
            "baselines": {**config["baselines"], "expansion_factor": "match_live" if live else target}}


def ef_sweep_artifacts(config: dict) -> list[dict]:
    """Table 6's EF axis, when ``ef_sweep.targets`` is set: per target and token seed ELUDe's chain from its
    target-EF search to evaluate and every baseline family's artifacts at that EF (sweep, eq. 9 choice,
    evaluation), LLM Rank per target where judges run; then one ``ef_sweep`` artifact over them. The cache,
    top-k and every shared candidate are the base run's by id."""
    targets = config["ef_sweep"]["targets"]
    if not targets:
        return []
    out, inputs = [], {}
    for t in targets:
        cfg = ef_config(config, t)
        for seed in token_seeds(cfg):
            chain = _chain_ids(cfg, seed)
            out += elude_tail(chain)
            inputs[input_key("evaluate", f"{t:g}", seed)] = chain["evaluate"]["id"]
            inputs[input_key("ef_search", f"{t:g}", seed)] = chain["ef_search"]["id"]
            for a in baseline_artifacts(cfg, seed):
                out.append(a)
                if a["stage"] == "baseline_eval":
                    inputs[input_key("baseline_eval", a["family"], f"{t:g}", seed)] = a["id"]
        for a in judge_artifacts(cfg):
            out.append(a)
            if a["stage"] == "rank":
                inputs[input_key("rank", f"{t:g}")] = a["id"]
    out = list({a["id"]: a for a in out}.values())  # a baseline shared by two seeds' lists once
    return out + [_art("ef_sweep", {"targets": targets}, inputs)]


def labels_artifact(config: dict, chain: dict) -> dict:
    """One token seed's concept labels and groups (Sec. C.3, 4.2), from its merge and evaluate artifacts; the
    concept file's bytes are part of the id, so editing the word list relabels."""
    from ..evaluation.concept_sets import concepts_file

    lab = config["labels"]
    params = {**lab, "concepts_sha256": hashlib.sha256(concepts_file(lab["concepts"]).read_bytes()).hexdigest(),
              "layer_batch_size": config["evaluate"]["batch_size"], "data": data_params(config["data"]),
              "device": config["compute"]["device"]}
    inputs = {"merge": chain["merge"]["id"], "evaluate": chain["evaluate"]["id"]}
    return {"id": artifact_id("labels", params, inputs), "params": params, "inputs": inputs}


def explanations_artifact(config: dict, chain: dict, baseline_evals: dict[str, str]) -> dict:
    """One token seed's explanations of its units, sub-units and baseline features, and their detection scores
    (text runs), from its evaluate and baseline_eval artifacts (``baseline_evals``: their input keys -> ids;
    each feature's top texts)."""
    params = {**config["explain"], "data": data_params(config["data"]), "device": config["compute"]["device"]}
    inputs = {"evaluate": chain["evaluate"]["id"], **baseline_evals}
    return {"id": artifact_id("explanations", params, inputs), "params": params, "inputs": inputs}


def artifact_ids(config: dict, seed: int | None = None) -> dict[str, dict]:
    """Per stage: {"id", "params", "inputs" (stage -> id)} for a validated config and one token seed. The
    report also reads the baselines' evaluations (:func:`baseline_artifacts`) and, on the first seed, the
    studies (:func:`study_artifacts`: Tables 4 and 5) and the LLM Rank over all seeds
    (:func:`judge_artifacts`: Table 3) and the ablations (:func:`ablation_artifacts`: Table 7)."""
    out = _chain_ids(config, seed)
    extra = {input_key("baseline_eval", a["family"]): a["id"] for a in baseline_artifacts(config, seed)
             if a["stage"] == "baseline_eval"}
    if config["labels"]["model"]:
        out["labels"] = labels_artifact(config, out)
        extra["labels"] = out["labels"]["id"]
    if config["explain"]["model"]:
        out["explanations"] = explanations_artifact(config, out, {k: v for k, v in extra.items()
                                                                  if k.startswith("baseline_eval-")})
        extra["explanations"] = out["explanations"]["id"]
    if seed is None or seed == token_seeds(config)[0]:
        extra.update({a["stage"]: a["id"] for a in study_artifacts(config) + judge_artifacts(config)
                      + ablation_artifacts(config) if a["stage"] in ("dictionary", "efficiency", "rank", "ablation")})
        extra.update({a["stage"]: a["id"] for a in ef_sweep_artifacts(config) if a["stage"] == "ef_sweep"})
    if extra:
        rep = out["report"]
        rep["inputs"] = {**rep["inputs"], **extra}
        rep["id"] = artifact_id("report", rep["params"], rep["inputs"])
    return out


def run_artifacts(config: dict) -> dict:
    """Every artifact of a run: {"seeds": {seed: artifact_ids}, "baselines": [baseline artifacts of every
    seed, each once], "studies": [study and LLM Rank artifacts], "aggregate": {...} or None}. A run over several token
    seeds adds an aggregate artifact over their reports."""
    seeds = token_seeds(config)
    per_seed = {s: artifact_ids(config, s) for s in seeds}
    base = {a["id"]: a for s in seeds for a in baseline_artifacts(config, s)}
    studies = study_artifacts(config) + judge_artifacts(config) + ablation_artifacts(config) + ef_sweep_artifacts(config)
    agg = None
    if len(seeds) > 1:
        params = {"run_name": config["run_name"], "token_seeds": seeds}
        inputs = {input_key("report", s): per_seed[s]["report"]["id"] for s in seeds}
        agg = {"id": artifact_id("aggregate", params, inputs), "params": params, "inputs": inputs}
    return {"seeds": per_seed, "baselines": list(base.values()), "studies": studies, "aggregate": agg}


def registry(run: dict) -> dict[str, dict[str, dict]]:
    """stage -> id -> artifact ({"stage", "id", "params", "inputs"}) of everything :func:`run_artifacts` lists,
    the artifacts a target-EF search may build included: the workflow's REG."""
    reg: dict[str, dict[str, dict]] = {}
    for a in flatten([{"stage": s, **a} for arts in run["seeds"].values() for s, a in arts.items()]
                     + run["baselines"] + run["studies"]):
        reg.setdefault(a["stage"], {})[a["id"]] = a
    if run["aggregate"]:
        reg["aggregate"] = {run["aggregate"]["id"]: {"stage": "aggregate", **run["aggregate"]}}
    return reg


def all_ids(config: dict) -> dict[str, set[str]]:
    """stage -> every id a run of ``config`` uses (all seeds, the studies, and the aggregate)."""
    return {stage: set(arts) for stage, arts in registry(run_artifacts(config)).items()}


def n_shards(n_units: int, units_per_shard: int) -> int:
    """Unit shards of a layer (cluster and surgery jobs)."""
    return (n_units + units_per_shard - 1) // units_per_shard


def shard_units(n_units: int, units_per_shard: int, shard: int) -> range:
    """The units of unit shard ``shard``."""
    return range(shard * units_per_shard, min((shard + 1) * units_per_shard, n_units))


def run_folders(configfile: str | Path | None = None, workdir: str | Path = ".", seed: int | None = None) -> dict:
    """A finished run's artifact folders, stage -> ``<workdir>/results/<stage>/<id>`` (backbone, cache, ...,
    merge, verify, evaluate, report; labels where the run has them), for the run made with
    ``snakemake [--configfile configfile]`` in ``workdir``, on token seed ``seed`` (default: the first). Only
    folders that exist are listed: a missing ``merge`` means the run has not got that far."""
    from .config import load_run_config

    config = load_run_config(configfile)
    arts = run_artifacts(config)["seeds"][token_seeds(config)[0] if seed is None else seed]
    folders = {stage: Path(workdir) / "results" / stage / a["id"] for stage, a in arts.items()}
    return {stage: f for stage, f in folders.items() if f.is_dir()}


def baseline_models(config: dict, workdir: str | Path = ".", seed: int | None = None, selection: bool = False) -> dict:
    """family -> the model folder of a run's baseline on token seed ``seed`` (default: the first): the one its
    Table 2 row scored (``baseline_eval``'s source: the eq. 9 selection, a later seed's training, or
    ``match_live``'s refit), or with ``selection`` the eq. 9 selection's own (what Tables 4 and 5 use). Folders
    may not exist yet: the caller checks."""
    seed = token_seeds(config)[0] if seed is None else seed
    arts = baseline_artifacts(config, seed)
    if selection:
        return {a["family"]: Path(workdir) / "results/baseline_select" / a["id"] for a in arts if a["stage"] == "baseline_select"}
    return {a["family"]: Path(workdir) / "results" / stage / i for a in arts if a["stage"] == "baseline_eval"
            for stage, i in a["inputs"].items() if stage != "backbone"}
