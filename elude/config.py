"""Run configuration: JSON-schema validation with readable errors, defaults, and content ids.

The schema (``elude/config.schema.yaml``) describes every key with its default and rejects unknown
keys. :func:`artifact_ids` is the one place that turns a config into the id of every stage's artifact;
the workflow (``rules/common.smk``) and the housekeeping CLI both use it.
"""
from __future__ import annotations

import copy
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
    return full


DATA_KEYS = {"digits": ("kind", "eval_fraction", "split_seed"),
             "imagefolder": ("kind", "probe_dir", "eval_dir", "image_size", "channels", "on_bad_image")}


def data_params(data: dict) -> dict:
    """The data keys that matter for the chosen kind (others do not enter any id)."""
    return {k: data[k] for k in DATA_KEYS[data["kind"]]}


def stage_specs(config: dict) -> dict[str, tuple[dict, list[str]]]:
    """Each stage's own parameters and the stages whose artifacts it reads, in DAG order."""
    data = data_params(config["data"])
    bb = {"kind": config["backbone"]["kind"], "layer": config["backbone"]["layer"]}
    bb[bb["kind"]] = config["backbone"][bb["kind"]]
    if bb["kind"] == "demo":
        bb["data"] = data  # the demo model is trained on the probe split
    return {
        "backbone": (bb, []),
        "cache": ({**config["cache"], "data": data, "device": config["compute"]["device"]}, ["backbone"]),
        "topk": (config["topk"], ["cache"]),
        "cluster": ({k: v for k, v in config["cluster"].items() if k != "minutes_per_unit"}, ["topk"]),
        "surgery": (config["surgery"], ["cluster"]),
        "merge": ({}, ["surgery"]),
        "verify": ({**config["verify"], "data": data, "device": config["compute"]["device"]}, ["merge"]),
        "evaluate": ({**config["evaluate"], "data": data, "device": config["compute"]["device"]}, ["merge"]),
        "report": ({**config["report"], "data": data, "run_name": config["run_name"]}, ["verify", "evaluate"]),
    }


def artifact_ids(config: dict) -> dict[str, dict]:
    """Per stage: {"id", "params", "inputs" (stage -> id)} for a validated config."""
    out: dict[str, dict] = {}
    for stage, (params, upstream) in stage_specs(config).items():
        inputs = {u: out[u]["id"] for u in upstream}
        out[stage] = {"id": artifact_id(stage, params, inputs), "params": params, "inputs": inputs}
    return out
