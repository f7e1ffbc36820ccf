# SAE and transcoder baselines (Section E.1): one job per sweep grid point on the first token seed, the
# eq. 9 selection per family, the selected point trained on every other seed, and each family scored by
# ELUDe's own metrics. Ids and inputs come from elude.pipeline.plan.baseline_artifacts (REG).


rule baseline_train:
    """Train one SAE/transcoder (a sweep grid point, or the selected point on a later token seed)."""
    input:
        unpack(baseline_train_inputs),
    output:
        folder=directory("results/baseline_train/{id}"),
    params:
        stage=stage_info("baseline_train"),
    log:
        log_path("baseline_train"),
    benchmark:
        bench_path("baseline_train"),
    threads: BASELINE_THREADS
    resources:
        mem_mb=baseline_train_mem_mb,
        **gpu_resources(FORWARD_GPUS, baseline_train_mem_mb),  # the host's estimate: an upper bound
        runtime=240,
    conda:
        "../envs/baselines.yaml"
    script:
        "../workflow_scripts/baseline_train.py"


rule baseline_select:
    """Eq. 9 over one family's sweep: the selected model and the scored candidates."""
    input:
        train=lambda w: [path_of("baseline_train", i) for i in REG["baseline_select"][w.id]["inputs"].values()],
    output:
        folder=directory("results/baseline_select/{id}"),
    params:
        stage=stage_info("baseline_select"),
    log:
        log_path("baseline_select"),
    benchmark:
        bench_path("baseline_select"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/baselines.yaml"
    script:
        "../workflow_scripts/baseline_select.py"


rule baseline_eval:
    """A selected baseline scored like ELUDe: MS-Score of its features, accuracy and R^2 with its reconstruction."""
    input:
        model=baseline_model,
        cache=baseline_cache,
        backbone=lambda w: path_of("backbone", REG["baseline_eval"][w.id]["inputs"]["backbone"]),
    output:
        folder=directory("results/baseline_eval/{id}"),
    params:
        stage=stage_info("baseline_eval"),
    log:
        log_path("baseline_eval"),
    benchmark:
        bench_path("baseline_eval"),
    threads: 1
    resources:
        mem_mb=baseline_eval_mem_mb,
        **forward_gpu(config["evaluate"]["batch_size"]),
        runtime=30,
    conda:
        "../envs/baselines.yaml"
    script:
        "../workflow_scripts/baseline_eval.py"
