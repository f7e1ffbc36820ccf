"""The SLURM profile. The workflow through a real SLURM controller (slurmctld + slurmd on this machine) is
tests/test_template_run.py's: a user's filled-in template, unit shards grouped into jobs, every artifact the
local run's. Here: the profile's partition choice, and GPU jobs sharing a GPU as SLURM's gres/shard
(compute.gpu_shards; issue 29, point 7), through a real controller whose node has one GPU in shards."""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from elude.pipeline import resources
from workflow_helpers import REPO, SNAKEMAKE

GROUPING = ["--groups", "cluster_shard=unit_shards", "surgery_shard=unit_shards",
            "--group-components", "unit_shards=2"]  # a group job sums its parallel members' CPUs: 2 fit the node


def test_the_profile_sends_gpu_jobs_to_the_gpu_partition_and_every_other_job_to_the_cpu_partition():
    """profiles/slurm/partitions.yaml through the SLURM plugin's own partition choice: a job that declares a
    GPU (cache/verify/evaluate and the baselines with compute.device: cuda, the cluster shards on the torch
    GPU backend or cuML) lands on the GPU partition; CPU-only jobs of any size (one thread, eight threads,
    64 GB) on the CPU partition. (tests/test_template_run.py checks the CPU side through sbatch itself.)"""
    import logging
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    partitions = read_partition_file(REPO / "profiles/slurm/partitions.yaml")
    log = logging.getLogger("slurm-partitions")

    def best(threads: int, **resources) -> str | None:
        job = SimpleNamespace(name="job", threads=threads, resources={"mem_mb": 8000, "runtime": 60, **resources})
        return get_best_partition(partitions, job, log)

    assert [best(1, gpu=1), best(4, gpu=1, mem_mb=64000)] == ["gpu", "gpu"]
    assert [best(1, gpu=0), best(8), best(2, gpu=0, mem_mb=64000)] == ["cpu", "cpu", "cpu"]
    assert best(1, gpu=16) is None  # more GPUs than a node has: nowhere (the plugin then falls back to the default)


SHARING = {"per_gpu": 8, "gpu_mb": 24000, "partition": "gpu"}


