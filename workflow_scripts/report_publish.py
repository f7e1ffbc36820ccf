# Thin entry point: copy the content-addressed report to results/runs/<run_name>/.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.progress import setup_logging
from elude.stages import publish_run

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0], "report_publish").info("publishing %s", sm.input.report)
publish_run(sm.input.report, sm.output.summary, sm.output.html)
