"""Contribution vectors (Section 3.2): c = W_u * q, L2-normalised."""
from __future__ import annotations

import numpy as np

NORM_FLOOR = 1e-12


def contributions(q_rows: np.ndarray, w_u: np.ndarray) -> np.ndarray:
    """Raw contributions of each upstream unit to a_u: c = W_u (elementwise) q, shape (rows, upstream)."""
    return q_rows.astype(np.float32) * w_u.astype(np.float32)[None, :]


def normalise_rows(c: np.ndarray) -> np.ndarray:
    """L2-normalise rows; an all-zero row (all upstream units silent) stays zero instead of NaN."""
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return c / np.maximum(norms, NORM_FLOOR)
