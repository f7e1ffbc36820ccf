# Thin entry point: see elude.pipeline.stages.surgery_shard.
import _repo  # noqa: I001 (puts the checkout on sys.path)
from elude.pipeline.stages import run_logged, surgery_shard

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(sm.params.stage, sm.log[0], sm.threads, sm.output.folder,
           lambda st: surgery_shard(st, sm.input.cluster, _repo.as_list(sm.input.cache), sm.input.topk, sm.input.backbone,
                                    sm.output.folder))
