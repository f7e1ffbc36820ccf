rule verify:
    """Lossless check on the evaluation split; fails the run if outputs or predictions change."""
    input:
        backbone=upstream("verify", "backbone"),
        merge=upstream("verify", "merge"),
    output:
        folder=directory("results/verify/{id}"),
    params:
        stage=stage_info("verify"),
    log:
        log_path("verify"),
    benchmark:
        bench_path("verify"),
    priority: PRIORITY
    threads: FORWARD_THREADS
    resources:
        mem_mb=4000,
        **forward_gpu(config["verify"]["batch_size"]),
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/verify.py"
