"""Faults tried on purpose (docs/reliability.md; bench/faults.py prints the same as a table): the whole
run killed at seeded moments (SIGKILL, SIGTERM), a full disk, two runs at once on one results folder,
messy data, and bad inputs, each with the message a user gets."""
import json
import signal
import sys

import numpy as np
import pytest
import torch
import yaml
from fault_injection import (
    concurrent_runs,
    disk_full,
    half_built,
    in_progress,
    kill_chain,
    merged_sha256,
    mount_tmpfs,
    resumed,
)
from PIL import Image
from workflow_helpers import (
    REPO,
    SNAKEMAKE,
    TINY,
    assert_same_artifacts,
    executed_rules,
    ids_for,
    snakemake,
    snakemake_cmd,
    write_config,
)

from elude.demo.vit import demo_model_spec
from elude.models import backbones
from elude.models.data import check_data, open_dataset
from elude.pipeline.config import ConfigError, merge_config, validate_config
from elude.pipeline.housekeeping import verify
from elude.pipeline.plan import artifact_ids
from elude.pipeline.stages import backbone
from elude.pipeline.stages.job import Stage


@pytest.fixture(scope="module")
def reference(tiny_run):
    """The merged checkpoint's sha256 of an uninterrupted run of the tiny config."""
    work, cfg, _ = tiny_run
    return merged_sha256(work, cfg)


def landed(kills: list[dict]) -> list[dict]:
    """The kills that hit a running chain: at least 3 of the 5 seeded moments. The restarts resume what the
    killed runs kept, so on a fast machine a late restart can finish before its moment: that one is not a
    kill, and the chain stops there (seen: the 4th start of the SIGTERM chain finished in 5.9 s)."""
    hit = [k for k in kills if not k.get("finished_first")]  # (the chain stops at the first run that finished)
    assert len(hit) >= 3, kills
    return hit


@pytest.mark.slow
def test_sigkill_of_the_main_snakemake_at_five_seeded_moments(tmp_path, reference, tiny_run):
    """The main process alone is killed; its running jobs go on as orphans, and the next start waits for
    them on the artifacts' build locks (or reuses what they finished). Recovery: --unlock, the same command.
    The finished run, made from nothing in five pieces, equals the uninterrupted tiny run byte for byte in
    every artifact: the same config gives the same bytes."""
    cfg = write_config(tmp_path / "tiny.yaml")
    out = kill_chain(tmp_path, cfg, signal.SIGKILL, n_kills=5, seed=1, span=(5, 16))
    assert out["final"].returncode == 0, out["final"].stderr[-3000:]
    kills = landed(out["kills"])
    assert all(k["exit"] == -signal.SIGKILL for k in kills)
    assert all(k["unlock"] for k in out["kills"][1:])  # SIGKILL leaves the lock behind
    # ... and so does the last kill, unless the last restart finished before its moment (then nothing is left)
    assert out["final_unlock"] != bool(out["kills"][-1].get("finished_first"))
    assert out["sha256"] == reference
    assert_same_artifacts(tiny_run[0], tmp_path, cfg)
    assert not in_progress(tmp_path / "results") and not half_built(tmp_path / "results")
    assert not verify(tmp_path / "results")


@pytest.mark.slow
def test_sigterm_of_the_whole_run_stops_jobs_cleanly_and_their_progress_is_reused(tmp_path, reference):
    """A SLURM preemption or Ctrl-C signals Snakemake and its jobs: each job stops through its failure path
    (logged, temporary folders removed, exit 143), the kept progress is exactly what the next run resumes."""
    cfg = write_config(tmp_path / "tiny.yaml")
    # each kill waits, after its seeded moment, for a job under way (not Snakemake's start-up or a gap between
    # jobs): on CI's machine all five seeded moments once fell where no job had its handler yet
    out = kill_chain(tmp_path, cfg, signal.SIGTERM, n_kills=5, seed=2, span=(2, 8), whole_group=True)
    assert out["final"].returncode == 0, out["final"].stderr[-3000:]
    assert out["sha256"] == reference
    kills = landed(out["kills"])
    assert all(k["exit"] != 0 for k in kills)
    assert all(".tmp-" not in p for k in kills for p in k["in_progress"])  # only resumable progress is kept
    # the jobs running at a kill logged their stop (a kill that found work in progress stopped a job; a job
    # caught after its stage returned, in the interpreter's exit, has nothing left to stop)
    assert sum(bool(k["stopped"]) for k in kills) >= 2 and all(k["stopped"] for k in kills if k["in_progress"])
    # every finished shard resumed exactly the progress kept at the last kill that found its work in progress
    kept: dict[str, int] = {}
    for k in kills:
        kept.update(k["progress"])
    took_over = resumed(tmp_path / "results")
    assert {s: n for s, n in took_over.items() if n} == {s: n for s, n in kept.items() if n}
    assert not in_progress(tmp_path / "results") and not verify(tmp_path / "results")


