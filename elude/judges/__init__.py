"""LLM Rank (Section B.1): vision-language judges compare two methods' top-image grids pairwise.

Built in steps (issue 12). Here so far: the pairwise protocol (:mod:`.protocol`: the paper's prompt, the
seeded unit-pair sample shown in both orders, robust parsing of the judges' JSON answers) and the
aggregation (:mod:`.consensus`: majority consensus per presentation, win rates, bootstrap intervals,
ordinal ranks). Still to come: the 3x3 grids, the judge backends (vLLM; transformers for small judges and
CPU tests), the workflow stages and the report's Table 3.
"""
