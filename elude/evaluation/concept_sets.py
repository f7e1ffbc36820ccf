"""The concept sets that labels choose from (``labels.concepts``): the shipped word lists and a user's file.
Without torch, so the workflow checks and hashes them while it reads its config."""
from __future__ import annotations

from pathlib import Path

CONCEPTS_DIR = Path(__file__).with_name("concepts")
DEFAULT_CONCEPTS = CONCEPTS_DIR / "default.txt"


class LabelsError(RuntimeError):
    """A labels setting that cannot work here (missing model, package, or concept file)."""


def concepts_file(value: str | None) -> Path:
    """labels.concepts: null = the shipped default, a shipped set's name (``default``, ``digits``), or a file
    (relative to the run's working directory)."""
    if not value:
        return DEFAULT_CONCEPTS
    shipped = CONCEPTS_DIR / f"{value}.txt"
    return shipped if "/" not in value and shipped.is_file() and not Path(value).is_file() else Path(value)


def load_concepts(value: str | None) -> list[str]:
    """The concept set: one concept per line, '#' comments and blank lines skipped, duplicates dropped."""
    path = concepts_file(value)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONCEPTS_DIR.glob("*.txt")))
        raise LabelsError(f"labels.concepts: {str(path)!r} is not a file: give a text file with one concept per "
                          f"line, a shipped set ({shipped}), or null for the default")
    words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines()]
    words = list(dict.fromkeys(w for w in words if w and not w.startswith("#")))
    if len(words) < 2:
        raise LabelsError(f"labels.concepts: {str(path)!r} holds {len(words)} concept(s); a label needs at least 2 to "
                          "choose from")
    return words
