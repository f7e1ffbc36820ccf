# Thin entry point: see elude.pipeline.stages.verify (raises, failing the run, if the layer is not lossless).
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged, verify

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: verify(st, sm.input.backbone, sm.input.merge, sm.output.folder))
