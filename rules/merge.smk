rule merge:
    """Gather the surgery shards into the disentangled layer (safetensors + JSON)."""
    input:
        surgery=unit_shards("surgery"),
        cluster=unit_shards("cluster"),
        backbone=upstream("merge", "backbone"),
    output:
        folder=directory("results/merge/{id}"),
    params:
        stage=stage_info("merge"),
    log:
        log_path("merge"),
    benchmark:
        bench_path("merge"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/merge.py"
