"""The SLURM profile. The workflow through a real SLURM controller (slurmctld + slurmd on this machine) is
tests/test_template_run.py's: a user's filled-in template, unit shards grouped into jobs, every artifact the
local run's. Here: the profile's partition choice."""
from workflow_helpers import REPO

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
