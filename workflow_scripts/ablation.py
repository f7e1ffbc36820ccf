# Thin entry point: see elude.pipeline.stages.studies.ablation.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged
from elude.pipeline.stages.studies import ablation

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: ablation(st, sm.params.evaluations, sm.output.folder, sm.params.verifications))
