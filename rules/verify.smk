rule verify:
    """Lossless check on the evaluation split; fails the run if outputs or predictions change."""
    input:
        backbone=PATHS["backbone"],
        merge=PATHS["merge"],
    output:
        folder=directory(PATHS["verify"]),
    params:
        stage=stage_info("verify"),
    log:
        log_path("verify"),
    benchmark:
        bench_path("verify"),
    threads: 2
    resources:
        mem_mb=4000,
        gpu=FORWARD_GPUS,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/verify.py"