@pytest.mark.slow
def test_disk_full_fails_clearly_publishes_nothing_and_the_rerun_matches(tmp_path, reference):
    mnt = tmp_path / "mnt"
    if why := mount_tmpfs(mnt, 48):
        pytest.skip(why)
    try:
        cfg = write_config(tmp_path / "tiny.yaml")
        out = disk_full(tmp_path, cfg, mnt)
    finally:
        import subprocess

        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert out["full"].returncode != 0
    assert "the disk is full" in out["full"].stderr and "run the same command again" in out["full"].stderr
    assert out["half_built"] == [] and out["damaged"] == []  # the backbone built before is intact
    assert out["again"].returncode == 0, out["again"].stderr[-3000:]
    assert out["sha256"] == reference


def digit_folders(root, n_per_class: int, corrupt: int):
    """scikit-learn's digits as PNG files in <root>/<digit>/, plus ``corrupt`` files that do not decode."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for label in range(10):
        (root / str(label)).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(d.target == label)[:n_per_class]):
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(root / str(label) / f"{i}.png")
    for j in range(corrupt):
        (root / str(j) / f"broken-{j}.png").write_bytes(b"\x89PNG but cut short")
    return root


@pytest.mark.slow
def test_two_runs_at_once_on_messy_images_share_artifacts_agree_and_a_second_invocation_is_refused(tmp_path):
    """Two run names, one results folder, started together: shared artifacts are built once (the other run
    waits on the build lock and reuses them), both finish, and agree. The image folders hold files that do not
    decode (skipped and counted) and the top-k exceeds the cached instances (clamped and recorded)."""
    probe, evals = digit_folders(tmp_path / "probe", 8, corrupt=2), digit_folders(tmp_path / "eval", 4, corrupt=1)
    messy = {"data": {"kind": "imagefolder", "probe_dir": str(probe), "eval_dir": str(evals), "on_bad_image": "skip"},
             "topk": {"k": 5000}, "cache": {"shards": 1}, "evaluate": {"ms_top_k": 10}}
    cfg_a = write_config(tmp_path / "a.yaml", messy)
    cfg_b = write_config(tmp_path / "b.yaml", messy, {"run_name": "tiny-b"})
    out = concurrent_runs(tmp_path, cfg_a, cfg_b)
    assert out["returncodes"] == [0, 0], out["stderr"]
    assert out["reused"] >= 1  # (usually after waiting on the build lock: how often depends on timing)
    assert out["sha256"][0] == out["sha256"][1] is not None
    summaries = [json.loads((tmp_path / w / "results/runs" / n / "summary.json").read_text())
                 for w, n in (("a", "tiny"), ("b", "tiny-b"))]
    assert summaries[0]["lossless"] == summaries[1]["lossless"] and summaries[0]["lossless"]["lossless"]
    faults = summaries[0]["data_faults"]
    assert sorted(p.rsplit("/", 1)[1] for p in faults["probe_images_skipped"]) == ["broken-0.png", "broken-1.png"]
    assert [p.rsplit("/", 1)[1] for p in faults["eval_images_skipped"]] == ["broken-0.png"]
    assert faults["k_requested"] == 5000 and faults["k"] == 80 * 17  # every cached instance
    html = (tmp_path / "a/results/runs/tiny/report.html").read_text()
    assert "probe images skipped" in html and "5000 → 1360" in html
    from elude.method.layers import DisentangledLayer

    merged = DisentangledLayer.load(next((tmp_path / "shared-results/merge").glob("[0-9a-f]*")))
    assert torch.isfinite(merged.weight).all() and torch.isfinite(merged.bias).all()
    second = out["second_invocation"]  # the same run again in its directory, while it ran
    assert second.returncode != 0
    assert "run 'tiny' is running in this directory" in second.stderr and "Do not --unlock" in second.stderr


def test_build_lock_waits_for_its_holder_and_degrades_to_a_warning_without_flock(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl
    import logging
    import subprocess
    import sys
    import time

    from elude.pipeline.artifacts import build_lock

    results = tmp_path / "results"
    final = results / "merge/0123456789ab"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from elude.pipeline.artifacts import build_lock\n"
                               f"with build_lock(Path({str(final)!r}), Path({str(results)!r})):\n"
                               "    print('held', flush=True); time.sleep(1.5)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.time()
    with build_lock(final, results) as waited_for:
        assert waited_for == holder.pid and time.time() - t0 > 0.5  # it waited for the holder to let go
    holder.wait(timeout=30)
    assert (results / ".locks/merge/0123456789ab.lock").read_text() == str(__import__("os").getpid())

    def no_flock(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with caplog.at_level(logging.WARNING), build_lock(final, results) as waited_for:
        assert waited_for is None
    assert "no build lock on" in caplog.text and "must not run at the same time" in caplog.text


def test_sigusr1_writes_a_running_jobs_stacks_to_its_log_and_the_job_goes_on(tmp_path):
    """Where a job that seems stuck is (a hang on a cluster node, in CI): ``kill -USR1`` writes every thread's
    stack to the job's log, and the job finishes as if nothing had happened."""
    import subprocess

    log, out = tmp_path / "job.log", tmp_path / "results/cluster/0123456789ab"
    job = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                            "from elude.pipeline.stages import run_logged\n"
                            "def waiting_for_the_signal(stage):\n"
                            "    print('working', flush=True); time.sleep(3)\n"
                            "def side_thread_sleeping():\n"
                            "    time.sleep(3)\n"
                            "threading.Thread(target=side_thread_sleeping).start()\n"
                            "run_logged({'name': 'cluster', 'id': '0123456789ab', 'inputs': {}, 'params': {}}, "
                            f"{str(log)!r}, 1, {str(out)!r}, waiting_for_the_signal)\n"
                            "print('finished', flush=True)"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "working"
    job.send_signal(signal.SIGUSR1)
    rest = job.communicate(timeout=60)[0]
    assert job.returncode == 0 and rest.strip() == "finished"  # the signal did not stop it
    text = log.read_text()
    assert "waiting_for_the_signal" in text and "side_thread_sleeping" in text  # every thread's stack
    assert text.index("start-up") < text.index("waiting_for_the_signal")  # in the job's own log


