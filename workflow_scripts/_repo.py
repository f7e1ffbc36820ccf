# Makes this checkout's `elude` package importable in any job environment (conda envs do not install it).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def as_list(files) -> list[str]:
    """A named Snakemake input as a list: Snakemake gives a one-file list back as a plain string."""
    return [files] if isinstance(files, str) else list(files)
