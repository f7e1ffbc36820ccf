rule cache_shard:
    """Cache the target layer's inputs for one dataset shard of the probe images (chunked zarr v3)."""
    input:
        backbone=upstream("cache", "backbone"),
    output:
        folder=directory("results/cache/{id}/shard-{shard}"),
    params:
        stage=stage_info("cache"),
    log:
        log_path("cache", "-shard-{shard}"),
    benchmark:
        bench_path("cache", "-shard-{shard}"),
    priority: PRIORITY
    threads: FORWARD_THREADS
    resources:
        mem_mb=cache_mem_mb,
        **forward_gpu(config["cache"]["batch_size"]),
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/cache.py"
