rule report:
    """summary.json and report.html of the run (content-addressed)."""
    input:
        verify=PATHS["verify"],
        evaluate=PATHS["evaluate"],
        merge=PATHS["merge"],
    output:
        folder=directory(PATHS["report"]),
    params:
        stage=stage_info("report"),
        artifacts={s: p for s, p in PATHS.items() if s != "report"},
    log:
        log_path("report"),
    benchmark:
        bench_path("report"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/report.py"

