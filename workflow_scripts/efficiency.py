# Thin entry point: see elude.pipeline.stages.studies.efficiency.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged
from elude.pipeline.stages.studies import efficiency

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: efficiency(st, sm.input.backbone, sm.input.merge, sm.params.families, sm.output.folder))
