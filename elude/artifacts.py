"""Content-addressed artifacts: ids, manifests, atomic publication.

Every stage writes ``results/<stage>/<id>/`` where ``id`` is the first 12 hex characters of a sha256
over the stage's own parameters, its code-version string and the ids of its inputs. Bump a stage's
entry in :data:`CODE_VERSIONS` when a code change alters what it writes: that gives new ids for the
stage and everything downstream, and leaves old artifacts where they are.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

CODE_VERSIONS = {
    "backbone": "1",
    "cache": "1",
    "topk": "1",
    "cluster": "1",
    "surgery": "1",
    "merge": "2",
    "verify": "1",
    "evaluate": "1",
    "report": "2",
}

_LIBRARIES = ("torch", "timm", "zarr", "numcodecs", "numpy", "hdbscan", "scikit-learn", "safetensors")


def artifact_id(stage: str, params: dict, inputs: dict[str, str]) -> str:
    """Id of a stage's artifact: sha256 over (stage, code version, params, input ids), 12 hex chars."""
    payload = {"stage": stage, "code_version": CODE_VERSIONS[stage], "params": params, "inputs": inputs}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def content_checksum(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file in ``folder`` (manifest excluded)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        h.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(final: str | Path, stage: str, artifact: str, params: dict, inputs: dict[str, str],
               extra: dict | None = None) -> Iterator[tuple[Path, dict]]:
    """Build an artifact folder in a temporary sibling; rename it into place only when complete.

    Yields (temporary folder, manifest dict); the caller may add entries to the manifest. A failure
    removes the temporary folder and never touches a finished artifact at another path.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    manifest = {"stage": stage, "id": artifact, "params": params, "inputs": inputs, **(extra or {})}
    t0 = time.time()
    try:
        yield tmp, manifest
        manifest["wall_seconds"] = round(time.time() - t0, 3)
        manifest["libraries"] = library_versions()
        manifest["checksum"] = content_checksum(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if final.exists():  # Snakemake may pre-create an empty output folder
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
