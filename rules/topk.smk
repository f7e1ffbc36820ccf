checkpoint topk:
    """Streaming per-unit top-k (eq. 1); a checkpoint because it fixes the number of unit shards."""
    input:
        cache=PATHS["cache"],
        backbone=PATHS["backbone"],
    output:
        folder=directory(PATHS["topk"]),
    params:
        stage=stage_info("topk"),
    log:
        log_path("topk"),
    benchmark:
        bench_path("topk"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/topk.py"
