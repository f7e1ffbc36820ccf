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
        mem_mb=4000,
        runtime=240,
    conda:
        "../envs/cluster-cpu.yaml"
    script:
        "../workflow_scripts/cluster_shard.py"