def planned_resources(tmp_path: Path, compute: dict, *extra: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "compute.yaml"
    cfg.write_text(yaml.safe_dump({"compute": compute}))
    return subprocess.run([str(SNAKEMAKE), "--dry-run", "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--cores", "2", "--configfile", str(REPO / "config.yaml"), str(cfg), *extra],
                          capture_output=True, text=True, timeout=300)


def jobs_resources(proc: subprocess.CompletedProcess) -> dict[str, tuple[str, dict]]:
    """Output -> (rule, resources) of every job a dry run lists (a group's members indented)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = r"^ *(?:rule|checkpoint) (\w+):\n(?: +\w+:.*\n)*? +output: (.*)\n(?: +\w+:.*\n)*? +resources: (.*)$"
    found = re.findall(job, proc.stdout, flags=re.M)
    return {out: (rule, dict(kv.split("=", 1) for kv in res.split(", "))) for rule, out, res in found}


def test_gpu_jobs_ask_slurm_for_shards_of_one_gpu_by_their_gpu_memory(tmp_path):
    """The demo on CUDA, planned (a dry run of the real workflow) with whole GPUs and with compute.gpu_shards: every
    GPU job then asks for gres shard:k on the shards' partition, k its GPU memory's share of the GPU rounded up
    (resources.gpu_shards), no job for --gpus (SLURM would put a whole-GPU job on a GPU whose shards are in use),
    the LLM judges and Table 5's timing job for the whole GPU; CPU jobs ask for neither."""
    whole = jobs_resources(planned_resources(tmp_path, {"device": "cuda"}))
    shared = jobs_resources(planned_resources(tmp_path, {"device": "cuda", "gpu_shards": SHARING}))
    assert whole.keys() == shared.keys() and len(whole) > 40
    pairs = [(rule, w, shared[out][1]) for out, (rule, w) in whole.items()]
    gpu_jobs = [(rule, w, s) for rule, w, s in pairs if w.get("gpu") == "1"]
    assert {"backbone", "cache_shard", "verify", "evaluate", "baseline_train", "baseline_eval", "judge",
            "efficiency"} <= {rule for rule, _, _ in gpu_jobs}
    for rule, w, s in gpu_jobs:
        assert "gres" not in w and "slurm_partition" not in w
        assert s["gpu"] == "0" and s["slurm_partition"] == "gpu", (rule, s)
        mb = int(s["gpu_mb"])
        assert mb == (int(w["gpu_mb"]) or SHARING["gpu_mb"])  # 0 in w: the whole GPU (nothing on offer here)
        assert s["gres"] == f"shard:{resources.gpu_shards(mb, SHARING)}"
        if rule in ("judge", "efficiency"):
            assert s["gres"] == "shard:8"
        else:  # the demo's jobs: ~1-4 GB of a 24 GB GPU
            assert s["gres"] in ("shard:1", "shard:2"), (rule, s)
    assert all("gres" not in s and s.get("gpu", "0") == "0" for _, w, s in pairs if w.get("gpu", "0") == "0")
    # jobs grouped into one SLURM job ask for their shards together, which must come from one GPU
    grouped = jobs_resources(planned_resources(tmp_path, {"device": "cuda", "gpu_shards": SHARING}, "--groups",
                                               "verify=g", "--group-components", "g=4"))
    assert {s["gres"] for rule, s in grouped.values() if rule == "verify"} == {"shard:8"}  # 4 x 2 of 8
    too_many = planned_resources(tmp_path, {"device": "cuda", "gpu_shards": SHARING}, "--groups", "verify=g",
                                 "--group-components", "g=5")
    assert too_many.returncode != 0
    assert "set --group-components for that group to at most 4" in too_many.stdout + too_many.stderr


def test_the_shares_of_a_gpu():
    """resources.gpu_shards: a job's share of the GPU's memory in whole shards, one at least, all at most."""
    h100 = {"per_gpu": 8, "gpu_mb": 80000, "partition": "gpu"}
    shares = [resources.gpu_shards(mb, h100) for mb in (0, 1000, 10000, 10001, 39999, 80000, 400000)]
    assert shares == [1, 1, 1, 2, 4, 8, 8]
    assert resources.gpu_shards(10001, h100, members=4) == 8
    with pytest.raises(ValueError, match="at most 4"):
        resources.gpu_shards(10001, h100, members=5)


def test_the_gres_a_partition_offers_and_a_run_without_slurm(monkeypatch, tmp_path):
    """checks.gres_counts reads sinfo's %G fields (types summed, socket bindings ignored); compute.gpu_shards
    where no SLURM is installed fails before any job with what to do. (Against a real controller: below.)"""
    from elude.pipeline.checks import gpu_shards_offered, gres_counts
    from elude.pipeline.doctor import slurm as doctor_slurm

    assert gres_counts("gpu:a100:4(S:0-1),shard:32") == {"gpu": 4, "shard": 32}
    assert gres_counts("gpu:4(S:0,2),shard:16(S:0,2)") == {"gpu": 4, "shard": 16}
    assert gres_counts("gpu:tesla:2,gpu:kepler:2,mps:400") == {"gpu": 4, "mps": 400}
    assert gres_counts("(null)") == {}
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="sinfo is not found here: submit from a SLURM login node"):
        gpu_shards_offered(SHARING)
    found = doctor_slurm({"compute": {"gpu_shards": SHARING}})  # `python -m elude.doctor` on a laptop
    assert found.status == "warn" and "compute.gpu_shards is for SLURM runs: here it does nothing" in found.text


