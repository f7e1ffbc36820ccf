"""The method (Sections 3.1-3.4, E.6): :mod:`.topk` (eq. 1, streamed), :mod:`.contributions` and
:mod:`.clustering` (Section 3.2: one unit's clustering is :func:`.clustering.cluster_unit`; the exact HDBSCAN
backend is the private package :mod:`._exact_hdbscan`), :mod:`.surgery` (Section 3.3), :mod:`.layers` (the
disentangled layer, dense and lazy, eq. 8) and :mod:`.expansion` (matching a target expansion factor).
Everything here works on arrays and modules; nothing reads the workflow's artifact folders."""
