rule topk_part:
    """Partial per-unit top-k (eq. 1) over one dataset shard of the cache."""
    input:
        cache=lambda w: f"results/cache/{up_id('topk', w.id, 'cache')}/shard-{w.shard}",
        backbone=upstream("topk", "backbone"),
    output:
        folder=directory("results/topk/{id}/part-{shard}"),
    params:
        stage=stage_info("topk"),
    log:
        log_path("topk", "-part-{shard}"),
    benchmark:
        bench_path("topk", "-part-{shard}"),
    priority: PRIORITY
    threads: 2
    resources:
        mem_mb=topk_mem_mb,
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/topk_part.py"


checkpoint topk:
    """Merge the partial top-k of the dataset shards; a checkpoint because it fixes the number of unit shards."""
    input:
        parts=expand("results/topk/{{id}}/part-{shard}", shard=CACHE_SHARDS),
        backbone=upstream("topk", "backbone"),
    output:
        folder=directory("results/topk/{id}/merged"),
    params:
        stage=stage_info("topk"),
    log:
        log_path("topk", "-merge"),
    benchmark:
        bench_path("topk", "-merge"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=topk_mem_mb,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/topk.py"
