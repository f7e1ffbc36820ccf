# Concept labels (CLIP-Dissect, Sec. C.3) and concept groups across neurons (Sec. 4.2) of each token seed's
# disentangled layer, when labels.model is set. Ids and inputs: elude.pipeline.plan.labels_artifact (REG).


rule labels:
    """A label (soft-WPMI over the concept set) per unit and sub-unit, and the sub-units' concept groups."""
    input:
        backbone=upstream("labels", "backbone"),
        merge=upstream("labels", "merge"),
        evaluate=upstream("labels", "evaluate"),
    output:
        folder=directory("results/labels/{id}"),
    params:
        stage=stage_info("labels"),
    log:
        log_path("labels"),
    benchmark:
        bench_path("labels"),
    priority: PRIORITY
    threads: 2
    resources:
        mem_mb=labels_mem_mb,
        gpu=FORWARD_GPUS,
        gpu_mb=forward_gpu_mb(config["evaluate"]["batch_size"]),
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/labels.py"
