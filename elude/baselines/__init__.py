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
WINDOW_CHUNKS = 8  # training shuffles rows within windows of this many cache chunks (.train; jobs' memory: its size)




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


# Dictionary sizes matched to ELUDe's sub-unit count (Sec. E.6): ``match`` by dictionary size, ``match_live`` by the
# features that fire on the probe instances (issue 26: an SAE with many dead features is smaller than it looks).
MATCHED = ("match", "match_live")
LIVE_MATCH_TRIES = 3  # refits of the selected point at most, after the sweep's own model at ELUDe's count
LIVE_MATCH_MAX_SCALE = 8.0  # the largest dictionary tried, as a multiple of ELUDe's sub-unit count


def live_match_tolerance(target: int) -> int:
    """``match_live`` stops once a dictionary's live features are within this of ``target`` (2%, at least 1)."""
    return max(1, round(0.02 * target))


def live_match_next(target: int, tries: list[tuple[int, int]]) -> int | None:
    """``match_live``'s search: the next dictionary size to train, or None when done. ``tries``: (features, live
    features) of the dictionaries trained so far, the first at ``target`` (ELUDe's sub-unit count). The live
    fraction changes slowly with the dictionary's size, so the next size scales the closest try's by target / live
    (a proportional step); it stops within :func:`live_match_tolerance`, after :data:`LIVE_MATCH_TRIES` refits, or
    when the step lands on a size already tried. Sizes stay in [1, :data:`LIVE_MATCH_MAX_SCALE` x target]."""
    n, live = min(tries, key=lambda t: (abs(t[1] - target), t[0]))
    if abs(live - target) <= live_match_tolerance(target) or len(tries) > LIVE_MATCH_TRIES:
        return None
    step = round(n * target / max(live, 1))
    step = int(min(max(step, 1), LIVE_MATCH_MAX_SCALE * target))
    return None if step in {t[0] for t in tries} else step


def live_match_choice(target: int, tries: list[tuple[int, int]]) -> int:
    """Index of the try whose live features are closest to ``target`` (the smaller dictionary on a tie)."""
    return min(range(len(tries)), key=lambda i: (abs(tries[i][1] - target), tries[i][0]))
