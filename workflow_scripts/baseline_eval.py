# Thin entry point: see elude.pipeline.stages.baselines.baseline_eval.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged
from elude.pipeline.stages.baselines import baseline_eval

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: baseline_eval(st, sm.input.model, sm.input.backbone, sm.input.cache,
                                                  sm.output.folder))
