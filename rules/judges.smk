# LLM Rank (Section B.1): per token seed the judged unit pairs and their grids, one job per judge and token
# seed (a GPU job with backend vllm), and one rank over every seed and judge (Table 3). Ids and inputs come
# from elude.pipeline.plan.judge_artifacts (REG).


rule grids:
    """The presentations of one token dataset and a 3x3 top-image grid (PNG) of every unit they show."""
    input:
        evaluate=lambda w: path_of("evaluate", REG["grids"][w.id]["inputs"]["evaluate"]),
        backbone=lambda w: path_of("backbone", REG["grids"][w.id]["inputs"]["backbone"]),
        baselines=lambda w: list(grids_baselines(w).values()),
    output:
        folder=directory("results/grids/{id}"),
    params:
        stage=stage_info("grids"),
        families=grids_baselines,
    log:
        log_path("grids"),
    benchmark:
        bench_path("grids"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/grids.py"


rule judge:
    """One judge answers every presentation of one token dataset; resumes after a kill (judgments stored as made)."""
    input:
        grids=lambda w: path_of("grids", REG["judge"][w.id]["inputs"]["grids"]),
    output:
        folder=directory("results/judge/{id}"),
    params:
        stage=stage_info("judge"),
    log:
        log_path("judge"),
    benchmark:
        bench_path("judge"),
    priority: PRIORITY
    threads: JUDGE_THREADS
    resources:
        mem_mb=JUDGE_MEM_MB,
        **gpu_resources(JUDGE_GPUS),  # an LLM takes the whole GPU
        runtime=720,
    conda:
        JUDGE_ENV
    script:
        "../workflow_scripts/judge.py"


rule rank:
    """Consensus win rates pooled over token seeds, bootstrap intervals, LLM Rank, per-judge agreement (Table 3)."""
    input:
        grids=lambda w: list(rank_inputs(w)[0].values()),
        judges=lambda w: [d for ds in rank_inputs(w)[1].values() for d in ds.values()],
    output:
        folder=directory("results/rank/{id}"),
    params:
        stage=stage_info("rank"),
        grids=lambda w: rank_inputs(w)[0],
        judges=lambda w: rank_inputs(w)[1],
    log:
        log_path("rank"),
    benchmark:
        bench_path("rank"),
    priority: PRIORITY
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/rank.py"
