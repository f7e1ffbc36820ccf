# Thin entry point: see elude.pipeline.stages.cache_shard.
import _repo  # noqa: F401,I001 (puts the checkout on sys.path)
from elude.pipeline.stages import cache_shard, run_logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: cache_shard(st, int(sm.wildcards.shard), sm.input.backbone, sm.output.folder))
