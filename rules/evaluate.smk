rule evaluate:
    """Accuracy and MS-Score (units, sub-units, random-partition control) on the evaluation split."""
    input:
        backbone=PATHS["backbone"],
        merge=PATHS["merge"],
    output:
        folder=directory(PATHS["evaluate"]),
    params:
        stage=stage_info("evaluate"),
    log:
        log_path("evaluate"),
    benchmark:
        bench_path("evaluate"),
    threads: 2
    resources:
        mem_mb=4000,
        gpu=FORWARD_GPUS,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/evaluate.py"
