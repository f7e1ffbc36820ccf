"""SAE and transcoder baselines (Sections 4.1, E.1): the families, their sweep grids, and eq. 9 selection.

The families reuse the overcomplete library (0.3.0) where it has them (:mod:`.models` says which);
training streams the probe instances from the activation cache (:mod:`.train`); scoring is ELUDe's own
(:func:`elude.evaluation.scoring.score_baseline`).
"""
from __future__ import annotations

import itertools
import math

from ..util.optional import (  # noqa: F401 (re-exported)
    BaselineDependencyError,
    overcomplete_module,
    overcomplete_sae,
)

# Paper order (Table 2). Each family's sweep axes (E.1): lr x w_dead for all; the L1 weight for Vanilla and
# the Transcoder; the sparsity-penalty weight for JumpReLU.
FAMILIES = ("vanilla", "topk", "jumprelu", "batchtopk", "matryoshka", "archetypal", "mp", "transcoder")
FAMILY_NAMES = {"vanilla": "Vanilla SAE", "topk": "TopK-SAE", "jumprelu": "JumpReLU", "batchtopk": "BatchTopK-SAE",
                "matryoshka": "Matryoshka SAE", "archetypal": "Archetypal SAE", "mp": "Matching Pursuit",
                "transcoder": "Transcoder"}
GRID_AXES = {f: ("lr", "w_dead") for f in FAMILIES}
GRID_AXES.update({"vanilla": ("lr", "w_dead", "w_l1"), "transcoder": ("lr", "w_dead", "w_l1"),
                  "jumprelu": ("lr", "w_dead", "w_sp")})




def family_grid(baselines: dict, family: str) -> dict[str, list[float]]:
    """The sweep axes of ``family``: the shared ``baselines.grid`` with the family's own overrides."""
    grid = {**baselines["grid"], **(baselines.get("family_grid") or {}).get(family, {})}
    return {axis: list(grid[axis]) for axis in GRID_AXES[family]}


def grid_points(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    """Every combination of the grid's axes, in a fixed order (the last axis varies fastest)."""
    axes = list(grid)
    return [dict(zip(axes, values)) for values in itertools.product(*(grid[a] for a in axes))]


def selection_scores(mse: list[float], l0: list[float]) -> list[float]:
    """Eq. 9: s = 1/2 (1 - MSE~) + 1/2 (1 - L0~), MSE and L0 min-max normalised within the family (a
    constant column normalises to 0). A candidate whose MSE or L0 is not finite (diverged) scores -inf."""
    ok = [math.isfinite(m) and math.isfinite(z) for m, z in zip(mse, l0)]

    def norm(xs):
        vals = [x for x, good in zip(xs, ok) if good]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
        return [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in xs]

    m, z = norm(mse), norm(l0)
    return [0.5 * (1 - a) + 0.5 * (1 - b) if good else -math.inf for a, b, good in zip(m, z, ok)]


def select(candidates: list[dict]) -> int:
    """Index of the eq. 9 argmax among ``candidates`` ({"mse", "l0"} each; the first wins a tie)."""
    s = selection_scores([c["mse"] for c in candidates], [c["l0"] for c in candidates])
    if not any(math.isfinite(x) for x in s):
        raise ValueError("every sweep candidate of this family diverged (non-finite MSE or L0): lower the learning "
                         "rates in its grid")
    return max(range(len(s)), key=lambda i: (s[i], -i))
