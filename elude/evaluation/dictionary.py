"""Dictionary structure (Section B.3, Table 4): cross-init stability, effective rank and coherence, by one
code path for every method.

**What ELUDe's atoms are.** An SAE's atom is a decoder row: the direction in the analysed space that a
feature stands for, the one vector that tells it apart from the other features. ELUDe's sub-unit (u, c)
writes only to its parent's output coordinate e_u (eq. 8), so in the output space every atom of a neuron
is the same vector: stability would only count agreeing cluster counts, coherence would be 1 (duplicates)
and the effective rank a function of the K_u histogram, whatever the concepts. What tells the sub-units
of a neuron apart, and what the method produces, is the sub-unit weight row w^(u,c) = f^(c) * W_u (eq. 4)
in the layer's input space: ELUDe's atoms are those rows (the transcoder, which also reads the layer
input, is the closest baseline in kind). The atom spaces differ in dimension (d_in for ELUDe, d_out for
SAEs), so the effective rank is bounded by min(atoms, dimension): Table 4 prints the dimension beside it.

Atoms are compared by direction (cosine) everywhere: rows are unit-normalised before the effective rank
too, so a method's scale convention does not enter. Dead atoms are left out first: ELUDe sub-units whose
weight row is zero (a cluster that won no dimension at the chosen rho), SAE features that never fire on
the training instances.

**Coherence** is overcomplete's ``dictionary_collinearity``: the largest |cos| between two different
atoms, the mutual coherence of the dictionary (0 = pairwise orthogonal, 1 = a duplicated direction).
Lower means more distinguishable atoms; the paper's text calls higher better, which does not match the
function it names, so the report marks lower as better.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch


def live(atoms: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Rows that are not dead: nonzero and, where ``alive`` is given (features that fired), alive."""
    keep = atoms.norm(dim=1) > 0
    if alive is not None:
        keep &= alive.bool()
    return atoms[keep]


def _unit_rows(atoms: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(atoms.double(), dim=1)


def matched_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Hungarian-matched mean cosine similarity of two dictionaries (rows = atoms), B.3: the assignment
    maximising the summed cosine over min(k_a, k_b) pairs (``scipy.optimize.linear_sum_assignment``), the
    mean over the matched pairs, minus |k_a - k_b| / max(k_a, k_b) for the atoms left unmatched. 0 when
    one side is empty and the other not; NaN when both are."""
    from scipy.optimize import linear_sum_assignment

    ka, kb = len(a), len(b)
    if ka == 0 or kb == 0:
        return float("nan") if ka == kb else 0.0
    cos = (_unit_rows(a) @ _unit_rows(b).T).numpy()  # torch matmul: numpy's float64 BLAS can crash here
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].mean() - abs(ka - kb) / max(ka, kb))


def blockwise_similarity(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """ELUDe's stability of one pair of runs (B.3): :func:`matched_similarity` per parent neuron (block),
    averaged over the neurons that have a live atom in either run."""
    scores = [matched_similarity(x, y) for x, y in zip(a, b, strict=True)]
    scores = [s for s in scores if not math.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


def stability(runs: list) -> dict:
    """Mean and per-pair values of the matched similarity over every pair of runs (3 runs: 3 pairs). A run
    is a dictionary (tensor: one matching over all atoms) or a list of per-neuron blocks (ELUDe)."""
    pairs = {}
    for i, j in itertools.combinations(range(len(runs)), 2):
        a, b = runs[i], runs[j]
        pairs[f"{i}-{j}"] = blockwise_similarity(a, b) if isinstance(a, list) else matched_similarity(a, b)
    vals = list(pairs.values())
    return {"mean": float(np.mean(vals)) if vals else None, "std": float(np.std(vals)) if vals else None,
            "pairs": pairs}


def effective_rank(atoms: torch.Tensor) -> float:
    """exp(H(p)) with p_i = sigma_i / sum_j sigma_j, the singular values of the unit-normalised atoms (B.3)."""
    if len(atoms) == 0:
        return float("nan")
    sigma = torch.linalg.svdvals(_unit_rows(atoms))
    p = sigma / sigma.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def coherence(atoms: torch.Tensor) -> float:
    """overcomplete's ``dictionary_collinearity``: max |cos| between two different atoms (lower = more
    distinguishable; module docstring)."""
    from ..util.optional import overcomplete_module

    if len(atoms) < 2:
        return float("nan")
    return float(overcomplete_module("metrics").dictionary_collinearity(atoms.float())[0])


def geometry(atoms: torch.Tensor) -> dict:
    """The single-run numbers of one (live) dictionary."""
    return {"effective_rank": effective_rank(atoms), "coherence": coherence(atoms), "n_atoms": int(len(atoms)),
            "dim": int(atoms.shape[1])}


def elude_blocks(weight: torch.Tensor, parent: torch.Tensor, n_units: int) -> list[torch.Tensor]:
    """ELUDe's atoms (module docstring): each neuron's live sub-unit weight rows, in the layer's input space."""
    counts = torch.bincount(parent.long(), minlength=n_units).tolist()
    return [live(block) for block in torch.split(weight.float(), counts)]


def method_row(runs: list) -> dict:
    """Table 4's row of one method from its runs (tensors of live atoms, or per-neuron blocks): stability
    over the pairs, and effective rank and coherence as mean and std over the runs."""
    whole = [torch.cat(r) if isinstance(r, list) else r for r in runs]
    geo = [geometry(d) for d in whole]
    out = {"stability": stability(runs), "n_runs": len(runs), "runs": geo}
    for key in ("effective_rank", "coherence", "n_atoms"):
        vals = np.array([g[key] for g in geo], dtype=float)
        out[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
    out["dim"] = geo[0]["dim"] if geo else None
    return out
