"""Models and data, the bottom of the package: :mod:`.backbones` (building and loading models, target layers,
how a layer's activations become instances), :mod:`.data` (probe and evaluation datasets, streamed in
batches) and :mod:`.cache` (the activation store: the target layer's inputs as chunked zarr)."""
