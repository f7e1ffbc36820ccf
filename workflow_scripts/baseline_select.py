# Thin entry point: see elude.pipeline.stages.baselines.baseline_select.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged
from elude.pipeline.stages.baselines import baseline_select

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: baseline_select(st, _repo.as_list(sm.input.train), sm.output.folder))
