rule cluster_shard:
    """HDBSCAN of one shard of units' contribution vectors, and their representatives (eq. 2)."""
    input:
        cache=upstream("cluster", "cache"),
        topk=upstream("cluster", "topk"),
        backbone=upstream("cluster", "backbone"),
    output:
        folder=directory("results/cluster/{id}/shard-{shard}"),
    params:
        stage=stage_info("cluster"),
    log:
        log_path("cluster", "-shard-{shard}"),
    benchmark:
        bench_path("cluster", "-shard-{shard}"),
    threads: 1
    resources:
        mem_mb=shard_mem_mb,
        runtime=shard_runtime,
        gpu=CLUSTER_GPUS,
    conda:
        CLUSTER_ENV
    script:
        "../workflow_scripts/cluster_shard.py"
