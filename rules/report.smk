rule report:
    """summary.json and report.html of one seeded token dataset's run (content-addressed)."""
    input:
        verify=upstream("report", "verify"),
        evaluate=upstream("report", "evaluate"),
        merge=upstream("report", "merge"),
        backbone=upstream("report", "backbone"),
        baselines=lambda w: list(baseline_evals(w.id).values()),
        studies=lambda w: list(study_dirs(w.id).values()),
    output:
        folder=directory("results/report/{id}"),
    params:
        stage=stage_info("report"),
        baselines=lambda w: baseline_evals(w.id),
        studies=lambda w: study_dirs(w.id),
        artifacts=lambda w: {s: f"results/{s}/{up_id('report', w.id, s)}"
                             for s in ("backbone", "cache", "topk", "ef_search", "cluster", "surgery", "merge", "verify",
                                       "evaluate") if s != "ef_search" or searched("report", w.id)},
    log:
        log_path("report"),
    benchmark:
        bench_path("report"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/report.py"


rule aggregate:
    """Mean and std over the seeded token datasets' reports (cache.token_seed given as a list)."""
    input:
        reports=lambda w: [f"results/report/{i}" for i in REG["aggregate"][w.id]["inputs"].values()],
    output:
        folder=directory("results/aggregate/{id}"),
    params:
        stage=stage_info("aggregate"),
    log:
        log_path("aggregate"),
    benchmark:
        bench_path("aggregate"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/aggregate.py"
