rule backbone:
    """Build the model (demo: train it once) and check the target layer; writes weights, layer.json and
    the native preprocessing."""
    output:
        folder=directory("results/backbone/{id}"),
    params:
        stage=stage_info("backbone"),
    log:
        log_path("backbone"),
    benchmark:
        bench_path("backbone"),
    priority: PRIORITY
    threads: 2
    resources:
        mem_mb=4000,
        **gpu_resources(BACKBONE_GPUS, lambda w, input: resources.CUDA_PROCESS_MB),  # the demo: a small model
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/backbone.py"
