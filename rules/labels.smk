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
        **forward_gpu(config["evaluate"]["batch_size"]),
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/labels.py"


rule explanations:
    """Text runs: an LLM's explanation of each unit and sub-unit from its top texts, and its detection score."""
    input:
        backbone=upstream("explanations", "backbone"),
        evaluate=upstream("explanations", "evaluate"),
        baselines=lambda w: list(explained_baselines(w.id).values()),
    output:
        folder=directory("results/explanations/{id}"),
    params:
        stage=stage_info("explanations"),
        baselines=lambda w: explained_baselines(w.id),
    log:
        log_path("explanations"),
    benchmark:
        bench_path("explanations"),
    priority: PRIORITY
    threads: FORWARD_THREADS
    resources:
        mem_mb=EXPLAIN_MEM_MB,
        **gpu_resources(FORWARD_GPUS),  # an LLM takes the whole GPU
        runtime=240,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/explanations.py"
