# Thin entry point: see elude.pipeline.stages.report.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import report, run_logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: report(st, sm.input.verify, sm.input.evaluate, sm.input.merge, sm.input.backbone,
                             dict(sm.params.artifacts), sm.output.folder, dict(sm.params.baselines),
                             dict(sm.params.studies)))
