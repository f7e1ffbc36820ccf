rule surgery_shard:
    """Margin rule, fractions, bias split and rho search (eqs. 3-5) for one shard of units."""
    input:
        cluster=f"{PATHS['cluster']}/shard-{{shard}}",
        cache=PATHS["cache"],
        topk=PATHS["topk"],
        backbone=PATHS["backbone"],
    output:
        folder=directory(f"{PATHS['surgery']}/shard-{{shard}}"),
    wildcard_constraints:
        shard=r"\d{4}",
    params:
        stage=stage_info("surgery"),
    log:
        log_path("surgery", "-shard-{shard}"),
    benchmark:
        bench_path("surgery", "-shard-{shard}"),
    threads: 1
    resources:
        mem_mb=shard_mem_mb,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/surgery_shard.py"
