"""The disentangled layer: project to all sub-units, then merge each unit's sub-units back (eq. 8).

``DisentangledLayer`` replaces an ``nn.Linear`` or a 1x1 ``nn.Conv2d``. Sub-units are stored
contiguously by parent unit. The merge gathers each unit's sub-units into a zero-padded (units, K_max)
table and sums it, which is deterministic on every device (no atomics) and sums in a fixed order.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import get_module, set_module


class DisentangledLayer(nn.Module):
    """Sub-unit projection + merge. Outputs equal the original layer's (eqs. 6, 8).

    Attributes for inspection and steering:
      ``parent`` (n_subunits,) — the unit each sub-unit belongs to;
      ``metadata`` — per-unit cluster information (K_u, rho, cluster sizes, ...);
      ``record = True`` keeps the last sub-unit activations in ``last_subunits`` (..., n_subunits);
      ``subunit_gain`` (n_subunits,) or None — scales sub-units before the merge (steering; with gains
      other than 1 the layer is, by design, no longer lossless).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, parent: torch.Tensor, out_features: int,
                 kind: str = "linear", metadata: dict | None = None):
        super().__init__()
        if kind not in ("linear", "conv1x1"):
            raise ValueError(f"kind must be 'linear' or 'conv1x1', not {kind!r}")
        parent = parent.long()
        if parent.numel() and (torch.diff(parent) < 0).any():
            raise ValueError("sub-units must be stored contiguously in parent order")
        self.kind, self.out_features, self.in_features = kind, out_features, weight.shape[1]
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("parent", parent.clone())
        counts = torch.bincount(parent, minlength=out_features)
        k_max = int(counts.max()) if parent.numel() else 1
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(k_max)
        # merge_index[u, s] = sub-unit of unit u in slot s, or n_subunits (a zero column) past K_u.
        merge_index = torch.where(slot[None, :] < counts[:, None], starts[:, None] + slot[None, :],
                                  torch.full((1, 1), len(parent)))
        self.register_buffer("merge_index", merge_index)
        self.metadata = metadata or {}
        self.record = False
        self.last_subunits: torch.Tensor | None = None
        self.subunit_gain: torch.Tensor | None = None

    @property
    def n_subunits(self) -> int:
        return self.weight.shape[0]

    def subunits(self, x: torch.Tensor) -> torch.Tensor:
        """Sub-unit pre-activations of a layer input, channels last: (..., n_subunits)."""
        if self.kind == "conv1x1":
            x = x.movedim(1, -1)  # (B, C, H, W) -> (B, H, W, C)
        return self.subunits_of_instances(x)

    def subunits_of_instances(self, q: torch.Tensor) -> torch.Tensor:
        """Sub-unit pre-activations of instance rows q (..., upstream), whatever the layer kind."""
        return F.linear(q, self.weight, self.bias)

    def merge(self, s: torch.Tensor) -> torch.Tensor:
        """Eq. 8: a_u = sum over c of a_u^(c), back in the original layout."""
        padded = torch.cat([s, s.new_zeros(*s.shape[:-1], 1)], dim=-1)
        out = padded[..., self.merge_index].sum(-1)
        return out.movedim(-1, 1) if self.kind == "conv1x1" else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.subunits(x)
        if self.record:
            self.last_subunits = s.detach()
        if self.subunit_gain is not None:
            s = s * self.subunit_gain
        return self.merge(s)

    def subunits_of(self, unit: int) -> list[int]:
        return torch.nonzero(self.parent == unit).flatten().tolist()

    # --- persistence: safetensors + a small JSON ---------------------------------------------------
    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file({"weight": self.weight.data.contiguous(), "bias": self.bias.data.contiguous(),
                   "parent": self.parent.contiguous()}, str(folder / "layer.safetensors"))
        info = {"kind": self.kind, "in_features": self.in_features, "out_features": self.out_features,
                "n_subunits": self.n_subunits, "metadata": self.metadata}
        (folder / "layer.json").write_text(json.dumps(info, indent=1, sort_keys=True))

    @classmethod
    def load(cls, folder: str | Path) -> "DisentangledLayer":
        from safetensors.torch import load_file

        folder = Path(folder)
        t = load_file(str(folder / "layer.safetensors"))
        info = json.loads((folder / "layer.json").read_text())
        return cls(t["weight"], t["bias"], t["parent"], info["out_features"], info["kind"], info["metadata"])

    @classmethod
    def from_fractions(cls, layer: nn.Module, unit_fractions: list[np.ndarray], unit_omegas: list[np.ndarray],
                       metadata: dict | None = None) -> "DisentangledLayer":
        """Build from the original layer and per-unit (fractions (K_u, d), omegas (K_u,)).

        Sub-unit weights w^(u,c) = f^(c) * W_u (eq. 4) and biases omega_c * b_u.
        """
        from .backbones import layer_weight_bias

        w, b = layer_weight_bias(layer)
        rows, biases, parent = [], [], []
        for u, (frac, omega) in enumerate(zip(unit_fractions, unit_omegas)):
            rows.append(torch.from_numpy(frac).float() * w[u])  # eq. 4
            biases.append(torch.from_numpy(omega).float() * b[u])
            parent += [u] * len(omega)
        kind = "conv1x1" if isinstance(layer, nn.Conv2d) else "linear"
        return cls(torch.cat(rows), torch.cat(biases), torch.tensor(parent), w.shape[0], kind, metadata)


def swap_in(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Hot-swap ``new`` in at ``path``; returns the original module for :func:`swap_out`."""
    get_module(model, path)
    return set_module(model, path, new)


def swap_out(model: nn.Module, path: str, original: nn.Module) -> nn.Module:
    """Put the original module back; returns the disentangled one."""
    return set_module(model, path, original)
