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


localrules:
    report_publish,


rule report_publish:
    """Publish the report under the run's name: results/runs/<run_name>/ (an alias, not an artifact)."""
    input:
        report=PATHS["report"],
    output:
        summary=f"{RUN_DIR}/summary.json",
        html=f"{RUN_DIR}/report.html",
    log:
        f"results/logs/report/{IDS['report']}-publish.log",
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/report_publish.py"
