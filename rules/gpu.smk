# GPU resources (issue 29, point 7): what a GPU job asks the scheduler for, here and on SLURM. Needs `config` (its
# compute section), `_GPUS` (elude.pipeline.resources.gpus: GPUs per kind of job) and `resources`
# (elude.pipeline.resources); rules/common.smk includes it, and so does tests/test_slurm.py's GPU-sharing run.


# Whether this run submits its jobs (SLURM) rather than running them here. workflow.local_exec cannot tell while the
# Snakefile is read (no executor yet: it is True even under SLURM), and a resource registered later limits nothing;
# a local run always has cores (--jobs is their alias there), a submitting one only --jobs (the SLURM profile's).
SUBMITS_JOBS = workflow.resource_settings.cores is None and workflow.resource_settings.nodes is not None


def _share_the_gpu():
    """On one machine the GPU jobs share the GPU by memory (resource gpu_mb, elude.pipeline.resources): offer
    the GPU's memory unless the command line or profile gave gpu_mb (or a gpu limit, which then serialises
    them); without nvidia-smi, one GPU job at a time. A run that submits its jobs offers nothing: the machine it
    runs on (a login node) has no say over the cluster's GPUs."""
    given = workflow.global_resources
    if not (workflow.is_main_process and not SUBMITS_JOBS and any(_GPUS.values())) or "gpu_mb" in given \
            or "gpu" in given:
        return given.get("gpu_mb").value
    total = resources.local_gpu_mb()
    workflow.register_resource("gpu_mb" if total else "gpu", total or 1)
    return total


GPU_MB = _share_the_gpu()  # the GPU memory on offer (None: not limited here)
GPU_SHARDS = config["compute"]["gpu_shards"]  # SLURM's gres/shard (None: whole GPUs)


def gpu_resources(gpus, estimate=None):
    """Resources of a job that holds ``gpus`` GPUs (issue 29, point 7): ``gpu`` and ``gpu_mb``, its GPU memory,
    ``estimate(w, input)`` MB (None: the whole GPU), at most what is on offer. On one machine the jobs share the GPU
    by gpu_mb; under SLURM a job gets whole GPUs (gpu: --gpus) or, with compute.gpu_shards, the shards of one that
    its gpu_mb needs (gres: --gres=shard:k, on that partition: resources.gpu_shards)."""
    if not gpus:
        return {"gpu": 0, "gpu_mb": 0}
    whole = GPU_MB or (GPU_SHARDS or {}).get("gpu_mb", 0)

    def gpu_mb(w, input):
        need = whole if estimate is None else estimate(w, input)
        return min(need, GPU_MB) if GPU_MB else need

    if not GPU_SHARDS or gpus > 1:  # a job's shards come from one GPU: more than one GPU are whole GPUs
        return {"gpu": gpus, "gpu_mb": gpu_mb}

    def gres(w, input, rulename):
        group = workflow.group_settings.overwrite_groups.get(rulename)  # --groups: members run side by side
        members = workflow.group_settings.group_components.get(group, 1) if group else 1
        return f"shard:{resources.gpu_shards(gpu_mb(w, input), GPU_SHARDS, members)}"

    return {"gpu": 0, "gpu_mb": gpu_mb, "gres": gres, "slurm_partition": GPU_SHARDS["partition"]}
