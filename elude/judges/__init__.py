"""LLM Rank (Section B.1): vision-language judges compare two methods' top-image grids pairwise.

Built in steps (issue 12). Here so far: the grids (:mod:`.grids`: top-9 images as a 3x3 collage, 336 px
cells), the pairwise protocol (:mod:`.protocol`: the paper's prompt, the seeded unit-pair sample shown in
both orders, robust parsing of the judges' JSON answers), the backends and the judgment store
(:mod:`.backends`: transformers and vLLM judges, judgments saved as made and keyed by content, so a killed
job resumes and one more judge asks only itself) and the aggregation (:mod:`.consensus`: majority
consensus per presentation, win rates, bootstrap intervals, ordinal ranks). Still to come: the workflow
stages (grids from evaluate's and the baselines' top images, one judge job per judge and token seed, the
rank) and the report's Table 3 and LLM Rank column.
"""
