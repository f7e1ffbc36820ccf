"""The workflow through a real SLURM controller (slurmctld + slurmd on this machine), with unit shards
grouped into one job; its checkpoint must equal the local run's byte for byte."""
import hashlib
import re

from slurm_cluster import PARTITIONS, slurm_cluster
from workflow_helpers import REPO, executed_rules, ids_for, snakemake

GROUPING = ["--groups", "cluster_shard=unit_shards", "surgery_shard=unit_shards",
            "--group-components", "unit_shards=2"]  # a group job sums its parallel members' CPUs: 2 fit the node


def test_tiny_run_through_slurm_matches_local(tmp_path, tiny_run):
    local_work, cfg, _ = tiny_run
    ids = ids_for(cfg)
    with slurm_cluster(tmp_path / "slurm") as cluster:
        proc = snakemake(
            tmp_path, cfg, "--verbose", *GROUPING,
            # test overrides: small memory, quick status checks (the partitions: the profile's partitions.yaml)
            "--default-resources", "mem_mb=1500", "runtime=30",
            "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5", "--jobs", "4",
            profile="slurm", timeout=1200, check=False)
        ctld_log = (cluster / "slurmctld.log").read_text()
    (tmp_path / "snakemake.log").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-6000:]
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", proc.stderr)
    sbatch_calls = re.findall(r"sbatch call: (sbatch .*)", proc.stderr)
    # 10 single jobs (backbone, 2 cache shards, 2 partial top-k, the top-k merge, merge, verify, evaluate,
    # report) + 2 group jobs for the 3 unit shards (cluster + surgery each): shards 0-1 together, 2 alone
    assert len(job_ids) == 12 and len(sbatch_calls) == 12, proc.stderr[-4000:]
    group_calls = [c for c in sbatch_calls if "--comment rule_unit_shards_cluster_shard_surgery_shard" in c]
    assert len(group_calls) == 2  # the shards really were grouped: 6 shard jobs in 2 submissions
    targets = " ".join(group_calls)
    assert all(re.search(rf"'{rule}:id=[0-9a-f]{{12}},shard={s:04d}'", targets)
               for rule in ("cluster_shard", "surgery_shard") for s in range(3))
    assert sorted(p.name for p in (tmp_path / "results/cluster" / ids["cluster"]).iterdir()) == [
        "shard-0000", "shard-0001", "shard-0002"]
    assert {"backbone", "cache_shard", "topk_part", "topk", "merge", "verify", "evaluate", "report"} <= set(
        executed_rules(proc.stderr))
    for job_id in job_ids:  # every job went through the controller
        assert f"_slurm_rpc_submit_batch_job: JobId={job_id} " in ctld_log
    cpu = PARTITIONS[0]  # every job of the tiny run is CPU-only: the profile's partitions.yaml sends all to "cpu"
    assert all(re.search(rf"-p '?{cpu}'?(\s|$)", c) for c in sbatch_calls), sbatch_calls
    assert proc.stderr.count(f"Auto-selected partition '{cpu}'") >= len(sbatch_calls)
    local = local_work / "results/merge" / ids["merge"] / "layer.safetensors"
    remote = tmp_path / "results/merge" / ids["merge"] / "layer.safetensors"
    assert hashlib.sha256(remote.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()
    print("\n".join(sbatch_calls))


def test_the_profile_sends_gpu_jobs_to_the_gpu_partition_and_every_other_job_to_the_cpu_partition():
    """profiles/slurm/partitions.yaml through the SLURM plugin's own partition choice: a job that declares a
    GPU (cache/verify/evaluate and the baselines with compute.device: cuda, the cluster shards on the torch
    GPU backend or cuML) lands on the GPU partition; CPU-only jobs of any size (one thread, eight threads,
    64 GB) on the CPU partition. (The real-SLURM test above checks the CPU side through sbatch itself.)"""
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
