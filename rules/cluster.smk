rule cluster_shard:
    """HDBSCAN of one shard of units' contribution vectors, and their representatives (eq. 2)."""
    input:
        cache=PATHS["cache"],
        topk=PATHS["topk"],
        backbone=PATHS["backbone"],
    output:
        folder=directory(f"{PATHS['cluster']}/shard-{{shard}}"),
    wildcard_constraints:
        shard=r"\d{4}",
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