def test_an_artifact_another_process_finished_after_the_dag_was_built_is_kept_and_reused(tiny_run, tmp_path, reference):
    """The race two runs on one results folder can hit, made deterministic: while this run clusters,
    "another process" finishes the surgery shards it planned to build. Snakemake would remove them before
    the jobs run (pulling them from under the other run's readers); they are kept, and the jobs reuse them."""
    import shutil
    import subprocess
    import time

    work, cfg, _ = tiny_run
    ids = ids_for(cfg)
    shutil.copytree(work / "results", tmp_path / "results", symlinks=True)
    results = tmp_path / "results"
    surgery = results / "surgery" / ids["surgery"]
    finished_elsewhere = tmp_path / "elsewhere"
    shutil.move(surgery, finished_elsewhere)
    for stage in ("cluster", "merge"):  # every surgery shard waits on a cluster job
        shutil.rmtree(results / stage / ids[stage])
    proc = subprocess.Popen(snakemake_cmd(tmp_path, cfg, f"results/merge/{ids['merge']}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / ".snakemake/elude-run.json").is_file() and proc.poll() is None:
        time.sleep(0.05)  # written once the DAG is built, before the first job runs
    surgery.mkdir(parents=True, exist_ok=True)
    for shard in sorted(finished_elsewhere.iterdir()):
        shard.rename(surgery / shard.name)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert executed_rules(err).count("surgery_shard") == 3
    assert err.count("finished by another process since the DAG was built") == 3
    logs = [(results / "logs/surgery" / f"{ids['surgery']}-shard-{s:04d}.log").read_text() for s in range(3)]
    assert all("was finished by another process; reusing it" in log for log in logs)
    assert merged_sha256(tmp_path, cfg) == reference


@pytest.mark.slow
def test_housekeeping_during_and_after_a_configfile_run_keeps_all_of_its_work(tmp_path, reference):
    """A run of the user's own --configfile, and `python -m elude.housekeeping --delete` run from the same
    folder while the run works and after it finished, without any --keep (the repository's config.yaml is
    the base config, which shares nothing with this run): the run remembered itself when it started, so none
    of its artifacts, finished or in progress, is removed, and it ends with the reference checkpoint. A
    leftover of a config never started here goes (the delete is real)."""
    import subprocess
    import time

    cfg = write_config(tmp_path / "mine.yaml")
    ids = ids_for(cfg)
    stray = tmp_path / "results" / "merge" / "0123456789ab"
    stray.mkdir(parents=True)
    (stray / "manifest.json").write_text("{}")
    proc = subprocess.Popen(snakemake_cmd(tmp_path, cfg, f"results/merge/{ids['merge']}"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    topk = tmp_path / "results" / "topk" / ids["topk"] / "merged" / "manifest.json"
    while not topk.is_file() and proc.poll() is None:  # then the clustering and what follows are still to come
        time.sleep(0.1)
    housekeeping = [sys.executable, "-m", "elude.housekeeping", "--delete"]
    during = subprocess.run(housekeeping, cwd=tmp_path, capture_output=True, text=True)
    was_running = proc.poll() is None
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert during.returncode == 0 and was_running, during.stderr
    assert "1 run(s) started here: tiny-" in during.stdout and "Removed 1 artifacts" in during.stdout
    assert not stray.exists()
    assert merged_sha256(tmp_path, cfg) == reference
    before = sorted(p for p in (tmp_path / "results").rglob("*") if ".locks" not in p.parts)
    after = subprocess.run(housekeeping, cwd=tmp_path, capture_output=True, text=True)
    assert after.returncode == 0 and "Removed 0 artifacts" in after.stdout, after.stdout + after.stderr
    assert sorted(p for p in (tmp_path / "results").rglob("*") if ".locks" not in p.parts) == before


PUBLISH_THEN_KILLED = """
include: "{patch}"

rule all:
    input: "results/published", "results/half"

# publishes its folder the way every stage does (manifest last, one rename), then is killed before it exits
rule published:
    output: directory("results/published")
    shell: "mkdir .tmp && echo 1 > .tmp/data && echo done > .tmp/manifest.json && mv .tmp {{output}} && kill -TERM $$"

# killed while writing straight into its output: that folder may be corrupt and must go
rule half:
    output: directory("results/half")
    shell: "mkdir -p {{output}} && echo 1 > {{output}}/data && kill -TERM $$"
"""


def test_a_job_killed_after_it_published_keeps_its_artifact_and_the_next_run_reuses_it(tmp_path):
    """The window a seeded kill only sometimes hits, made certain: a job publishes its artifact complete and
    is then killed by SIGTERM (a preemption, Ctrl-C) before it exits. Snakemake counts the job failed and
    would remove the finished folder "since it might be corrupted", so its work would be redone from
    nothing; rules/concurrent_runs.smk keeps an output that holds a manifest.json, and the next run reuses
    it. An output without one (the job died while writing it) is still removed."""
    import subprocess

    (tmp_path / "Snakefile").write_text(PUBLISH_THEN_KILLED.format(patch=REPO / "rules/concurrent_runs.smk"))
    cmd = [str(SNAKEMAKE), "--snakefile", str(tmp_path / "Snakefile"), "--directory", str(tmp_path), "--cores", "1"]
    first = subprocess.run([*cmd, "--keep-going"], capture_output=True, text=True, timeout=300)
    assert first.returncode != 0 and first.stderr.count("Error in rule") == 2, first.stderr[-3000:]
    assert (tmp_path / "results/published/manifest.json").is_file(), first.stderr[-3000:]
    assert "Keeping results/published: published complete before the job failed" in first.stderr
    assert not (tmp_path / "results/half").exists()
    again = subprocess.run([*cmd, "--dry-run", "results/published"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stderr[-3000:]


# --- bad inputs: each a clear message naming the key or file, before work where possible --------------
BASE = yaml.safe_load((REPO / "config.yaml").read_text())
CONFIG_ERRORS = [
    ({"cluster": {"backend": "gpu"}}, "cluster.backend: 'gpu' is not allowed; allowed values: 'auto'"),
    ({"topk": {"k": 0}}, "topk.k: 0 is out of range; allowed: >= 1"),
    ({"surgery": {"rho_grid": [0.5, 1.5]}}, "surgery.rho_grid.1: 1.5 is out of range; allowed: <= 1"),
    ({"cluster": {"min_cluster_size": -4}}, "cluster.min_cluster_size: -4 is out of range; allowed: >= 2"),
    ({"cache": {"batch_size": "many"}}, "cache.batch_size: 'many' has the wrong type; expected integer"),
    ({"cluster": {"min_cluster_sise": 5}}, "cluster: unknown key(s) min_cluster_sise; allowed keys:"),
    ({"backbone": {"kind": "timm"}}, "backbone.timm: missing required key(s) name"),
    ({"data": {"kind": "images"}}, "data.kind: 'images' is not allowed"),
    ({"data": {"on_bad_image": "ignore"}}, "data.on_bad_image: 'ignore' is not allowed; allowed values: 'fail', 'skip'"),
    ({"data": {"eval_fraction": 1.0}}, "data.eval_fraction: 1.0 is out of range; allowed: < 1"),
    ({"cache": {"token_seed": [1, 2], "tokens_per_image": None}},
     "cache.token_seed is a list of seeds (the default: the paper's 42, 123, 999), but"),
    ({"labels": {"p_start": 0.9, "p_end": 0.95}}, "labels.p_end 0.95 > labels.p_start 0.9"),
    ({"labels": {"concepts": "/no/such/words.txt"}}, "/no/such/words.txt"),
    ({"ablations": {"variants": [{"name": "same", "cluster": {}}]}}, "ablations.variants[0] (same): changes nothing"),
    ({"judges": {"models": ["/a/qwen", "/b/qwen"]}}, "has two judges with the same name"),
]


@pytest.mark.parametrize("override, message", CONFIG_ERRORS, ids=[next(iter(o)) + f"-{i}" for i, (o, _) in
                                                                    enumerate(CONFIG_ERRORS)])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        validate_config(merge_config(BASE, override))
    assert message in str(err.value)


def _imagefolder(tmp_path, probe, evals):
    return {"kind": "imagefolder", "probe_dir": str(probe), "eval_dir": str(evals), "on_bad_image": "fail"}


@pytest.mark.slow
def test_data_errors_before_any_job(tmp_path):
    good = digit_folders(tmp_path / "good", 2, corrupt=0)
    (tmp_path / "empty/0").mkdir(parents=True)
    (tmp_path / "list.txt").write_text("# nothing listed\n")
    cases = [
        (_imagefolder(tmp_path, tmp_path / "missing", good), "data.probe_dir: '" + str(tmp_path / "missing") + "' is not a directory"),
        (_imagefolder(tmp_path, good, tmp_path / "empty"), "data.eval_dir: no images under"),
        ({"kind": "filelist", "probe_list": str(tmp_path / "list.txt"), "eval_list": str(tmp_path / "list.txt"),
          "on_bad_image": "fail"}, "data.probe_list: " + str(tmp_path / "list.txt") + " lists no images"),
        ({"kind": "filelist", "probe_list": str(tmp_path / "none.txt"), "eval_list": "x", "on_bad_image": "fail"},
         "data.probe_list: '" + str(tmp_path / "none.txt") + "' is not a file"),
    ]
    for data, message in cases:
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            check_data(data)
        assert message in str(err.value)
    # through the workflow: the empty evaluation folder stops it while the DAG is built
    proc = snakemake(tmp_path, write_config(tmp_path / "bad.yaml", {"data": _imagefolder(tmp_path, good, tmp_path / "empty")}),
                     check=False)
    assert proc.returncode != 0 and "data.eval_dir: no images under" in proc.stderr
    assert not (tmp_path / "results").exists()


class EmptySplit(torch.utils.data.Dataset):
    def __init__(self, split):
        self.n = 0 if split == "eval" else 4

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.zeros(3)


def empty_eval_split(split, **kwargs):
    return EmptySplit(split)


def test_empty_split_and_unsupported_layer_are_named(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    with pytest.raises(ValueError, match="data.factory.target: 'test_faults:empty_eval_split' returned an empty 'eval' split"):
        open_dataset({"kind": "factory", "factory": {"target": "test_faults:empty_eval_split"}}, "eval")
    # a LayerNorm as the target layer: refused before the demo model is trained, naming the key
    cfg = validate_config(merge_config(merge_config(BASE, TINY), {"backbone": {"layer": "blocks.1.norm2"}}))
    art = artifact_ids(cfg)["backbone"]
    with pytest.raises(TypeError, match=r"backbone.layer: 'blocks.1.norm2' is a LayerNorm; ELUDe disentangles nn.Linear"):
        backbone(Stage("backbone", art["id"], art["params"]), str(tmp_path / "results/backbone" / art["id"]))
    assert not (tmp_path / "results/backbone" / art["id"]).exists()
    with pytest.raises(KeyError, match="layer 'blocks.7.mlp.fc2' is not a module of VisionTransformer; nearest"):
        backbones.get_module(backbones.build_from_spec(demo_model_spec(cfg["backbone"]["demo"]["arch"])),
                             "blocks.7.mlp.fc2")
