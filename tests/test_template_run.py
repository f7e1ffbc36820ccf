"""Tried as a new user would (issue 25): a timm ViT saved as a training checkpoint and a few hundred PNGs in
class folders, configured from configs/template.yaml by filling in its FILL lines only, runs end to end, on
this machine and through a real SLURM controller, with the TopK-SAE baseline at ELUDe's own expansion factor
and nothing of the digits demo in the resolved config."""
import argparse
import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_slurm import GROUPING
from workflow_helpers import REPO, assert_same_artifacts, executed_rules, running_jobs, snakemake

from elude.models.backbones import load_backbone
from elude.pipeline.config import load_schema, resolve_config, with_defaults
from elude.pipeline.plan import artifact_ids

ARCH = "vit_tiny_patch16_224"  # timm's smallest ViT (192 units at blocks.11.mlp.fc2), as the template builds it
N_PROBE, N_EVAL = 240, 80


def digit_pngs(root, images, labels) -> None:
    """scikit-learn's 8x8 digits, 4x upscaled RGB PNGs in <root>/<digit>/: the model's own preprocessing
    resizes them to 224 px."""
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = np.kron((image / 16 * 255).astype(np.uint8), np.ones((4, 4), np.uint8))
        Image.fromarray(pixels).convert("RGB").save(root / str(label) / f"{i:04d}.png")


def training_checkpoint(path) -> dict:
    """What timm's train.py saves (random init here, no download): DataParallel's "module." prefix on the
    trained weights, the EMA weights beside them, the training args pickled. Returns the EMA state dict, the
    one timm (and the backbone job) loads."""
    import timm

    torch.manual_seed(0)
    trained, ema = (timm.create_model(ARCH, num_classes=1000).state_dict() for _ in range(2))
    torch.save({"epoch": 299, "arch": ARCH, "args": argparse.Namespace(model=ARCH, lr=5e-4, epochs=300),
                "state_dict": {f"module.{k}": v for k, v in trained.items()}, "state_dict_ema": ema,
                "metric": 72.2}, path)
    return ema


def fill_template(path, values: dict[str, str]) -> None:
    """configs/template.yaml with the value of each FILL line replaced, every other line as shipped."""
    lines = []
    for line in (REPO / "configs/template.yaml").read_text().splitlines():
        key = line.split(":", 1)[0].strip()
        if "# FILL:" in line:
            line = re.sub(r"(:\s+)\S+(\s+# FILL:)", lambda m: f"{m[1]}{values.pop(key)}{m[2]}", line)
        lines.append(line)
    assert not values, f"no FILL line for {sorted(values)}"
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def new_user(tmp_path_factory):
    """The user's files: images, checkpoint and the filled-in template (outside any run folder)."""
    from sklearn.datasets import load_digits

    home = tmp_path_factory.mktemp("user")
    digits = load_digits()
    digit_pngs(home / "train", digits.images[:N_PROBE], digits.target[:N_PROBE])
    digit_pngs(home / "val", digits.images[N_PROBE:N_PROBE + N_EVAL], digits.target[N_PROBE:N_PROBE + N_EVAL])
    ema = training_checkpoint(home / "checkpoint.pth.tar")
    cfg = home / "my-model.yaml"
    fill_template(cfg, {"name": ARCH, "weights": str(home / "checkpoint.pth.tar"), "layer": "blocks.11.mlp.fc2",
                        "probe_dir": str(home / "train"), "eval_dir": str(home / "val")})
    return cfg, ema


@pytest.fixture(scope="module")
def local_template_run(new_user, tmp_path_factory):
    cfg, _ = new_user
    from test_doctor import doctor

    work = tmp_path_factory.mktemp("template-local")
    checked = doctor(work, "--configfile", str(cfg))  # what the README says to run first
    return work, snakemake(work, cfg, timeout=1200, check=False), checked


def summary(work) -> dict:
    return json.loads((work / "results/runs/my-model/summary.json").read_text())


