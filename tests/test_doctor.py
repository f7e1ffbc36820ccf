"""``python -m elude.doctor``: the checks on this machine, for the demo and for a user config that cannot run."""
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from workflow_helpers import REPO


def doctor(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elude.doctor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def lines(out: str) -> dict[str, tuple[str, str]]:
    """topic -> (status, text)."""
    return {parts[1]: (parts[0], parts[2]) for line in out.splitlines() if len(parts := line.split(None, 2)) == 3
            and parts[0] in ("ok", "warn", "FAIL")}


def test_the_demo_passes_with_its_shape_size_and_jobs(tmp_path):
    """The demo on this machine: nothing fails; the layer, the instances and the job count are the ones the
    default run has (64 units x 256 inputs, 17 tokens x 1,257 probe images = 21,369 instances, 63 jobs:
    bench/default_run.py on a finished default run)."""
    proc = doctor(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = lines(proc.stdout)
    assert found["layer"] == ("ok", "blocks.3.mlp.fc2: 64 units x 256 inputs, 17 instances per image")
    assert found["data"] == ("ok", "data.kind digits: 1257 probe images, 540 evaluation images")
    assert "21,369 instances x 256 inputs" in found["disk"][1]
    assert found["scale"] == ("ok", "topk.k 1,000 of 21,369 instances (4.7%), cluster.min_cluster_size 25 = k/40; "
                                    "the paper: 15.6% and k/400; evaluate.ms_top_k 50 of 540 evaluation images "
                                    "(9.3%; the paper: 100 of 50,000 = 0.2%)")
    assert found["jobs"][1].startswith("about 63 jobs: ")
    # the time from the measured per-stage costs (elude.pipeline.estimate) and the forward pass timed here
    # (minutes on a quiet 2-core machine; the forward pass is timed on the spot, so a busy one reads slower)
    span = r"[\d.,]+ (min|h)"
    assert re.fullmatch(rf"about {span} of job time \((\w+ {span}, ){{2}}\w+ {span}\), before parallel jobs "
                        r"share it; forward pass [\d,]+ images/s measured here on cpu", found["time"][1]), found["time"]
    assert found["clustering"][1].startswith("cluster.backend 'auto' runs as torch:")
    assert "nothing here stops the run" in proc.stdout


def test_a_config_that_cannot_run_fails_naming_each_key(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({
        "backbone": {"kind": "timm", "layer": "blocks.0.mlp.fc9",
                     "timm": {"name": "vit_tiny_patch16_224", "weights": str(tmp_path / "missing.pth")}},
        "data": {"kind": "imagefolder", "probe_dir": str(tmp_path / "no-probe"), "eval_dir": str(tmp_path / "no-eval")},
        "cluster": {"backend": "cuml"}, "compute": {"device": "cuda"}}))
    proc = doctor(tmp_path, "--configfile", str(mine))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = lines(proc.stdout)
    assert found["config"][0] == "ok" and "'mine'" in found["config"][1]
    assert found["models"] == ("FAIL", f"backbone.timm.weights: {tmp_path}/missing.pth does not exist")
    assert found["data"][0] == "FAIL" and "data.probe_dir" in found["data"][1]
    assert found["layer"][0] == "FAIL" and "blocks.0.mlp.fc9" in found["layer"][1]
    assert found["scale"][0] == "warn" and "only counted by the jobs" in found["scale"][1]
    if not torch.cuda.is_available():
        assert found["clustering"][0] == "FAIL" and "cuml" in found["clustering"][1]
        # no GPU here: a login node with sbatch may still run it on SLURM (warn), else the run would stop
        assert found["device"][0] == ("warn" if shutil.which("sbatch", path="/usr/bin:/bin") else "FAIL")
    assert proc.stdout.rstrip().splitlines()[-1].startswith("FAIL: ")


def test_the_time_estimate_at_the_papers_scale_is_hours_of_clustering_and_baselines(monkeypatch):
    """elude.pipeline.estimate on a Table 9 config with a ViT-B/16 fc2 (768 units x 3,072 inputs, 197 tokens),
    ImageNet's 1,281,167 probe and 50,000 evaluation images, a GPU's forward rate: hours, not minutes, and
    clustering (quadratic in top-k) and the baseline sweep are what costs; the clustering grows as k^2.1."""
    from elude.pipeline.config import resolve_config
    from elude.pipeline.estimate import cluster_unit_seconds, describe, stage_seconds

    config = resolve_config([REPO / "configs/augreg-vit-b16-l12.yaml"])
    shape = {"units": 768, "inputs": 3072, "per_image": 197}
    seconds = stage_seconds(config, shape, 1_281_167, 50_000, per_image_s=1 / 2000)
    assert max(seconds, key=seconds.get) in ("cluster", "baseline_train") and sum(seconds.values()) > 24 * 3600
    line = describe(seconds, 1 / 2000, "cuda", "cuda")  # (training on a GPU has no measured rate: named apart)
    assert re.match(r"about [\d.]+ h of job time \(cluster [\d.]+ h, .*, plus the baselines' training on the GPU "
                    r"\(not measured; [\d,.]+ h at the 2-core CPU rate\)", line), line
    assert cluster_unit_seconds(200_000, 3072, gpu=True) / cluster_unit_seconds(100_000, 3072, gpu=True) == pytest.approx(2 ** 2.1)
    # the paper's own figure (Sec. E.2): 768 units at k = 400,000 in ~28 h on one GPU
    assert 768 * cluster_unit_seconds(400_000, 3072, gpu=True) == pytest.approx(28 * 3600)
    # match_live: the sweep at match as before, plus each seed's selected point trained 1 + 3 times at most
    from elude.pipeline import estimate
    from elude.pipeline.config import merge_config

    def at(ef):
        return stage_seconds(merge_config(config, {"baselines": {"expansion_factor": ef}}), shape, 1_281_167, 50_000,
                             per_image_s=1 / 2000)

    match, live = at("match"), at("match_live")
    assert {s: v for s, v in live.items() if s != "baseline_train"} == {s: v for s, v in match.items() if s != "baseline_train"}
    monkeypatch.setattr(estimate, "LIVE_MATCH_TRIES", 0)  # one training per refit: only the first seed's is extra
    one = at("match_live")["baseline_train"] - match["baseline_train"]  # F x (t + a job's start-up)
    starts = len(config["baselines"]["families"]) * estimate.JOB_START_S
    # F x (4 t + start-up) on the first seed (a job of its own) and F x 3 t more on each of the two others
    assert live["baseline_train"] - match["baseline_train"] == pytest.approx(10 * (one - starts) + starts)
    # the baselines at match are sized for cluster.target_ef when it is set (else EF 4), and the doctor says which
    from elude.pipeline.doctor import run_time

    target8 = merge_config(config, {"baselines": {"expansion_factor": "match"}, "cluster": {"target_ef": 8}})
    assert stage_seconds(target8, shape, 1_281_167, 50_000, per_image_s=1 / 2000)["baseline_train"] > match["baseline_train"]
    shape_timed = {**shape, "per_image_s": 1 / 2000, "timed_on": "cuda"}
    counts = {"probe": 1_281_167, "eval": 50_000}
    assert run_time(target8, counts, shape_timed).endswith("the baselines at match are sized for ELUDe at EF 8 (cluster.target_ef)")
    assert "sized for ELUDe at EF 4 (assumed" in run_time(merge_config(config, {"baselines": {"expansion_factor": "match"}}),
                                                          counts, shape_timed)


def test_a_config_left_at_the_papers_defaults_on_a_small_folder_is_told_to_scale_top_k_and_min_cluster_size(tmp_path):
    """The schema's defaults are the paper's (ImageNet: k = 400,000 of 2.56 M tokens, min_cluster_size 1,000):
    on a folder of a few images the doctor says that k is clamped and that no unit could split, with the fix."""
    import numpy as np
    from PIL import Image

    for split in ("probe", "eval"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / split / "a" / f"{i}.png")
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({
        "backbone": {"kind": "timm", "layer": "blocks.1.mlp.fc2", "timm": {"name": "vit_tiny_patch16_224", "kwargs": {
            "img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 2, "num_heads": 2, "num_classes": 2}}},
        "data": {"kind": "imagefolder", "probe_dir": str(tmp_path / "probe"), "eval_dir": str(tmp_path / "eval")}}))
    proc = doctor(tmp_path, "--configfile", str(mine))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a warning: the run would go, splitting nothing
    assert lines(proc.stdout)["scale"] == (
        "warn", "topk.k 10 of 10 instances (100.0%), cluster.min_cluster_size 1,000 = 100.0 x k; the paper: 15.6% and "
        "k/400; topk.k 400,000 is clamped to the 10 instances; evaluate.ms_top_k 100 of 5 evaluation images (100.0%; "
        "the paper: 100 of 50,000 = 0.2%): no unit can split into two clusters of min_cluster_size: lower "
        "cluster.min_cluster_size (e.g. k/400, the paper's ratio)")


TEXT_FACTORY = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, pretrained=False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(30, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        return h + self.mlp(h)


def model(pretrained=False):
    return Tiny(pretrained)


class Texts(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        mask = torch.arange(9) < 3 + i % 6
        return {"input": {"input_ids": torch.arange(9) % 29 + 1, "attention_mask": mask.long()}, "valid": mask}


def texts(split):
    return Texts(50 if split == "probe" else 20)
'''


def test_the_text_default_passes_with_its_language_models_shape(tmp_path):
    """configs/demo-text.yaml: the demo GPT-2's layer (Conv1D, 64 units x 256 inputs, a token per instance of the
    64-token context) checked on random token ids, the texts counted without the tokenizer (the backbone's)."""
    proc = doctor(tmp_path, "--configfile", str(REPO / "configs/demo-text.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = lines(proc.stdout)
    assert found["models"] == ("ok", "the demo GPT-2 and its tokenizer (trained in the backbone job)")
    assert found["data"] == ("ok", "data.kind text (builtin python-docs): 3000 probe texts, 1000 evaluation texts")
    assert found["layer"] == ("ok", "transformer.h.1.mlp.c_proj: 64 units x 256 inputs, 64 instances per image")
    assert "24,000 instances x 256 inputs" in found["disk"][1]  # cache.tokens_per_image 8 x 3,000 texts


def test_a_text_factory_model_is_checked_on_its_own_examples(tmp_path):
    """A factory model that takes token ids, not an image (configs/real/minilm.yaml's kind): the doctor builds
    the factory datasets, counts them, and runs the layer check and the timing on their examples."""
    (tmp_path / "text_factory.py").write_text(TEXT_FACTORY)
    mine = tmp_path / "text.yaml"
    mine.write_text(yaml.safe_dump({
        "backbone": {"kind": "factory", "layer": "mlp.2", "factory": {"target": "text_factory:model"}},
        "data": {"kind": "factory", "factory": {"target": "text_factory:texts"}},
        "cache": {"tokens_per_image": 2, "token_seed": 42}, "topk": {"k": 16}, "cluster": {"min_cluster_size": 2},
        "evaluate": {"ms_top_k": 4, "accuracy": "never"}, "baselines": {"families": []}}))
    proc = subprocess.run([sys.executable, "-m", "elude.doctor", "--configfile", str(mine)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": f"{REPO}:{tmp_path}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = lines(proc.stdout)
    assert found["data"] == ("ok", "data.kind factory: 50 probe examples, 20 evaluation examples")
    assert found["layer"] == ("ok", "mlp.2: 8 units x 32 inputs, 9 instances per image")
    assert found["scale"][1].startswith("topk.k 16 of 100 instances (16.0%), cluster.min_cluster_size 2 = k/8")
    assert found["time"][0] == "ok" and "images/s measured here on cpu" in found["time"][1]
