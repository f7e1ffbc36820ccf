"""A user's own ``--configfile`` stands on its own: the schema's defaults (the paper's settings, extra studies
off) and that file, never the digits demo's settings; the demo (config.yaml) is what runs without one."""
import re
import subprocess

import yaml
from workflow_helpers import REPO, SNAKEMAKE

from elude.pipeline.config import (
    DEMO_CONFIG,
    SCHEMA_PATH,
    load_schema,
    merge_config,
    read_yaml,
    resolve_config,
    with_defaults,
)

# What a user writes first: their model, their images, one setting of their own (the one that collided with a
# demo ablation variant, "ablations.variants[1] (min_cluster_size=50): changes nothing", before).
MINIMAL = {"backbone": {"kind": "timm", "timm": {"name": "vit_tiny_patch16_224"}, "layer": "blocks.11.mlp.fc2"},
           "data": {"kind": "imagefolder", "probe_dir": "/data/probe", "eval_dir": "/data/val"},
           "cluster": {"min_cluster_size": 50}}


def flat(d: dict) -> dict:
    """section.key -> value: a run config's keys, two levels deep."""
    out = {}
    for section, value in d.items():
        if isinstance(value, dict):
            out.update({f"{section}.{key}": v for key, v in value.items()})
        else:
            out[section] = value
    return out


def test_a_minimal_user_config_is_the_schema_defaults_plus_that_file_key_by_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    resolved, expected = flat(resolve_config([path])), flat(with_defaults(MINIMAL, load_schema()))
    expected["run_name"] = "mine"  # the file's name (the schema's default names the demo)
    assert sorted(resolved) == sorted(expected)
    assert [k for k in expected if resolved[k] != expected[k]] == []
    # ...and so none of the demo's own settings reached it: each key where the demo departs from the schema
    demo = flat(resolve_config([]))
    departs = [k for k in demo if k in expected and demo[k] != expected[k] and k not in flat(MINIMAL)]
    assert {"judges.models", "labels.model", "labels.concepts", "baselines.epochs", "baselines.family_grid",
            "dictionary.enabled", "efficiency.enabled", "ablations.variants"} <= set(departs)
    assert all(resolved[k] == expected[k] != demo[k] for k in departs)


def test_without_a_configfile_the_demo_runs_and_later_files_and_config_values_override_earlier_ones(tmp_path):
    assert resolve_config([]) == resolve_config([], {}) and resolve_config([])["run_name"] == "demo"
    assert resolve_config([]) == with_defaults(yaml.safe_load(DEMO_CONFIG.read_text()), load_schema())
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(MINIMAL))
    b.write_text(yaml.safe_dump({"run_name": "mine", "topk": {"k": 7}}))
    cfg = resolve_config([a, b], {"cluster": {"min_samples": 3}})
    assert (cfg["run_name"], cfg["topk"]["k"], cfg["cluster"]["min_cluster_size"], cfg["cluster"]["min_samples"]) == (
        "mine", 7, 50, 3)
    assert resolve_config([], {"topk": {"k": 7}}) == merge_config(resolve_config([]), {"topk": {"k": 7}})


def test_the_workflow_plans_a_user_config_without_the_demos_studies(tmp_path):
    """Snakemake itself (rules/common.smk resolves the config): a dry run of the minimal config plans ELUDe and
    the paper's baseline sweep, and none of the demo's judges, labels, ablations, Table 4 or Table 5; the same
    dry run without --configfile plans the demo with all of them."""
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump(MINIMAL))

    def planned(*configfile: str) -> set[str]:
        cmd = [str(SNAKEMAKE), "--dry-run", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--profile", str(REPO / "profiles/local"), *configfile]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return set(re.findall(r"^(\w+)\s+\d+$", proc.stdout + proc.stderr, flags=re.M)) - {"total"}

    mine = planned("--configfile", str(cfg))
    assert {"backbone", "cache_shard", "topk", "merge", "verify", "evaluate", "baseline_train", "baseline_select"} <= mine
    assert not mine & {"judge", "grids", "rank", "labels", "ablation", "dictionary", "efficiency"}, mine
    assert {"judge", "labels", "ablation", "dictionary", "efficiency"} <= planned()  # the demo


def test_the_template_is_complete_once_its_paths_are_filled_in_and_holds_nothing_of_the_demo(tmp_path):
    """configs/template.yaml: every FILL line is a path or a name; filled in (here: made-up paths) it resolves
    as a --configfile, with the studies that cost extra off and baselines at ELUDe's expansion factor."""
    text = (REPO / "configs/template.yaml").read_text()
    filled = [line.split(":", 1)[0].strip() for line in text.splitlines() if "# FILL:" in line]
    assert filled == ["name", "weights", "layer", "probe_dir", "eval_dir"]
    path = tmp_path / "mine.yaml"
    path.write_text(text.replace("/path/to/", f"{tmp_path}/"))
    cfg = resolve_config([path])
    assert (cfg["backbone"]["kind"], cfg["data"]["kind"], cfg["run_name"]) == ("timm", "imagefolder", "my-model")
    assert cfg["baselines"]["expansion_factor"] == "match" and cfg["baselines"]["epochs"] == 50
    assert not (cfg["judges"]["models"] or cfg["labels"]["model"] or cfg["dictionary"]["enabled"]
                or cfg["efficiency"]["enabled"] or cfg["ablations"]["variants"])


def test_configs_read_through_libyaml_as_through_pyyaml():
    """read_yaml (every Snakemake process reads the schema and the configs with it) gives yaml.safe_load's values."""
    for path in [SCHEMA_PATH, DEMO_CONFIG, *sorted((REPO / "configs").glob("*.yaml"))]:
        assert read_yaml(path.read_text()) == yaml.safe_load(path.read_text()), path