def assert_finished_as_configured(work, cfg, proc) -> dict:
    """The run finished losslessly, from the EMA weights, with the TopK-SAE at ELUDe's expansion factor and
    with the config the template says: schema defaults + the file, nothing of the demo."""
    assert proc.returncode == 0, proc.stderr[-6000:]
    config = resolve_config([cfg])
    schema_defaults = with_defaults(yaml.safe_load(cfg.read_text()), load_schema())
    assert config == schema_defaults and config["run_name"] == "my-model"
    # so the demo's studies (config.yaml turns these on) stayed off
    assert not (config["judges"]["models"] or config["labels"]["model"] or config["ablations"]["variants"]
                or config["dictionary"]["enabled"] or config["efficiency"]["enabled"])
    assert (config["baselines"]["epochs"], config["baselines"]["family_grid"]) == (50, {})  # the paper's sweep
    remembered = [json.loads(p.read_text())["config"] for p in (work / "results/.runs").glob("my-model-*.json")]
    assert remembered == [json.loads(json.dumps(config, default=str))]  # what housekeeping keeps: this run
    s = summary(work)
    assert s["lossless"]["lossless"] and s["n_units"] == 192 and s["n_subunits"] > s["n_units"]
    topk = s["table2"]["rows"]["topk"]
    assert topk["n_features"] == s["n_subunits"]  # expansion_factor: match
    metrics = json.loads((work / "results/evaluate" / artifact_ids(config)["evaluate"]["id"] / "metrics.json").read_text())
    assert metrics["n_images"] == N_EVAL
    return s


@pytest.mark.slow
def test_the_filled_in_template_runs_end_to_end_here(new_user, local_template_run):
    from test_doctor import lines

    cfg, ema = new_user
    work, proc, checked = local_template_run
    assert checked.returncode == 0, checked.stdout + checked.stderr
    found = lines(checked.stdout)
    assert found["layer"][1] == "blocks.11.mlp.fc2: 192 units x 768 inputs, 197 instances per image"
    assert found["data"][1] == f"data.kind imagefolder: {N_PROBE} probe images, {N_EVAL} evaluation images"
    assert found["jobs"][1].startswith(f"about {len(executed_rules(proc.stderr)) - 1} jobs: ")  # all but `all`
    assert_finished_as_configured(work, cfg, proc)
    rules = set(executed_rules(proc.stderr))
    assert {"backbone", "cache_shard", "topk", "cluster_shard", "surgery_shard", "merge", "verify", "evaluate",
            "baseline_train", "baseline_select", "baseline_eval", "report"} <= rules
    assert not rules & {"judge", "labels", "ablation", "dictionary", "efficiency"}
    model = load_backbone(work / "results/backbone" / artifact_ids(resolve_config([cfg]))["backbone"]["id"])
    weights = model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in ema.items())  # timm's rule: the EMA weights


@pytest.mark.slow
def test_the_filled_in_template_runs_through_slurm_as_here(new_user, local_template_run, tmp_path):
    from slurm_cluster import PARTITIONS, describe, slurm_cluster

    cfg, _ = new_user
    local = local_template_run[0]
    with slurm_cluster(tmp_path / "slurm") as cluster:
        proc = snakemake(tmp_path, cfg, *GROUPING, "--default-resources", "mem_mb=1500", "runtime=30",
                         "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5", "--jobs", "8",
                         "--verbose", profile="slurm", timeout=1800, check=False,
                         on_timeout=lambda work: running_jobs(work) + describe(cluster))
        ctld_log = (cluster / "slurmctld.log").read_text()
    s = assert_finished_as_configured(tmp_path, cfg, proc)
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", proc.stderr)
    sbatch_calls = re.findall(r"sbatch call: (sbatch .*)", proc.stderr)
    rules = executed_rules(proc.stderr)
    # the template's 192 units in 3 shards of 64: cluster + surgery of shards 0-1 in one group job, 2 in another;
    # every other job (all but the local `all`) on its own
    group_calls = [c for c in sbatch_calls if "--comment rule_unit_shards_cluster_shard_surgery_shard" in c]
    assert len(group_calls) == 2 and all(re.search(rf"'{rule}:id=[0-9a-f]{{12}},shard={s:04d}'", " ".join(group_calls))
                                         for rule in ("cluster_shard", "surgery_shard") for s in range(3))
    in_groups = re.findall(r"^\s+rule (\w+):", proc.stderr, flags=re.M)  # (executed_rules: the single jobs)
    assert sorted(in_groups) == ["cluster_shard"] * 3 + ["surgery_shard"] * 3
    assert len(job_ids) == len(sbatch_calls) == len(rules) - 1 + 2, proc.stderr[-4000:]
    assert all(f"_slurm_rpc_submit_batch_job: JobId={j} " in ctld_log for j in job_ids)  # all through the controller
    cpu = PARTITIONS[0]  # every job here is CPU-only: partitions.yaml sends it to "cpu" (SLURM's default is "gpu")
    assert all(re.search(rf"-p '?{cpu}'?(\s|$)", c) for c in sbatch_calls), sbatch_calls
    assert proc.stderr.count(f"Auto-selected partition '{cpu}'") >= len(sbatch_calls)
    assert_same_artifacts(local, tmp_path, cfg)  # ELUDe's chain, byte for byte
    assert s["table2"] == summary(local)["table2"]  # and the baselines' scores
