"""Run configuration: JSON-schema validation with readable errors, defaults, and content ids.

The schema (``elude/config.schema.yaml``) describes every key with its default and rejects unknown
keys. :func:`artifact_ids` is the one place that turns a config into the id of every stage's artifact;
the workflow (``rules/common.smk``) and the housekeeping CLI both use it.
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import yaml

from .artifacts import artifact_id

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    pass


def merge_config(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: dicts key by key, other values replaced, as
    ``snakemake --configfile`` extends the workflow's default config."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def with_defaults(config: dict, schema: dict) -> dict:
    """A copy of ``config`` with every missing key that has a schema default filled in (recursively)."""
    out = copy.deepcopy(config)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if isinstance(out.get(key), dict) and sub.get("type") == "object":
            out[key] = with_defaults(out[key], sub)
    return out


def _describe(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    v, kind = error.validator_value, error.validator
    if kind == "enum":
        return f"{path}: {error.instance!r} is not allowed; allowed values: {', '.join(map(repr, v))}"
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"{path}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(allowed)}"
    if kind == "required":
        missing = [k for k in v if k not in error.instance]
        return f"{path}: missing required key(s) {', '.join(missing)}" + (
            f" ({error.schema['description']})" if "description" in error.schema else "")
    if kind == "type":
        return f"{path}: {error.instance!r} has the wrong type; expected {v}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems"):
        bound = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<",
                 "minItems": "number of items >="}[kind]
        return f"{path}: {error.instance!r} is out of range; allowed: {bound} {v}"
    if kind == "pattern":
        return f"{path}: {error.instance!r} does not match the allowed form {v}"
    return f"{path}: {error.message}"


def load_run_config(configfile: str | Path | None = None) -> dict:
    """The validated config of a run made with ``snakemake [--configfile F]`` from this checkout: the
    embedded config.yaml merged with F (for command-line tools that read a finished run's artifacts)."""
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    if configfile:
        config = merge_config(config, yaml.safe_load(Path(configfile).read_text()))
    return validate_config(config)


def validate_config(config: dict) -> dict:
    """Validate ``config`` against the schema; returns it with defaults filled in.

    Raises :class:`ConfigError` listing every problem, each naming the key and the allowed values.
    """
    import jsonschema

    schema = load_schema()
    full = with_defaults(config, schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(full), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(f"  - {m}" for m in dict.fromkeys(_describe(e) for e in errors))
        raise ConfigError(f"invalid configuration ({SCHEMA_PATH.name} describes every key):\n{lines}")
    if isinstance(full["cache"]["token_seed"], list) and full["cache"]["tokens_per_image"] is None:
        raise ConfigError("invalid configuration: cache.token_seed is a list of seeds, but cache.tokens_per_image is "
                          "null (every instance is cached, so all seeds give the same run): set "
                          "cache.tokens_per_image (the paper uses 2) or give one seed")
    _check_ablations(full)
    _check_labels(full)
    from .judges import judge_name

    names = [judge_name(m) for m in full["judges"]["models"]]
    if len(set(names)) < len(names):
        raise ConfigError(f"invalid configuration: judges.models {full['judges']['models']} has two judges with the "
                          "same name (the last part of the folder or id names a judge): rename a folder")
    return full


def _check_labels(full: dict) -> None:
    """The concept file reads, and the demo CLIP (trained on the digits) labels only the digits."""
    from .judges.demo import demo_seed
    from .labels import LabelsError, load_concepts

    lab = full["labels"]
    if not lab["model"]:
        return
    try:
        load_concepts(lab["concepts"])
    except LabelsError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    if demo_seed(lab["model"]) is not None and full["data"]["kind"] != "digits":
        raise ConfigError(f"invalid configuration: labels.model {lab['model']!r} is the demo CLIP, trained on the digits, "
                          f"and cannot label data.kind {full['data']['kind']!r}: give a CLIP/SigLIP folder or cached id")
    if lab["p_end"] > lab["p_start"]:
        raise ConfigError(f"invalid configuration: labels.p_end {lab['p_end']} > labels.p_start {lab['p_start']}: the "
                          "top image is the likeliest member of a feature's concept set")


def ablation_config(config: dict, variant: dict) -> dict:
    """The run's config with one ablation variant's cluster settings (Table 7)."""
    return {**config, "cluster": merge_config(config["cluster"], variant["cluster"])}


def _check_ablations(full: dict) -> None:
    """Every ablation variant is a valid cluster section, differs from the base, and has its own name."""
    import jsonschema

    variants = full["ablations"]["variants"]
    problems = []
    names = [v["name"] for v in variants]
    if len(set(names)) < len(names):
        problems.append(f"ablations.variants: two variants share a name ({names}): give each its own")
    schema = load_schema()["properties"]["cluster"]
    for i, v in enumerate(variants):
        cluster = with_defaults(ablation_config(full, v)["cluster"], schema)
        for e in jsonschema.Draft202012Validator(schema).iter_errors(cluster):
            problems.append(f"ablations.variants[{i}] ({v['name']}): cluster: {_describe(e)}")
        if cluster == full["cluster"]:
            problems.append(f"ablations.variants[{i}] ({v['name']}): changes nothing in the cluster section")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


DATA_KEYS = {"digits": ("kind", "eval_fraction", "split_seed"),
             "imagefolder": ("kind", "probe_dir", "eval_dir", "on_bad_image"),
             "filelist": ("kind", "probe_list", "eval_list", "on_bad_image"),
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
    out = {k: v for k, v in cluster.items() if k != "minutes_per_unit"}
    if out.get("reduce", {}).get("method", "none") == "none":
        out.pop("reduce", None)
    return out


def stage_specs(config: dict, seed: int | None = None, run: int = 0) -> dict[str, tuple[dict, list[str]]]:
    """Each stage's own parameters and the stages whose artifacts it reads, in DAG order, for one seeded
    token dataset (``seed``; default: the config's only seed). ``run`` > 0: a repeat of the clustering (and
    what follows) on identical inputs, for Table 4's ELUDe runs."""
    data = data_params(config["data"])
    bb = {"kind": config["backbone"]["kind"], "layer": config["backbone"]["layer"],
          "preprocess": config["backbone"]["preprocess"]}
    bb[bb["kind"]] = config["backbone"][bb["kind"]]
    if bb["kind"] == "demo":
        bb["data"] = data  # the demo model is trained on the probe split
    cache = {**config["cache"], "data": data, "device": config["compute"]["device"]}
    cache["token_seed"] = token_seeds(config)[0] if seed is None else seed
    if cache["tokens_per_image"] is None:
        del cache["token_seed"]  # every instance is cached: the seed changes nothing
    return {
        "backbone": (bb, []),
        "cache": (cache, ["backbone"]),
        "topk": (config["topk"], ["cache"]),
        "cluster": ({**cluster_params(config["cluster"]), **({"run": run} if run else {})}, ["topk"]),
        "surgery": (config["surgery"], ["cluster"]),
        "merge": ({}, ["surgery"]),
        "verify": ({**config["verify"], "data": data, "device": config["compute"]["device"]}, ["merge"]),
        "evaluate": ({**config["evaluate"], "data": data, "device": config["compute"]["device"]}, ["merge"]),
        "report": ({**config["report"], "data": data, "run_name": config["run_name"]}, ["verify", "evaluate"]),
    }


def _chain_ids(config: dict, seed: int | None, run: int = 0) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for stage, (params, upstream) in stage_specs(config, seed, run).items():
        inputs = {u: out[u]["id"] for u in upstream}
        out[stage] = {"id": artifact_id(stage, params, inputs), "params": params, "inputs": inputs}
    return out


# Settings that shape each family's training besides its grid (a family's ids depend on its own only).
BASELINE_SHARED = ("expansion_factor", "epochs", "batch_size", "init_seed")
BASELINE_FAMILY_KEYS = {"topk": ("sparsity",), "batchtopk": ("sparsity",), "mp": ("sparsity",),
                        "matryoshka": ("sparsity", "matryoshka_prefixes"),
                        "archetypal": ("archetypal_ratio", "archetypal_points")}


def _family_settings(config: dict, family: str) -> dict:
    b = config["baselines"]
    return {"family": family, **{k: b[k] for k in BASELINE_SHARED + BASELINE_FAMILY_KEYS.get(family, ())},
            "device": config["compute"]["device"]}


def _train_inputs(config: dict, chain: dict) -> dict:
    inputs = {"cache": chain["cache"]["id"], "backbone": chain["backbone"]["id"]}
    if config["baselines"]["expansion_factor"] == "match":
        inputs["merge"] = chain["merge"]["id"]
    return inputs


def _art(stage: str, params: dict, inputs: dict, **extra) -> dict:
    return {"stage": stage, "id": artifact_id(stage, params, inputs), "params": params, "inputs": inputs, **extra}


def baseline_artifacts(config: dict, seed: int | None = None) -> list[dict]:
    """The baseline artifacts one token seed's report needs, each {"stage", "id", "params", "inputs",
    "family"}: on the first seed, the sweep (one ``baseline_train`` per grid point) and the eq. 9
    ``baseline_select``, whose model is the seed's; on the others, a ``baseline_train`` of the selected
    point; then a ``baseline_eval`` per family (Section E.1)."""
    from .baselines import family_grid, grid_points

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

    for family in b["families"]:
        settings = _family_settings(config, family)
        grid = family_grid(b, family)
        sweep = {f"train-{i:03d}": add("baseline_train", {**settings, "hp": hp}, train_inputs(first), family)["id"]
                 for i, hp in enumerate(grid_points(grid))}
        select = add("baseline_select", {"family": family, "grid": grid}, sweep, family)
        source = {"baseline_select": select["id"]}
        if seed != seeds[0]:
            fit = add("baseline_train", {**settings, "hp": "selected"}, {**train_inputs(mine), **source}, family)
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
            for stage in ("cluster", "surgery", "merge"):
                out.append({"stage": stage, **rerun[stage]})
            inputs[f"merge-{run}"] = rerun["merge"]["id"]
        for family, select_id in selected.items():
            for init in dic["init_seeds"]:
                if init == b["init_seed"]:
                    inputs[f"{family}-{init}"] = select_id  # the selected model is this seed's run
                    continue
                # another initialisation; the data order and archetypal candidates stay the selected run's (B.3)
                params = {**_family_settings(config, family), "init_seed": init, "data_seed": b["init_seed"],
                          "hp": "selected"}
                out.append(_art("baseline_train", params, {**_train_inputs(config, chain), "baseline_select": select_id},
                                family=family))
                inputs[f"{family}-{init}"] = out[-1]["id"]
        out.append(_art("dictionary", dict(dic), inputs))
    eff = config["efficiency"]
    if eff["enabled"]:
        params = {**eff, "data": data_params(config["data"]), "device": config["compute"]["device"]}
        inputs = {"backbone": chain["backbone"]["id"], "merge": chain["merge"]["id"],
                  **{f"baseline-{f}": i for f, i in selected.items()}}
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
        evals = {f"baseline_eval-{a['family']}": a["id"] for a in baseline_artifacts(config, seed)
                 if a["stage"] == "baseline_eval"}
        params = {k: j[k] for k in ("pairs_per_method_pair", "sample_seed", "cell_size")}
        g = _art("grids", {**params, "token_seed": seed, "data": data_params(config["data"])},
                 {"evaluate": chain["evaluate"]["id"], "backbone": chain["backbone"]["id"], **evals})
        out.append(g)
        rank_inputs[f"grids-{seed}"] = g["id"]
        for k, model in enumerate(j["models"]):
            settings = {key: j[key] for key in ("backend", "max_tokens", "max_model_len", "tensor_parallel_size",
                                                "batch_size", "trust_remote_code")}
            out.append(_art("judge", {"model": model, **settings, "device": config["compute"]["device"]},
                            {"grids": g["id"]}))
            rank_inputs[f"judge-{seed}-{k}"] = out[-1]["id"]
    out.append(_art("rank", {"bootstrap": j["bootstrap"], "bootstrap_seed": j["bootstrap_seed"]}, rank_inputs))
    return out


def ablation_artifacts(config: dict) -> list[dict]:
    """Table 7, when ``ablations.variants`` is set: per variant and token seed the ELUDe chain from the
    clustering on (cluster, surgery, merge, evaluate; the cache and top-k ids are the base run's, so they
    are shared), then one ``ablation`` artifact over them and the base run's evaluations."""
    variants = config["ablations"]["variants"]
    if not variants:
        return []
    out, inputs = [], {}
    for seed in token_seeds(config):
        inputs[f"evaluate-base-{seed}"] = _chain_ids(config, seed)["evaluate"]["id"]
        for v in variants:
            chain = _chain_ids(ablation_config(config, v), seed)
            out += [{"stage": stage, **chain[stage]} for stage in ("cluster", "surgery", "merge", "evaluate")]
            inputs[f"evaluate-{v['name']}-{seed}"] = chain["evaluate"]["id"]
    params = {"base": cluster_params(config["cluster"]), "variants": variants}
    return out + [_art("ablation", params, inputs)]


def labels_artifact(config: dict, chain: dict) -> dict:
    """One token seed's concept labels and groups (Sec. C.3, 4.2), from its merge and evaluate artifacts; the
    concept file's bytes are part of the id, so editing the word list relabels."""
    from .labels import concepts_file

    lab = config["labels"]
    params = {**lab, "concepts_sha256": hashlib.sha256(concepts_file(lab["concepts"]).read_bytes()).hexdigest(),
              "layer_batch_size": config["evaluate"]["batch_size"], "data": data_params(config["data"]),
              "device": config["compute"]["device"]}
    inputs = {"merge": chain["merge"]["id"], "evaluate": chain["evaluate"]["id"]}
    return {"id": artifact_id("labels", params, inputs), "params": params, "inputs": inputs}


def artifact_ids(config: dict, seed: int | None = None) -> dict[str, dict]:
    """Per stage: {"id", "params", "inputs" (stage -> id)} for a validated config and one token seed. The
    report also reads the baselines' evaluations (:func:`baseline_artifacts`) and, on the first seed, the
    studies (:func:`study_artifacts`: Tables 4 and 5) and the LLM Rank over all seeds
    (:func:`judge_artifacts`: Table 3) and the ablations (:func:`ablation_artifacts`: Table 7)."""
    out = _chain_ids(config, seed)
    extra = {f"baseline_eval-{a['family']}": a["id"] for a in baseline_artifacts(config, seed)
             if a["stage"] == "baseline_eval"}
    if config["labels"]["model"]:
        out["labels"] = labels_artifact(config, out)
        extra["labels"] = out["labels"]["id"]
    if seed is None or seed == token_seeds(config)[0]:
        extra.update({a["stage"]: a["id"] for a in study_artifacts(config) + judge_artifacts(config)
                      + ablation_artifacts(config) if a["stage"] in ("dictionary", "efficiency", "rank", "ablation")})
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
    studies = study_artifacts(config) + judge_artifacts(config) + ablation_artifacts(config)
    agg = None
    if len(seeds) > 1:
        params = {"run_name": config["run_name"], "token_seeds": seeds}
        inputs = {f"report-{s}": per_seed[s]["report"]["id"] for s in seeds}
        agg = {"id": artifact_id("aggregate", params, inputs), "params": params, "inputs": inputs}
    return {"seeds": per_seed, "baselines": list(base.values()), "studies": studies, "aggregate": agg}


def all_ids(config: dict) -> dict[str, set[str]]:
    """stage -> every id a run of ``config`` uses (all seeds, and the aggregate)."""
    run = run_artifacts(config)
    ids: dict[str, set[str]] = {}
    for arts in run["seeds"].values():
        for stage, a in arts.items():
            ids.setdefault(stage, set()).add(a["id"])
    for a in run["baselines"] + run["studies"]:
        ids.setdefault(a["stage"], set()).add(a["id"])
    if run["aggregate"]:
        ids["aggregate"] = {run["aggregate"]["id"]}
    return ids
