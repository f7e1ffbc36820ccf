# Thin entry point: see elude.pipeline.stages.topk_part.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged, topk_part

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: topk_part(st, sm.input.cache, sm.input.backbone, sm.output.folder))
