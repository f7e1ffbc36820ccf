rule cache:
    """Cache the target layer's inputs for every probe instance (chunked zarr v3)."""
    input:
        backbone=PATHS["backbone"],
    output:
        folder=directory(PATHS["cache"]),
    params:
        stage=stage_info("cache"),
    log:
        log_path("cache"),
    benchmark:
        bench_path("cache"),
    threads: 2
    resources:
        mem_mb=4000,
        gpu=FORWARD_GPUS,
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/cache.py"
