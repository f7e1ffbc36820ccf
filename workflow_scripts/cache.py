# Thin entry point: see elude.stages.cache.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.stages import cache, run_logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, lambda st: cache(st, sm.input.backbone, sm.output.folder))
