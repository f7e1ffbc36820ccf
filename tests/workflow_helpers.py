"""Running the real workflow from tests: a tiny config, the executed rules, artifact ids."""
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from elude.pipeline.config import merge_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

# Small and quick, with many small cache chunks and units per shard so that kills land mid-stage.
TINY = {
    "run_name": "tiny",
    "backbone": {"demo": {"arch": {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4},
                          "train": {"epochs": 4}},
                 "layer": "blocks.1.mlp.fc2"},
    "cache": {"batch_size": 2, "chunk_rows": 34, "shards": 2},
    "topk": {"k": 300},
    "cluster": {"min_cluster_size": 15, "min_samples": 4, "units_per_shard": 12},
    "evaluate": {"ms_top_k": 20},
    "baselines": {"families": []},  # tests/test_baselines.py runs them
    "dictionary": {"enabled": False},  # tests/test_studies.py runs Tables 4 and 5
    "efficiency": {"enabled": False},
    "judges": {"models": []},  # tests/test_judges.py runs LLM Rank
    "ablations": {"variants": []},  # tests/test_using.py runs Table 7
    "labels": {"model": None},  # tests/test_using.py runs the labels and concept groups
}


def write_config(path: Path, *overrides: dict) -> Path:
    """A --configfile for the tiny run: the demo (config.yaml) made small by TINY, then ``overrides``. Written
    whole: a --configfile stands on its own (over the schema's defaults, not over config.yaml)."""
    cfg = merge_config(yaml.safe_load((REPO / "config.yaml").read_text()), TINY)
    for o in overrides:
        cfg = merge_config(cfg, o)
    path.write_text(yaml.safe_dump(cfg))
    return path


def ids_for(configfile: Path) -> dict[str, str]:
    """The artifact ids Snakemake computes for ``snakemake --configfile configfile``."""
    from elude.pipeline.config import resolve_config
    from elude.pipeline.plan import artifact_ids

    return {s: a["id"] for s, a in artifact_ids(resolve_config([configfile])).items()}


def snakemake_cmd(workdir: Path, configfile: Path, *extra: str, profile: str = "local") -> list[str]:
    """``extra``: options or targets (first: after --configfile, which takes several values, a target would
    be read as one more config file)."""
    return [str(SNAKEMAKE), *extra, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--profile", str(REPO / "profiles" / profile), "--configfile", str(configfile)]


def snakemake(workdir: Path, configfile: Path, *extra: str, check: bool = True, profile: str = "local",
              timeout: float = 600, on_timeout: Callable[[Path], str] | None = None) -> subprocess.CompletedProcess:
    """A run that outlives ``timeout`` fails the test with the end of its log and ``on_timeout(workdir)``
    (default :func:`running_jobs`): what a hang needs to be understood, since CI keeps nothing else."""
    try:
        proc = subprocess.run(snakemake_cmd(workdir, configfile, *extra, profile=profile), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"snakemake ran past {timeout:.0f} s; its log ends:\n{stderr[-6000:]}\n"
                    f"{(on_timeout or running_jobs)(workdir)}", pytrace=False)
    if check:
        assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` handles signal ``sig`` (its SigCgt mask); raises OSError when it is gone."""
    caught = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (sig - 1) & 1)


def running_jobs(workdir: Path) -> str:
    """Where the jobs of a run in ``workdir`` are: each job script there (Snakemake runs it from
    ``.snakemake/scripts``) that handles SIGUSR1 (a stage under way: elude.pipeline.stages.running) is sent it
    and writes its threads' stacks to its log (srun also handles it, and would pass it on to a job step that
    does not); then the tails of the run's most recently written logs."""
    pids = []
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            if (Path(f"/proc/{pid}/cwd").resolve() == workdir.resolve() and catches(pid, signal.SIGUSR1)
                    and ".snakemake/scripts/" in Path(f"/proc/{pid}/cmdline").read_text()):
                os.kill(pid, signal.SIGUSR1)
                pids.append(pid)
        except (OSError, StopIteration):  # gone, or not ours to read
            continue
    time.sleep(2)
    logs = sorted((workdir / "results" / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-8:]
    return f"stages under way (stacks in their logs): {pids}\n" + "\n".join(
        f"--- {p} ---\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


def executed_rules(output: str) -> list[str]:
    """Names of the jobs a run executed (one entry per job), from Snakemake's log."""
    return re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", output, flags=re.M)


# One run over two token seeds shared by tests/test_baselines.py (Table 2: every baseline job, a family grid
# change) and tests/test_judges.py (LLM Rank over the same methods: backbone, the four families, ELUDe), each
# on its own copy (conftest.py: two_seed_run; copy_run). Two families from overcomplete and the one written
# here that reads another space (tests/test_baselines.py trains every family for real); topk sweeps two grid
# points.
RUN_FAMILIES = ["vanilla", "topk", "archetypal", "transcoder"]
BASELINE_RUN = {"cache": {"tokens_per_image": 6, "token_seed": [1, 2]},
                "baselines": {"families": RUN_FAMILIES, "epochs": 2, "batch_size": 256, "archetypal_points": 256,
                              "grid": {"lr": [0.003], "w_dead": [0.0001], "w_l1": [0.005], "w_sp": [0.001]},
                              # (vanilla: one point, replacing the demo config's two)
                              "family_grid": {"topk": {"lr": [0.003, 0.001]}, "vanilla": {"w_l1": [0.005]}}}}
JUDGES = {"judges": {"models": ["demo:1", "demo:2"], "backend": "transformers", "pairs_per_method_pair": 3,
                     "cell_size": 16, "max_tokens": 2, "batch_size": 4, "bootstrap": 200}}
TWO_SEED_RUN = merge_config(BASELINE_RUN, JUDGES)


def copy_run(run: tuple, dest: Path) -> Path:
    """A copy of a fixture's workdir (results/ and .snakemake/, mtimes kept, so Snakemake finds it up to
    date) in ``dest``, for a test that changes it; returns the copy's config file."""
    import shutil

    work, configfile = run[0], run[1]
    shutil.copytree(work, dest, symlinks=True, dirs_exist_ok=True)
    return dest / configfile.relative_to(work)


def assert_same_artifacts(work_a: Path, work_b: Path, configfile: Path) -> None:
    """Every artifact of ``configfile``'s run has the same content checksum in both working folders (every
    manifest, shards included): the same config gives byte-identical artifacts."""
    import json

    for stage, i in ids_for(configfile).items():
        a, b = work_a / "results" / stage / i, work_b / "results" / stage / i
        manifests = sorted(p.relative_to(a) for p in a.rglob("manifest.json"))
        assert manifests, stage
        for m in manifests:
            assert json.loads((a / m).read_text())["checksum"] == json.loads((b / m).read_text())["checksum"], (stage, m)
