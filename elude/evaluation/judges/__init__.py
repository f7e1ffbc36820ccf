"""LLM Rank (Section B.1): vision-language judges compare two methods' top-image grids pairwise.

:mod:`.grids` (top-9 images as a 3x3 collage, 336 px cells), :mod:`.protocol` (the paper's prompt, the
seeded unit-pair sample shown in both orders, robust parsing of the judges' JSON answers), :mod:`.backends`
(transformers and vLLM judges, the model check, the judgment store: judgments saved as made and keyed by
content, so a killed job resumes and one more judge asks only itself), :mod:`.consensus` (majority
consensus per presentation, win rates, bootstrap intervals, ordinal ranks, per-judge agreement) and
:mod:`.demo` (the tiny random-init judge of the default run and the tests). The workflow stages are in
:mod:`elude.pipeline.stages.judging`.
"""
from pathlib import Path


def judge_name(model: str) -> str:
    """A judge's short name: the last part of its folder or Hugging Face id (two judges may not share one)."""
    return Path(model.rstrip("/")).name
