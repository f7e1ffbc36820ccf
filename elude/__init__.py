"""ELUDe: explicit, lossless, unsupervised disentanglement of polysemantic units (docs/architecture.md).

What a user imports, from a finished run into their own code::

    import elude
    folders = elude.run_folders()                          # the run's artifacts (results/ of this directory)
    layer = elude.disentangle(model, "blocks.3.mlp.fc2", folders["merge"])   # lazy; mode="dense": B.4's layer
    elude.steer(model, "blocks.3.mlp.fc2", layer, dataset, up=[12], down=[40])  # Section C.3

and the method itself on arrays (:func:`cluster_unit`, :func:`split_unit`) and the scoring every method gets
(:func:`score`, :func:`ms_score`). The subpackages: :mod:`elude.models` (backbones, data, the activation
store), :mod:`elude.method`, :mod:`elude.evaluation`, :mod:`elude.baselines`, :mod:`elude.demo`,
:mod:`elude.reporting`, :mod:`elude.pipeline` (what the Snakemake workflow calls). Names are imported on
first use, so ``import elude`` stays light for the workflow's jobs.
"""
import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "disentangle": "elude.method.layers", "DisentangledLayer": "elude.method.layers",
    "LazyDisentangledLayer": "elude.method.layers", "swapped": "elude.method.layers",
    "cluster_unit": "elude.method.clustering", "UnitClusters": "elude.method.clustering",
    "split_unit": "elude.method.surgery",
    "steer": "elude.evaluation.steering", "steering": "elude.evaluation.steering", "gains": "elude.evaluation.steering",
    "score": "elude.evaluation.scoring", "ms_score": "elude.evaluation.metrics",
    "run_folders": "elude.pipeline.plan", "load_run_config": "elude.pipeline.config",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'elude' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
