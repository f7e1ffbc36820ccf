"""Housekeeping CLI on a real (fake-content) results tree: what it lists, keeps and removes."""
import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO

from elude.pipeline.artifacts import remember_run
from elude.pipeline.config import merge_config, validate_config
from elude.pipeline.plan import artifact_ids

# sub-folders of sharded artifacts, as the workflow writes them
SUBFOLDERS = {"cache": ["shard-0000", "shard-0001"], "topk": ["part-0000", "part-0001", "merged"],
              "cluster": ["shard-0000", "shard-0001"], "surgery": ["shard-0000", "shard-0001"]}
ONE = {"run_name": "one", "cluster": {"min_cluster_size": 20}}
TWO = {"run_name": "two", "cluster": {"min_cluster_size": 30}}
THREE = {"cache": {"dtype": "float32"}}  # only ever started: a cache .partial, nothing else


def ids(base: dict, over: dict) -> dict[str, dict]:
    return artifact_ids(validate_config(merge_config(base, over)))


def write_artifact(results: Path, stage: str, art: dict, mtime: float) -> None:
    manifest = {"stage": stage, "id": art["id"], "params": art["params"], "inputs": art["inputs"],
                "wall_seconds": 1.0, "checksum": "0" * 64}
    folder = results / stage / art["id"]
    shards = [folder / sub for sub in SUBFOLDERS.get(stage, [""])]
    for d in shards:
        d.mkdir(parents=True)
        (d / "data.bin").write_bytes(b"x" * 1000)
        (d / "manifest.json").write_text(json.dumps(manifest))
        os.utime(d / "manifest.json", (mtime, mtime))
    suffixes = [f"-{sub}" for sub in SUBFOLDERS[stage]] if stage in SUBFOLDERS else [""]
    for sub, ext in (("logs", "log"), ("benchmarks", "tsv")):
        (results / sub / stage).mkdir(parents=True, exist_ok=True)
        for suffix in suffixes:
            (results / sub / stage / f"{art['id']}{suffix}.{ext}").write_text("done\n")


