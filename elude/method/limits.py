"""The clustering backends' working-set limits, in a module of their own without torch: the backends use them
(:mod:`elude.method.clustering`, :mod:`elude.method._exact_hdbscan`) and so does the jobs' memory model
(:mod:`elude.pipeline.resources`), which the workflow evaluates while it builds the DAG."""

PRECOMPUTED_MAX_ROWS = 6000  # hdbscan backend: exact torch distances up to this many points (6000^2 float64 = 288 MB)
BLOCK_MB = {"cpu": 256, "cuda": 8192}  # torch backend: working set of one block of rows (~4 block x n float64)
