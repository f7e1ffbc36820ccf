"""Files written whole or not at all, and arrays in safetensors (byte-deterministic): the I/O every layer of
the package shares."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_atomic(path: Path, write) -> None:
    """Call ``write(temporary path)``, then rename the result to ``path`` (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_arrays(path: str | Path, arrays: dict) -> None:
    """Numpy arrays to safetensors: byte-for-byte deterministic (unlike npz, whose zip entries carry times)."""
    from safetensors.numpy import save_file

    write_atomic(Path(path), lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp)))


def load_arrays(path: str | Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))
