"""LLM Rank (Section B.1): vision-language judges compare two methods' top-image grids pairwise.

Built in steps (issue 12). Here so far: the grids (:mod:`.grids`: top-9 images as a 3x3 collage, 336 px
cells), the pairwise protocol (:mod:`.protocol`: the paper's prompt, the seeded unit-pair sample shown in
both orders, robust parsing of the judges' JSON answers) and the aggregation (:mod:`.consensus`: majority
consensus per presentation, win rates, bootstrap intervals, ordinal ranks). Still to come: the judge
backends (vLLM; transformers for small judges and CPU tests), the workflow stages (grids from evaluate's
top images, judge jobs that store each judgment as made, the rank) and the report's Table 3.
"""
