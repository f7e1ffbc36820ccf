# Thin entry point: see elude.pipeline.stages.aggregate.
import _repo  # noqa: I001 (puts the checkout on sys.path)
from elude.pipeline.stages import aggregate, run_logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder, lambda st: aggregate(st, _repo.as_list(sm.input.reports), sm.output.folder))