TOY = """
from elude.pipeline import resources
config["compute"] = {{"gpu_shards": {sharing!r}}}
_GPUS = {{"forward": 1}}
include: {gpu_smk!r}

rule all:
    input: "small_a.txt", "small_b.txt"
    default_target: True

rule small:  # after the whole-GPU job: both become ready together, whatever order jobs are submitted in
    input: "whole.txt"
    output: "small_{{name}}.txt"
    wildcard_constraints: name="a|b"
    resources: mem_mb=300, runtime=5, **gpu_resources(1, lambda w, input: {small_mb})
    shell: {job!r}

rule whole:
    output: "whole.txt"
    resources: mem_mb=300, runtime=5, **gpu_resources(1)
    shell: {job!r}
"""
JOB = ("echo start $(date +%s.%N) gpus=$CUDA_VISIBLE_DEVICES shards=$SLURM_SHARDS_ON_NODE > {output}.part; sleep 5; "
       "echo end $(date +%s.%N) >> {output}.part; mv {output}.part {output}")


@pytest.mark.slow
def test_jobs_share_a_gpu_through_slurm_by_shards(tmp_path):
    """Through a real SLURM controller whose node has one GPU as 4 shards (no GPU needed: SLURM only schedules it),
    with this repository's profile and rules/gpu.smk: two jobs of 4,354 MB (ViT-B's forward jobs at batch 256) on
    a 9,000 MB GPU ask for 2 shards each and run side by side on GPU 0; a whole-GPU job (run before them) asks for
    all 4. The machine the run starts on has a GPU of its own (a fake nvidia-smi: 6,000 MB) that must not limit
    the cluster's jobs (it would cap the whole-GPU job's request and keep the two from running together)."""
    from slurm_cluster import slurm_cluster
    from test_resources import fake_nvidia_smi

    from elude.pipeline.checks import gpu_shards_offered
    from elude.pipeline.doctor import slurm as doctor_slurm

    sharing = {"per_gpu": 4, "gpu_mb": 9000, "partition": "gpu"}
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(TOY.format(sharing=sharing, gpu_smk=str(REPO / "rules/gpu.smk"), small_mb=4354,
                                               job=JOB))
    env = {**os.environ, **fake_nvidia_smi(tmp_path / "login-gpu", 'echo "6316"')}
    with slurm_cluster(tmp_path / "slurm", shards_per_gpu=4):
        t0 = time.time()
        proc = subprocess.run([str(SNAKEMAKE), "--profile", str(REPO / "profiles/slurm"), "--directory", str(work),
                               "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5", "--jobs", "4",
                               "--verbose"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        # the check a submitting run makes first (checks.preflight; and the doctor's), against this controller
        gpu_shards_offered(sharing)
        assert "partition 'gpu' offers 4 shards per GPU" in doctor_slurm({"compute": {"gpu_shards": sharing}}).text
        with pytest.raises(RuntimeError, match=r"per_gpu is 8, but nodes of partition 'gpu' have shard:4 over gpu:1"):
            gpu_shards_offered({**sharing, "per_gpu": 8})
        with pytest.raises(RuntimeError, match="lists no nodes in partition 'nope'"):
            gpu_shards_offered({**sharing, "partition": "nope"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    sbatch = re.findall(r"sbatch call: (sbatch .*)", proc.stderr)
    assert len(sbatch) == 3 and all(re.search(r" -p '?gpu'?(\s|$)", c) for c in sbatch)
    assert not any("--gpus" in c for c in sbatch)
    assert sorted(re.search(r"--gres=(shard:\d)", c).group(1) for c in sbatch) == ["shard:2", "shard:2", "shard:4"]
    assert "gpu_mb" not in "".join(re.findall(r"Provided resources: (.*)", proc.stderr))  # nothing offered from here
    spans = {}
    for name in ("small_a", "small_b", "whole"):
        start, end = (work / f"{name}.txt").read_text().splitlines()
        assert start.split()[2:] == ["gpus=0", f"shards={4 if name == 'whole' else 2}"], start
        spans[name] = (float(start.split()[1]), float(end.split()[1]))
    (a0, a1), (b0, b1), (w0, w1) = spans["small_a"], spans["small_b"], spans["whole"]
    assert max(a0, b0) < min(a1, b1)  # side by side on the one GPU
    assert w1 <= min(a0, b0)
    assert all(t0 < t for span in spans.values() for t in span)
    with slurm_cluster(tmp_path / "slurm-3"):  # no GPU sharing set up
        with pytest.raises(RuntimeError, match="offer no gres/shard"):
            gpu_shards_offered(sharing)