@pytest.fixture
def tree(tmp_path):
    """Two configs' artifacts (backbone, cache, topk shared), work in progress, logs and a published run."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))  # a copy: others may edit the repo's
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(merge_config(base, ONE)))  # whole, as a --configfile is
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(merge_config(base, TWO)))
    one, two, three = ids(base, ONE), ids(base, TWO), ids(base, THREE)
    results = tmp_path / "results"
    t0 = 1_700_000_000.0
    for i, stage in enumerate(one):
        write_artifact(results, stage, one[stage], t0 + i * 100)
    for i, stage in enumerate(two):
        if two[stage]["id"] != one[stage]["id"]:
            write_artifact(results, stage, two[stage], t0 + 10_000 + i * 100)
    # Work in progress: a kept id's (survives), an unreferenced id's with its log, a shard inside config 2's.
    (results / "cache" / one["cache"]["id"] / ".shard-0002.partial").mkdir()
    (results / "cache" / three["cache"]["id"] / ".shard-0000.partial" / "q.zarr").mkdir(parents=True)
    (results / "cache" / three["cache"]["id"] / ".shard-0000.partial" / "q.zarr" / "0").write_bytes(b"y" * 500)
    (results / "logs" / "cache" / f"{three['cache']['id']}-shard-0000.log").write_text("killed\n")
    (results / "merge" / f".{two['merge']['id']}.tmp-4242").mkdir()
    (results / "cluster" / two["cluster"]["id"] / ".shard-0002.partial").mkdir()
    (results / "runs" / "one").mkdir(parents=True)
    (results / "runs" / "one" / "report.html").write_text("<html></html>")
    (results / "README.md").write_text("outputs\n")
    return {"root": tmp_path, "results": results, "one": one, "two": two, "three": three}


def housekeeping(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elude.housekeeping", "--base", "base.yaml", *args],
                          cwd=root, capture_output=True, text=True)


def listing(results: Path) -> set[str]:
    return {str(p.relative_to(results)) for p in results.rglob("*")}


def rows(stdout: str) -> list[list[str]]:
    """Table rows: stage, id, status, size, last use, params."""
    return [re.split(r"\s{2,}", line.strip(), maxsplit=5) for line in stdout.splitlines()
            if re.match(r"^[a-z]+\s+[0-9a-f]{12}\s", line)]


def test_dry_run_lists_everything_and_deletes_nothing(tree):
    before = listing(tree["results"])
    r = housekeeping(tree["root"])  # no --keep: the base config alone is kept
    assert r.returncode == 0, r.stderr
    assert listing(tree["results"]) == before
    assert "--delete" in r.stdout and "nothing removed" in r.stdout.lower()
    table = rows(r.stdout)
    listed = {(row[0], row[1]) for row in table}
    for cfg in ("one", "two"):
        assert {(s, a["id"]) for s, a in tree[cfg].items()} <= listed
    status = {(row[0], row[1], row[2]) for row in table}
    one, two, three = tree["one"], tree["two"], tree["three"]
    assert ("backbone", one["backbone"]["id"], "kept") in status  # same as the base config's
    assert ("cluster", one["cluster"]["id"], "unreferenced") in status
    assert ("cluster", two["cluster"]["id"], "incomplete") in status  # holds a .shard-0002.partial
    assert ("cache", three["cache"]["id"], "incomplete") in status
    assert ("cache", one["cache"]["id"], "kept (incomplete)") in status
    assert ("merge", two["merge"]["id"], "incomplete") in status  # the .tmp-4242 sibling
    # DAG order, and last use of the backbone = its consumer's (the cache) manifest time.
    stages = [row[0] for row in table]
    assert stages == sorted(stages, key=list(one).index)
    backbone = next(row for row in table if row[0] == "backbone")
    assert backbone[4] == datetime.fromtimestamp(1_700_000_100.0).isoformat(timespec="seconds")
    assert backbone[5].startswith('{"data":') and len(backbone[5]) <= 60


def test_keeping_both_configs_keeps_all_their_artifacts(tree):
    before = listing(tree["results"])
    r = housekeeping(tree["root"], "--keep", "one.yaml", "two.yaml", "--delete")
    assert r.returncode == 0, r.stderr
    assert "unreferenced" not in {row[2] for row in rows(r.stdout)}
    # Only the never-referenced cache work in progress and its log go.
    three = tree["three"]["cache"]["id"]
    gone = {p for p in before if p.startswith(f"cache/{three}") or p == f"logs/cache/{three}-shard-0000.log"}
    assert len(gone) == 5  # the folder, .shard-0000.partial, q.zarr, its chunk, and the log
    assert listing(tree["results"]) == before - gone


def test_delete_removes_exactly_the_unreferenced(tree):
    results, one, two = tree["results"], tree["one"], tree["two"]
    before = listing(results)
    r = housekeeping(tree["root"], "--keep", "one.yaml", "--delete")
    assert r.returncode == 0, r.stderr
    after = listing(results)
    unique = [s for s in two if two[s]["id"] != one[s]["id"]]
    assert unique == ["cluster", "surgery", "merge", "verify", "evaluate", "report", "labels"]
    for stage in unique:
        i = two[stage]["id"]
        assert not (results / stage / i).exists()
        assert not any(p.startswith((f"logs/{stage}/{i}", f"benchmarks/{stage}/{i}")) for p in after)
    assert not (results / "merge" / f".{two['merge']['id']}.tmp-4242").exists()
    assert not (results / "cache" / tree["three"]["cache"]["id"]).exists()
    for stage, a in one.items():  # config 1, shared ones included, with logs, untouched
        assert {p for p in before if f"/{a['id']}" in "/" + p} <= after
    assert (results / "cache" / one["cache"]["id"] / ".shard-0002.partial").is_dir()
    assert (results / "runs" / "one" / "report.html").is_file() and (results / "README.md").is_file()
    assert "Removed" in r.stdout
    # Nothing left to remove.
    again = housekeeping(tree["root"], "--keep", "one.yaml")
    assert {row[2] for row in rows(again.stdout)} == {"kept", "kept (incomplete)"}


def test_every_run_started_here_is_kept_until_it_is_forgotten(tree):
    """A run started on the results folder is remembered with its resolved config (as the workflow's onstart
    does, whatever --configfile it came from): --delete without any --keep keeps its artifacts, and once
    the run is forgotten removes those no kept config shares, and its record."""
    results, one, two = tree["results"], tree["one"], tree["two"]
    base = yaml.safe_load((tree["root"] / "base.yaml").read_text())
    record = remember_run(results, validate_config(merge_config(base, TWO)))
    assert record.parent == results / ".runs" and record.name.startswith("two-")
    assert remember_run(results, validate_config(merge_config(base, TWO))) == record  # started again: one record
    before = listing(results)
    r = housekeeping(tree["root"], "--delete")  # kept: the base config and the run started here
    assert r.returncode == 0, r.stderr
    assert f"1 run(s) started here: {record.stem}" in r.stdout
    after = listing(results)
    for a in two.values():  # run two's artifacts, logs and work in progress included, survive
        assert {p for p in before if f"/{a['id']}" in "/" + p} <= after
    assert not (results / "cluster" / one["cluster"]["id"]).exists()  # config one was never started here
    r = housekeeping(tree["root"], "--forget", "two", "--delete")
    assert r.returncode == 0, r.stderr
    assert f"forgot {record.stem}" in r.stdout and not record.exists()
    assert not (results / "cluster" / two["cluster"]["id"]).exists()
    assert (results / "backbone" / two["backbone"]["id"]).is_dir()  # shared with the base config


def test_an_unknown_forget_or_an_unreadable_record_stops_delete(tree):
    results = tree["results"]
    before = listing(results)
    r = housekeeping(tree["root"], "--forget", "nobody", "--delete")
    assert r.returncode == 2 and "--forget nobody: no run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (results / ".runs").mkdir()
    (results / ".runs" / "broken-0123456789ab.json").write_text("{not json")
    r = housekeeping(tree["root"], "--delete")
    assert r.returncode == 2 and "--forget broken-0123456789ab" in r.stderr, r.stderr
    assert listing(results) == before | {".runs", ".runs/broken-0123456789ab.json"}


@pytest.mark.parametrize("content", [None, "cluster: {min_cluster_size: 'many'}\n", "nope: 1\n", "[1, 2\n"])
def test_bad_keep_config_is_a_one_line_error(tree, content):
    if content is not None:
        (tree["root"] / "bad.yaml").write_text(content)
    before = listing(tree["results"])
    r = housekeeping(tree["root"], "--keep", "bad.yaml", "--delete")
    assert r.returncode == 2
    assert "bad.yaml" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert listing(tree["results"]) == before


def test_verify_names_damaged_files_and_the_rebuild_restores_the_same_bytes(tiny_run, tmp_path):
    """A flipped byte in a zarr chunk, a truncated safetensors file and a missing file: --verify names each
    (exit 1) with the rebuild; the rebuild by targets gives the manifests' bytes again (exit 0)."""
    import shutil

    from fault_injection import damage_artifacts
    from workflow_helpers import ids_for, snakemake

    work = tmp_path / "work"
    shutil.copytree(tiny_run[0], work, symlinks=True)
    results, a = work / "results", ids_for(tiny_run[1])
    assert housekeeping(work, "--verify").returncode == 0
    chunk, _, _ = damage_artifacts(results, a)  # a flipped zarr byte, a truncated layer, a deleted file
    r = housekeeping(work, "--verify")
    assert r.returncode == 1
    damaged = re.findall(r"^DAMAGED (\w+) ([0-9a-f]{12}): (\S+)\n((?:    .*\n)+)", r.stdout, flags=re.M)
    assert {(s, i) for s, i, *_ in damaged} == {("cache", a["cache"]), ("merge", a["merge"]), ("evaluate", a["evaluate"])}
    problems = {s: p for s, _, _, p in damaged}
    assert f"{chunk.relative_to(results / 'cache' / a['cache'] / 'shard-0001')}: changed" in problems["cache"]
    assert "layer.safetensors: changed" in problems["merge"] and "tables.safetensors: missing" in problems["evaluate"]
    # a job made from the merge refuses to compute: its inputs, and theirs up to the cache, are checked first
    from elude.pipeline.housekeeping import check_inputs

    with pytest.raises(RuntimeError, match=r"(?s)merge/.*layer.safetensors: changed.*shard-0001: .*: changed"):
        check_inputs(results, {"merge": a["merge"]})
    check_inputs(results, {"backbone": a["backbone"]})  # intact upstream: passes
    targets = [f for _, _, f, _ in damaged]
    assert f"rm -rf {' '.join(sorted(targets))}" in r.stdout
    want = json.loads((results / "merge" / a["merge"] / "manifest.json").read_text())["checksum"]
    for f in targets:  # relative to the run's directory, where the command ran
        shutil.rmtree(work / f)
    snakemake(work, tiny_run[1], *targets)
    assert housekeeping(work, "--verify").returncode == 0
    assert json.loads((results / "merge" / a["merge"] / "manifest.json").read_text())["checksum"] == want
