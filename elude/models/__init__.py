"""Models and data, the bottom of the package: :mod:`.backbones` (building and loading models, target layers,
how a layer's activations become instances), :mod:`.data` (probe and evaluation datasets, streamed in
batches) and :mod:`.cache` (the activation store: the target layer's inputs as chunked zarr)."""
import re

DEMO_MODEL = re.compile(r"demo:(\d+)")  # a model the job builds itself (judges.models, labels.model): "demo:<seed>"


def demo_seed(model: str) -> int | None:
    """The seed of a ``demo:<seed>`` model name (:mod:`elude.demo`), None for any other name. Here, without torch:
    the workflow reads it while it checks its config."""
    m = DEMO_MODEL.fullmatch(model)
    return int(m.group(1)) if m else None
