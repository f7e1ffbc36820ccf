rule evaluate:
    """Accuracy and MS-Score (units, sub-units, random-partition control) on the evaluation split."""
    input:
        backbone=upstream("evaluate", "backbone"),
        merge=upstream("evaluate", "merge"),
        cache=upstream("evaluate", "cache"),  # the probe instances: which features are live (not in the id)
    output:
        folder=directory("results/evaluate/{id}"),
    params:
        stage=stage_info("evaluate"),
    log:
        log_path("evaluate"),
    benchmark:
        bench_path("evaluate"),
    priority: PRIORITY
    threads: FORWARD_THREADS
    resources:
        mem_mb=evaluate_mem_mb,
        **forward_gpu(config["evaluate"]["batch_size"]),
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/evaluate.py"
