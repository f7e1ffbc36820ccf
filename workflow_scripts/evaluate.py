# Thin entry point: see elude.pipeline.stages.evaluate.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import evaluate, run_logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: evaluate(st, sm.input.backbone, sm.input.merge, sm.input.cache, sm.output.folder))
