# The first token seed's studies: Table 4 (dictionary structure over repeated runs, Section B.3) and
# Table 5 (inference cost, Section B.4). Ids and inputs come from elude.pipeline.plan.study_artifacts (REG); the
# repeated ELUDe runs are ordinary cluster/surgery/merge artifacts, the baselines' other init seeds
# ordinary baseline_train artifacts.


rule dictionary:
    """Stability, effective rank and coherence of ELUDe and each baseline family (Table 4)."""
    input:
        merges=lambda w: dictionary_inputs(w)[0],
        baselines=lambda w: [d for ds in dictionary_inputs(w)[1].values() for d in ds],
    output:
        folder=directory("results/dictionary/{id}"),
    params:
        stage=stage_info("dictionary"),
        families=lambda w: dictionary_inputs(w)[1],
    log:
        log_path("dictionary"),
    benchmark:
        bench_path("dictionary"),
    priority: PRIORITY
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/baselines.yaml"
    script:
        "../workflow_scripts/dictionary.py"


rule efficiency:
    """ms/batch and peak memory of the backbone, ELUDe dense and lazy, and each selected baseline (Table 5)."""
    input:
        backbone=lambda w: path_of("backbone", REG["efficiency"][w.id]["inputs"]["backbone"]),
        merge=lambda w: path_of("merge", REG["efficiency"][w.id]["inputs"]["merge"]),
        baselines=lambda w: list(efficiency_baselines(w).values()),
    output:
        folder=directory("results/efficiency/{id}"),
    params:
        stage=stage_info("efficiency"),
        families=efficiency_baselines,
    log:
        log_path("efficiency"),
    benchmark:
        bench_path("efficiency"),
    priority: PRIORITY
    threads: 8  # local runs scale it down to every core: the job times alone, undisturbed by others
    resources:
        mem_mb=8000,
        **gpu_resources(FORWARD_GPUS),  # Table 5's times and peak memory: alone on the GPU
        runtime=60,
    conda:
        "../envs/baselines.yaml"
    script:
        "../workflow_scripts/efficiency.py"


rule ablation:
    """MS-Score of each clustering (or surgery) variant and its random control, mean ± std over token seeds (Table 7)."""
    input:
        lambda w: [d for kind in ("evaluate", "verify") for ds in ablation_inputs(w, kind).values() for d in ds.values()],
    output:
        folder=directory("results/ablation/{id}"),
    params:
        stage=stage_info("ablation"),
        evaluations=ablation_inputs,
        verifications=lambda w: ablation_inputs(w, "verify"),
    log:
        log_path("ablation"),
    benchmark:
        bench_path("ablation"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/ablation.py"


rule ef_sweep:
    """Table 6's expansion-factor axis: per target EF, ELUDe matched to it and each baseline family at it,
    mean ± std over token seeds (Figure 2's points)."""
    input:
        lambda w: [d for ds in ef_sweep_inputs(w).values() for d in ds.values()],
    output:
        folder=directory("results/ef_sweep/{id}"),
    params:
        stage=stage_info("ef_sweep"),
        dirs=ef_sweep_inputs,
    log:
        log_path("ef_sweep"),
    benchmark:
        bench_path("ef_sweep"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/ef_sweep.py"
