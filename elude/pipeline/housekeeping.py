"""List the artifacts under ``results/`` and remove the ones no kept config refers to; or (``--verify``)
check every finished artifact's bytes against its manifest and list the damaged ones.

Usage::

    python -m elude.housekeeping [--results DIR] [--base CONFIG] [--keep CONFIG ...] [--forget RUN ...] [--delete]
    python -m elude.housekeeping [--results DIR] --verify

Kept configs: every run started on this results folder (remembered in ``results/.runs/`` with its resolved
config when it starts: :func:`elude.pipeline.artifacts.remember_run`), whatever config file or directory it
came from, and it stays kept until ``--forget <run name or record>`` names it; plus each ``--keep`` file, a
config resolved exactly as ``snakemake --configfile`` resolves it (the schema's defaults and the file), or
without ``--keep`` the base config itself (the repository's ``config.yaml``: the demo). So neither a run in progress
nor a finished one loses its work to ``--delete`` unless it is forgotten. An artifact is *kept* when its id
is one of the ids (:func:`elude.pipeline.plan.all_ids`: every token seed, the baselines, and the aggregate)
of a kept config, *unreferenced* otherwise. Hidden work in progress (``.<id>.partial``, ``.<id>.tmp-<pid>``,
or a sharded folder (cache, topk, cluster, surgery) holding hidden ``.shard-*``/``.part-*`` leftovers or no manifest at all) and logs without any
folder are *incomplete*. An artifact's logs (``results/logs/<stage>/<id>*.log``) and benchmarks
(``results/benchmarks/<stage>/<id>*.tsv``) count towards its size and go with it.

Last use of an artifact = the newest modification time among its own manifest(s) and the manifests of
every artifact whose ``inputs`` name it, i.e. when it, or an artifact made directly from it, was last
written. Without any such manifest (incomplete work), the newest modification time of its files.

Dry run by default. ``--delete`` removes every unreferenced artifact and every incomplete one whose
id is unreferenced (folders, logs, benchmarks, build locks), and the records of the forgotten runs; kept ids
and ``results/runs/`` are never touched. A remembered run whose record cannot be read stops ``--delete``
with its name (forget it, or fix the file).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from .artifacts import CODE_VERSIONS, REMEMBERED, checksums
from .config import DEMO_CONFIG, ConfigError, resolve_config, validate_config
from .plan import all_ids

STAGES = list(CODE_VERSIONS)  # every stage, in DAG order
SHARDED = {"cache", "topk", "cluster", "surgery"}  # artifact folder = shard-NNNN (topk: part-NNNN, merged) subfolders, each with a manifest
FINAL = re.compile(r"^([0-9a-f]{12})$")
SIBLING = re.compile(r"^\.([0-9a-f]{12})\.(partial|tmp-\d+)$")  # see elude.pipeline.artifacts.atomic_dir
ID_PREFIX = re.compile(r"^([0-9a-f]{12})")


@dataclass
class Artifact:
    stage: str
    id: str
    paths: list[Path] = field(default_factory=list)  # folders and log/benchmark files, removed together
    manifests: list[dict] = field(default_factory=list)
    manifest_mtimes: list[float] = field(default_factory=list)
    incomplete: bool = False
    kept: bool = False
    size: int = 0
    last_use: float = 0.0

    @property
    def status(self) -> str:
        if self.incomplete:
            return "kept (incomplete)" if self.kept else "incomplete"
        return "kept" if self.kept else "unreferenced"


class UsageError(Exception):
    """A problem with the command line (missing or invalid config file): one line, exit code 2."""


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UsageError(f"config {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a mapping of keys, not {type(data).__name__}")
    return data


def kept_ids(base: Path, keep: list[Path], remembered: dict[str, dict] | None = None) -> set[tuple[str, str]]:
    """(stage, id) of every artifact of every kept config: the ``keep`` files, each resolved as ``snakemake
    --configfile`` resolves it (:func:`elude.pipeline.config.resolve_config`), or without any the ``base``
    config itself (the demo's config.yaml); and the ``remembered`` runs' resolved configs (record name -> record)."""
    configs = ([(str(path), lambda raw=read_yaml(path): resolve_config([raw])) for path in keep] if keep else
               [(str(base), lambda raw=read_yaml(base): validate_config(raw))])
    configs += [(f"remembered run {name}", lambda raw=record["config"]: validate_config(raw))
                for name, record in (remembered or {}).items()]
    out: set[tuple[str, str]] = set()
    for where, resolve in configs:
        try:
            resolved = resolve()
        except ConfigError as exc:  # its message lists one problem a line; the CLI promises one line
            first, *problems = str(exc).splitlines()
            fix = f" (forget it with --forget {where.split()[-1]}, or fix the file)" if where.startswith("remembered") else ""
            raise UsageError(f"config {where}: {first} " + "; ".join(p.strip(" -") for p in problems) + fix) from None
        out |= {(stage, i) for stage, ids in all_ids(resolved).items() for i in ids}
    return out


def remembered_runs(results: Path) -> dict[str, dict]:
    """The runs started on ``results`` (:func:`elude.pipeline.artifacts.remember_run`): record name (the file's
    stem, ``<run_name>-<config sha>``) -> record. A record that cannot be read is a UsageError: its run's work
    would otherwise look unreferenced."""
    out = {}
    for path in sorted((results / REMEMBERED).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            assert isinstance(record["config"], dict) and record["run_name"]
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            raise UsageError(f"remembered run {path} cannot be read ({type(exc).__name__}: {exc}); forget it with "
                             f"--forget {path.stem}, or fix the file") from None
        out[path.stem] = record
    return out


def forgotten(remembered: dict[str, dict], names: list[str]) -> list[str]:
    """The record names that ``--forget`` names: a record's name, or a run name (all of its records)."""
    out = []
    for name in names:
        hits = [k for k, r in remembered.items() if name in (k, r["run_name"])]
        if not hits:
            known = ", ".join(f"{k} ({r['run_name']})" for k, r in remembered.items()) or "none"
            raise UsageError(f"--forget {name}: no run of that name or record is remembered here (remembered: {known})")
        out += [k for k in hits if k not in out]
    return out


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or cut short: not a finished artifact
        return None


def tree_size_mtime(path: Path) -> tuple[int, float]:
    """Total bytes and newest mtime of the files under ``path`` (symlinks counted, never followed)."""
    size, mtime = 0, 0.0
    for p in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        try:
            st = p.lstat()
        except FileNotFoundError:  # gone meanwhile: a running workflow renamed its work in progress
            continue
        mtime = max(mtime, st.st_mtime)
        if not stat.S_ISDIR(st.st_mode):
            size += st.st_size
    return size, mtime


def scan(results: Path) -> list[Artifact]:
    """Every artifact folder, work-in-progress sibling and per-artifact log under ``results``."""
    found: dict[tuple[str, str, bool], Artifact] = {}  # (stage, id, is_sibling)
    for stage in STAGES:
        folder = results / stage
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if m := FINAL.match(entry.name):
                art = found.setdefault((stage, m[1], False), Artifact(stage, m[1]))
                art.paths.append(entry)
                mfiles = sorted(entry.glob("*/manifest.json")) if stage in SHARDED else [entry / "manifest.json"]
                for mf in mfiles:
                    if (manifest := read_manifest(mf)) is not None:
                        art.manifests.append(manifest)
                        art.manifest_mtimes.append(mf.stat().st_mtime)
                # no manifest, or shard work in progress (.shard-0001.partial / .tmp-<pid>) inside
                art.incomplete = not art.manifests or (
                    stage in SHARDED and any(p.name.startswith(".") for p in entry.iterdir()))
            elif m := SIBLING.match(entry.name):
                art = found.setdefault((stage, m[1], True), Artifact(stage, m[1], incomplete=True))
                art.paths.append(entry)
        # Logs, benchmarks and build locks (elude.pipeline.artifacts.build_lock; a folder of them for a sharded stage)
        # go with the finished folder, else with the work in progress, else alone.
        for sub in ("logs", "benchmarks", ".locks"):
            d = results / sub / stage
            for f in sorted(d.iterdir()) if d.is_dir() else []:
                if (f.is_file() or sub == ".locks") and (m := ID_PREFIX.match(f.name)):
                    art = (found.get((stage, m[1], False)) or found.get((stage, m[1], True))
                           or found.setdefault((stage, m[1], True), Artifact(stage, m[1], incomplete=True)))
                    art.paths.append(f)
    arts = list(found.values())
    # Last use: its own manifests and those of the artifacts made directly from it.
    consumers: dict[tuple[str, str], list[float]] = {}
    for a in arts:
        for manifest, mtime in zip(a.manifests, a.manifest_mtimes):
            for up_stage, up_id in (manifest.get("inputs") or {}).items():
                consumers.setdefault((up_stage, up_id), []).append(mtime)
    for a in arts:
        sizes, mtimes = zip(*(tree_size_mtime(p) for p in a.paths))
        a.size = sum(sizes)
        used = a.manifest_mtimes + consumers.get((a.stage, a.id), [])
        a.last_use = max(used) if used else max(mtimes)
    return sorted(arts, key=lambda a: (STAGES.index(a.stage), a.last_use, a.id))


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def summary(a: Artifact, width: int = 60) -> str:
    if not a.manifests:
        return "-"
    text = json.dumps(a.manifests[0].get("params", {}), sort_keys=True, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 3] + "..."


def remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:  # already gone (e.g. a run renamed its .tmp folder meanwhile)
        pass


def damage(folder: Path, manifest: dict) -> list[str]:
    """What no longer matches an artifact folder's manifest: files changed, missing or added (named, where
    the manifest lists each file's sha256), else the folder's checksum. Empty when intact."""
    total, files = checksums(folder)
    if total == manifest.get("checksum"):
        return []
    want = manifest.get("files")
    if want is None:  # a manifest from before per-file sums
        return ["content checksum differs (a file was changed, added or removed)"]
    out = [f"{f}: {'changed' if f in files else 'missing'}" for f in sorted(want) if files.get(f) != want[f]]
    return out + [f"{f}: not in the manifest (added)" for f in sorted(set(files) - set(want))]


def verify(results: Path) -> list[tuple[str, str, Path, list[str]]]:
    """(stage, id, folder, problems) of every finished artifact folder (each shard of a sharded one) whose
    bytes no longer match its manifest. Reads every byte under ``results`` once."""
    bad = []
    for a in scan(results):
        for folder in a.paths:
            if not folder.is_dir() or not FINAL.match(folder.name):
                continue
            parts = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
                if a.stage in SHARDED else [folder]
            for part in parts:
                manifest = read_manifest(part / "manifest.json")
                problems = ["manifest.json missing or unreadable"] if manifest is None else damage(part, manifest)
                if problems:
                    bad.append((a.stage, a.id, part, problems))
    return bad


def check_inputs(results: Path, inputs: dict[str, str]) -> None:
    """Before a job computes: every artifact it is made from, directly or further upstream (through the
    manifests' inputs), still has the bytes its manifest records; else a RuntimeError naming the damaged
    files and the rebuild, instead of a result computed on garbage. Reads those artifacts' bytes once
    (the default run: 0.3 s for all 44 MB of its artifacts)."""
    seen, todo, bad = set(), list(inputs.values()), []
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        folder = next((results / st / i for st in STAGES if (results / st / i).is_dir()), None)
        if folder is None:
            continue  # not made by this workflow (the job's own inputs are checked by Snakemake)
        parts = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if folder.parent.name in SHARDED else [folder]
        for part in parts:
            manifest = read_manifest(part / "manifest.json")
            problems = ["manifest.json missing or unreadable"] if manifest is None else damage(part, manifest)
            bad += [f"{part}: {p}" for p in problems]
            todo += list((manifest or {}).get("inputs", {}).values())
    if bad:
        raise RuntimeError("input artifacts no longer match their manifests (disk damage or an edit):\n  "
                           + "\n  ".join(bad) + "\nRebuild them: `python -m elude.housekeeping --verify` in the run's "
                           "directory lists them with the commands")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elude.housekeeping", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument("--base", type=Path, default=DEMO_CONFIG, help="the config kept when no --keep is given (default: the repository's config.yaml, the demo)")
    parser.add_argument("--keep", type=Path, nargs="+", action="extend", default=[], metavar="CONFIG",
                        help="config file(s) whose artifacts are kept, each as `snakemake --configfile` reads it (default: the base config)")
    parser.add_argument("--forget", nargs="+", action="extend", default=[], metavar="RUN",
                        help="runs started here whose artifacts are no longer kept: a run name (all its records) "
                             "or a record name; --delete then removes their records too")
    parser.add_argument("--delete", action="store_true", help="remove unreferenced artifacts (default: dry run)")
    parser.add_argument("--verify", action="store_true",
                        help="check every artifact's bytes against its manifest; list the damaged ones (exit 1)")
    args = parser.parse_args(argv)
    if args.verify:
        return report_damage(args.results)
    try:
        remembered = remembered_runs(args.results)
        forget = forgotten(remembered, args.forget)
        kept_runs = {k: r for k, r in remembered.items() if k not in forget}
        keep = kept_ids(args.base, args.keep, kept_runs)
    except UsageError as exc:
        print(f"housekeeping: error: {exc}", file=sys.stderr)
        return 2
    if not args.results.is_dir():
        print(f"housekeeping: no results folder at {args.results}; nothing to do")
        return 0
    print(f"Kept: {', '.join(map(str, args.keep)) if args.keep else f'the base config ({args.base})'}, and "
          + (f"{len(kept_runs)} run(s) started here: " + ", ".join(kept_runs) if kept_runs else "no run remembered here")
          + (f"; forgotten: {', '.join(forget)}" if forget else "") + "\n")

    arts = scan(args.results)
    for a in arts:
        a.kept = (a.stage, a.id) in keep
    rows = [("stage", "id", "status", "size", "last use", "params")] + [
        (a.stage, a.id, a.status, human(a.size), datetime.fromtimestamp(a.last_use).isoformat(timespec="seconds"),
         summary(a)) for a in arts]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])

    doomed = [a for a in arts if not a.kept]
    total = human(sum(a.size for a in doomed))
    n_unref = sum(not a.incomplete for a in doomed)
    print(f"\n{len(arts)} listed; {n_unref} unreferenced and {len(doomed) - n_unref} incomplete "
          f"not referenced by a kept config, taking {total}")
    if not args.delete:
        print("Dry run: nothing removed. Run again with --delete to remove them "
              "(results/runs/, kept artifacts and the work of every run started here are never touched).")
        return 0
    for a in doomed:
        for p in a.paths:
            remove(p)
    for name in forget:  # last: a failure above leaves the run remembered
        (args.results / REMEMBERED / f"{name}.json").unlink()
    print(f"Removed {len(doomed)} artifacts ({total})" + (f" and forgot {', '.join(forget)}." if forget else "."))
    return 0


def report_damage(results: Path) -> int:
    if not results.is_dir():
        print(f"housekeeping: no results folder at {results}; nothing to verify")
        return 0
    t0, bad = time.perf_counter(), verify(results)
    for stage, i, folder, problems in bad:
        print(f"DAMAGED {stage} {i}: {folder}")
        for p in problems:
            print(f"    {p}")
    took = f"({time.perf_counter() - t0:.1f} s)"
    if not bad:
        print(f"every artifact under {results} matches its manifest {took}")
        return 0
    folders = " ".join(sorted(str(folder) for *_, folder, _ in bad))
    print(f"\n{len(bad)} damaged {took}. Rebuild them: `rm -rf {folders}`, then the run's snakemake command (same "
          f"--directory and --configfile) with them as targets: {folders}. A content-addressed artifact is rebuilt "
          "byte for byte; artifacts made from it rerun on the next plain run, as their input is newer.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
