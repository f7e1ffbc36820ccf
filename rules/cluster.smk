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
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=shard_mem_mb,
        runtime=shard_runtime,
        **gpu_resources(CLUSTER_GPUS, cluster_gpu_mb),
    conda:
        CLUSTER_ENV
    script:
        "../workflow_scripts/cluster_shard.py"


checkpoint ef_search:
    """One bisection step of cluster.target_ef's search (elude.method.expansion): the effective EF of the candidate
    this step clusters, the bracket, the path so far and the closest candidate; a checkpoint because the next
    step's candidate, and for the last step surgery's clustering, follow from it. It only reads manifests: on
    SLURM it runs in the main process's host instead of waiting in the queue between clusterings."""
    localrule: True
    input:
        unpack(ef_search_inputs),
    output:
        folder=directory("results/ef_search/{id}"),
    params:
        stage=stage_info("ef_search"),
    log:
        log_path("ef_search"),
    benchmark:
        bench_path("ef_search"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/ef_search.py"
