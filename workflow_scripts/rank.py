# Thin entry point: see elude.pipeline.stages.judging.rank.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged
from elude.pipeline.stages.judging import rank

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: rank(st, sm.params.grids, sm.params.judges, sm.output.folder))
