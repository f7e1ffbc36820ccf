rule surgery_shard:
    """Margin rule, fractions, bias split and rho search (eqs. 3-5) for one shard of units."""
    input:
        cluster=lambda w: f"results/cluster/{up_id('surgery', w.id, 'cluster')}/shard-{w.shard}",
        cache=upstream("surgery", "cache"),
        topk=upstream("surgery", "topk"),
        backbone=upstream("surgery", "backbone"),
    output:
        folder=directory("results/surgery/{id}/shard-{shard}"),
    params:
        stage=stage_info("surgery"),
    log:
        log_path("surgery", "-shard-{shard}"),
    benchmark:
        bench_path("surgery", "-shard-{shard}"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=shard_mem_mb,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/surgery_shard.py"
