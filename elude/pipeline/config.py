"""Run configuration: JSON-schema validation with readable errors and defaults.

The schema (``elude/pipeline/config.schema.yaml``) describes every key with its default (the paper's settings;
studies that cost extra off) and rejects unknown keys. How a run's config is made: :func:`resolve_config`.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"  # the embedded demo: a run without --configfile


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


def read_yaml(text: str):
    """yaml.safe_load through libyaml where PyYAML has it (the same values; ~10x faster: every Snakemake process,
    each SLURM job's included, reads the config and the schema)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def _schema() -> dict:
    return read_yaml(SCHEMA_PATH.read_text())


def load_schema() -> dict:
    return copy.deepcopy(_schema())


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


def resolve_config(configfiles: Sequence[str | Path | dict] = (), overrides: dict | None = None) -> dict:
    """A run's config, validated with every default filled in, as the workflow resolves it for
    ``snakemake [--configfile F ...] [--config key=value ...]``. Without a config file: the embedded digits demo
    (``config.yaml``) and ``overrides``. With config files (paths, or dicts already read): the schema's defaults
    (the paper's settings, extra studies off), then each file in order, then ``overrides``: never the demo's
    settings, so a user's config stands on its own; ``run_name`` defaults to the last file's name (a dict:
    ``"run"``)."""
    config = {} if configfiles else read_yaml(DEMO_CONFIG.read_text())
    if configfiles:
        config["run_name"] = Path(configfiles[-1]).stem if not isinstance(configfiles[-1], dict) else "run"
    for f in configfiles:
        config = merge_config(config, f if isinstance(f, dict) else read_yaml(Path(f).read_text()) or {})
    return validate_config(merge_config(config, overrides or {}))


def load_run_config(configfile: str | Path | None = None) -> dict:
    """The validated config of a run made with ``snakemake [--configfile F]`` from this checkout
    (:func:`resolve_config`; for command-line tools that read a finished run's artifacts)."""
    return resolve_config([configfile] if configfile else [])


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
        raise ConfigError("invalid configuration: cache.token_seed is a list of seeds (the default: the paper's 42, "
                          "123, 999), but cache.tokens_per_image is null (every instance is cached, so all seeds give "
                          "the same run): set cache.tokens_per_image (the paper uses 2) or give one seed "
                          "(cache.token_seed: 42)")
    text = full["data"]["text"]
    if full["data"]["kind"] == "text" and (text["path"] is None) == (text["builtin"] is None):
        raise ConfigError("invalid configuration: data.kind text needs exactly one of data.text.path (a .txt or .jsonl "
                          "file, or a folder of them) and data.text.builtin (python-docs: Python's own documentation)")
    if full["data"]["kind"] == "text" and full["backbone"]["kind"] in ("timm", "hub", "factory") \
            and not full["backbone"]["tokenizer"]:
        raise ConfigError(f"invalid configuration: data.kind text with backbone.kind {full['backbone']['kind']!r} needs "
                          "backbone.tokenizer (a Hugging Face tokenizer's hub id or folder): the texts are tokenized by it")
    if full["labels"]["model"] and full["data"]["kind"] == "text":
        raise ConfigError("invalid configuration: labels.model labels features with a CLIP-like model from their top "
                          "images, but data.kind is 'text': set labels.model: null and explain.model (an LLM explains "
                          "text features from their top texts)")
    if full["explain"]["model"] and full["data"]["kind"] != "text":
        raise ConfigError(f"invalid configuration: explain.model explains text features from their top texts, but "
                          f"data.kind is {full['data']['kind']!r}: set explain.model: null (images: labels.model)")
    _check_ablations(full)
    _check_labels(full)
    from ..evaluation.judges import judge_name

    names = [judge_name(m) for m in full["judges"]["models"]]
    if len(set(names)) < len(names):
        raise ConfigError(f"invalid configuration: judges.models {full['judges']['models']} has two judges with the "
                          "same name (the last part of the folder or id names a judge): rename a folder")
    return full


def _check_labels(full: dict) -> None:
    """The concept file reads, and the demo CLIP (trained on the digits) labels only the digits."""
    lab = full["labels"]
    if not lab["model"]:
        return
    from ..evaluation.concept_sets import LabelsError, load_concepts
    from ..models import demo_seed

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


ABLATION_SECTIONS = ("cluster", "surgery")  # what a Table 7 variant may change


def ablation_config(config: dict, variant: dict) -> dict:
    """The run's config with one ablation variant's cluster and surgery settings (Table 7). A variant that
    sets the min_cluster_size a target-EF search would choose keeps it (as Table 7's rows at EF 4 do); others
    are matched to cluster.target_ef like the base."""
    changed = variant.get("cluster", {})
    cluster = merge_config(config["cluster"], changed)
    if cluster.get("ef_search", {}).get("axis") == "min_cluster_size" and "min_cluster_size" in changed:
        cluster["target_ef"] = None
    return {**config, "cluster": cluster, "surgery": merge_config(config["surgery"], variant.get("surgery", {}))}


def _check_ablations(full: dict) -> None:
    """Every ablation variant is a valid change of the cluster and surgery sections, differs from the base,
    and has its own name."""
    import jsonschema

    variants = full["ablations"]["variants"]
    problems = []
    names = [v["name"] for v in variants]
    if len(set(names)) < len(names):
        problems.append(f"ablations.variants: two variants share a name ({names}): give each its own")
    schemas = load_schema()["properties"]
    for i, v in enumerate(variants):
        cfg = ablation_config(full, v)
        for section in ABLATION_SECTIONS:
            cfg[section] = with_defaults(cfg[section], schemas[section])
            for e in jsonschema.Draft202012Validator(schemas[section]).iter_errors(cfg[section]):
                problems.append(f"ablations.variants[{i}] ({v['name']}): {section}: {_describe(e)}")
        if all(cfg[section] == full[section] for section in ABLATION_SECTIONS):
            problems.append(f"ablations.variants[{i}] ({v['name']}): changes nothing in the cluster or surgery section")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
