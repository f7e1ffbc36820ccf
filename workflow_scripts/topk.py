# Thin entry point: see elude.pipeline.stages.topk (the merge of the partial top-k).
import _repo  # noqa: I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged, topk

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: topk(st, _repo.as_list(sm.input.parts), sm.input.backbone, sm.output.folder))
