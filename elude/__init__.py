"""ELUDe: explicit, lossless, unsupervised disentanglement of polysemantic units.

The library holds all method logic; the Snakemake workflow only calls into it.
"""

__version__ = "0.1.0"
