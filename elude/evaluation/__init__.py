"""Evaluation and use of the sub-units, one code path for every method: :mod:`.scoring` (verify and evaluate:
lossless check, accuracy, MS-Score, controls), :mod:`.metrics` (eq. 7, R^2, output differences),
:mod:`.diagnostics` (why a split helps, per unit), :mod:`.dictionary` (B.3), :mod:`.efficiency` (B.4),
:mod:`.labels` (CLIP-Dissect), :mod:`.groups` (concept groups), :mod:`.steering` (C.3) and :mod:`.judges`
(LLM Rank, B.1)."""
