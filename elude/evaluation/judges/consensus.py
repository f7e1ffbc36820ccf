"""Aggregation of Section B.1: the consensus winner of each presentation, each method's consensus win rate
with a bootstrap 95% interval, and the ordinal LLM Rank."""
from __future__ import annotations

from collections import Counter

import numpy as np


def consensus(answers: list[str | None]) -> str | None:
    """The option ("A" or "B") chosen by a majority of the judges (more than half of all of them, an
    unparseable answer counting for neither side); None when no option has one (a tie: dropped, and
    counted by the caller)."""
    votes = Counter(a for a in answers if a in ("A", "B"))
    for option in ("A", "B"):
        if votes[option] * 2 > len(answers):
            return option
    return None


def comparisons(presented: list[dict], answers: dict[str, list[str | None]]) -> tuple[list[tuple[str, str]], dict]:
    """(winner method, loser method) for every presentation with a consensus, and the counts of
    presentations and dropped ties. ``presented``: :func:`elude.evaluation.judges.protocol.presentations` entries;
    ``answers``: judge -> its answer per presentation (same order)."""
    out, ties = [], 0
    judges = list(answers)
    for i, p in enumerate(presented):
        winner = consensus([answers[j][i] for j in judges])
        if winner is None:
            ties += 1
            continue
        (wa, _), (wb, _) = p["a"], p["b"]
        out.append((wa, wb) if winner == "A" else (wb, wa))
    return out, {"presentations": len(presented), "ties_dropped": ties, "comparisons": len(out)}


def win_rates(results: list[tuple[str, str]], methods: list[str]) -> dict[str, float | None]:
    """Each method's consensus win rate: comparisons it won / comparisons it took part in (None if none)."""
    wins, played = Counter(w for w, _ in results), Counter(m for pair in results for m in pair)
    return {m: (wins[m] / played[m] if played[m] else None) for m in methods}


def bootstrap(results: list[tuple[str, str]], methods: list[str], n: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile interval of each method's win rate over ``n`` resamples (with replacement) of the
    comparisons. A resample in which a method took part in no comparison does not count for it."""
    if not results:
        return {m: None for m in methods}
    rng = np.random.default_rng(seed)
    index = {m: i for i, m in enumerate(methods)}
    winner = np.array([index[w] for w, _ in results])
    loser = np.array([index[v] for _, v in results])
    draws = rng.integers(0, len(results), size=(n, len(results)))
    wins = np.stack([np.bincount(winner[d], minlength=len(methods)) for d in draws])
    played = wins + np.stack([np.bincount(loser[d], minlength=len(methods)) for d in draws])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for m, i in index.items():
        ok = played[:, i] > 0
        rates = wins[ok, i] / played[ok, i]
        out[m] = (float(np.percentile(rates, lo)), float(np.percentile(rates, hi))) if ok.any() else None
    return out


def ranks(rates: dict[str, float | None]) -> dict[str, int | None]:
    """Ordinal rank by win rate, 1 = highest; equal rates share the better rank (1, 2, 2, 4)."""
    scored = sorted((r for r in rates.values() if r is not None), reverse=True)
    return {m: (None if r is None else 1 + sum(s > r for s in scored)) for m, r in rates.items()}


def judge_agreement(presented: list[dict], answers: dict[str, list[str | None]]) -> dict[str, dict]:
    """Per judge: the share of its answers that parsed, the share that chose grid A (position bias), the
    share of unit pairs it decided the same way in both orders (same unit preferred with A and B swapped),
    its agreement with the consensus (over presentations that have one and that it answered) and with
    each other judge (over presentations both answered)."""
    judges = list(answers)
    n = len(presented)
    agreed = [consensus([answers[j][i] for j in judges]) for i in range(n)]
    out = {}
    for j in judges:
        a = answers[j]
        parsed = [i for i in range(n) if a[i] is not None]
        preferred: dict[tuple, list] = {}  # unit pair -> the unit this judge preferred, per order
        for i in parsed:
            p = presented[i]
            preferred.setdefault((p.get("seed"), tuple(p["pair"]), p["index"]), []).append(
                tuple(p["a"] if a[i] == "A" else p["b"]))
        both = [v for v in preferred.values() if len(v) == 2]
        with_consensus = [i for i in parsed if agreed[i] is not None]
        out[j] = {"answers": n, "parsed_share": len(parsed) / n if n else None,
                  "chose_a_share": sum(a[i] == "A" for i in parsed) / len(parsed) if parsed else None,
                  "order_consistency": sum(v[0] == v[1] for v in both) / len(both) if both else None,
                  "agreement_with_consensus": (sum(a[i] == agreed[i] for i in with_consensus) / len(with_consensus)
                                               if with_consensus else None),
                  "agreement_with": {}}
        for k in judges:
            if k != j:
                common = [i for i in parsed if answers[k][i] is not None]
                out[j]["agreement_with"][k] = (sum(a[i] == answers[k][i] for i in common) / len(common)
                                               if common else None)
    return out
