# Thin entry point: see elude.pipeline.stages.labeling.explanations.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged
from elude.pipeline.stages.labeling import explanations

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: explanations(st, sm.input.backbone, sm.input.evaluate, sm.output.folder, sm.params.baselines))
