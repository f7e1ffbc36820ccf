rule merge:
    """Gather the surgery shards into the disentangled layer (safetensors + JSON)."""
    input:
        surgery=surgery_shards,
        cluster=cluster_shards,
        backbone=PATHS["backbone"],
    output:
        folder=directory(PATHS["merge"]),
    params:
        stage=stage_info("merge"),
    log:
        log_path("merge"),
    benchmark:
        bench_path("merge"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/merge.py"
