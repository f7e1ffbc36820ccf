"""The disentangled layer: project to all sub-units, then merge each unit's sub-units back (eq. 8).

``DisentangledLayer`` (dense mode) replaces an ``nn.Linear`` or a 1x1 ``nn.Conv2d``. Sub-units are stored
contiguously by parent unit; the forward projects a block of units' sub-units at a time and merges it
before the next (unless every sub-unit is recorded). The merge (eq. 8) sums each unit's sub-units in a fixed order on every device
(no atomics, so runs are bit-reproducible) and never holds more than the sub-unit activations and the
output: on the CPU with ``index_add_`` (sequential per output), on a GPU as K_max gathers of one sub-unit
per unit (slot by slot; a (..., units, K_max) table would cost K_max x the output in memory).
Verify and evaluate use the dense mode: it is the one whose losslessness is at stake.

``LazyDisentangledLayer`` (lazy mode, the default of :func:`disentangle` for users who only need the
model's outputs) runs the original layer itself, so its outputs are the original model's bit for bit, and
computes sub-units only when asked (recording, steering gains, an explicit call), and then only for the
units asked about: sub-units of one unit sum to the unit (eq. 8), so nothing else needs them.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones import get_module, set_module


def merge_table(counts: torch.Tensor) -> torch.Tensor:
    """(units, K_max) gather index of eq. 8 for sub-units stored contiguously by unit with ``counts`` each:
    entry [u, s] = the sub-unit of unit u in slot s, or sum(counts) (a zero column) past K_u."""
    k_max = max(int(counts.max()) if counts.numel() else 1, 1)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(k_max)
    return torch.where(slot[None, :] < counts[:, None], starts[:, None] + slot[None, :],
                       torch.full((1, 1), int(counts.sum())))


def _merge(s: torch.Tensor, table: torch.Tensor, slotwise: bool | None = None) -> torch.Tensor:
    """Eq. 8, channels last: a_u = sum over c of a_u^(c), for ``table`` = :func:`merge_table` (module
    docstring: how, and why so). ``slotwise``: the GPU way (default: on a GPU)."""
    n = s.shape[-1]
    if not (s.is_cuda if slotwise is None else slotwise):
        parent = torch.repeat_interleave(torch.arange(len(table), device=s.device), (table < n).sum(1))
        return s.new_zeros(*s.shape[:-1], len(table)).index_add_(-1, parent, s)
    out = None
    for k in range(table.shape[1]):
        idx = table[:, k]
        part = s[..., idx.clamp(max=max(n - 1, 0))] * (idx < n).to(s.dtype)  # past K_u: x 0
        out = part if out is None else out + part
    return out


class _SubunitAccess(nn.Module):
    """What both modes share: the sub-unit structure (``parent``: the unit of each sub-unit, stored
    contiguously by unit), recording and steering.

      ``record``: False; True keeps every sub-unit activation of the last forward in ``last_subunits``
      (..., n_subunits); a list of units keeps only theirs, with their sub-unit ids in ``last_subunit_ids``;
      ``subunit_gain`` (n_subunits,) or None scales sub-units before the merge (steering; with gains other
      than 1 the layer is, by design, no longer lossless); ``gain_instances`` = nu (or None: all) applies
      each sub-unit's gain only at the nu instances (tokens, positions) of each example where that
      sub-unit is most active (Section C.3).
    """

    def _setup(self, parent: torch.Tensor, out_features: int, kind: str, metadata: dict | None) -> torch.Tensor:
        if kind not in ("linear", "conv1x1"):
            raise ValueError(f"kind must be 'linear' or 'conv1x1', not {kind!r}")
        parent = parent.long().cpu()
        if parent.numel() and (torch.diff(parent) < 0).any():
            raise ValueError("sub-units must be stored contiguously in parent order")
        self.kind, self.out_features = kind, out_features
        self.counts = torch.bincount(parent, minlength=out_features)  # K_u, on the host
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.metadata = metadata or {}
        self.record: bool | list[int] = False
        self.last_subunits: torch.Tensor | None = None
        self.last_subunit_ids: torch.Tensor | None = None
        self.subunit_gain: torch.Tensor | None = None
        self.gain_instances: int | None = None
        return parent

    def _gained(self, s: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """s * gain (channels last), or only at each sub-unit's ``gain_instances`` most active instances of
        each example (an input without an instance axis, (B, C), is gained everywhere)."""
        gain = gain.to(s.dtype)
        if self.gain_instances is None or s.dim() < 3:
            return s * gain
        flat = s.reshape(s.shape[0], -1, s.shape[-1])  # (B, instances, sub-units)
        top = flat.topk(min(self.gain_instances, flat.shape[1]), dim=1).indices
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True)
        return (flat * torch.where(mask, gain, torch.ones_like(gain))).reshape(s.shape)

    @property
    def n_subunits(self) -> int:
        return int(self.counts.sum())

    def subunits_of(self, unit: int) -> list[int]:
        return list(range(int(self.starts[unit]), int(self.starts[unit] + self.counts[unit])))

    def subunit_ids(self, units: Iterable[int] | None = None) -> torch.Tensor:
        """Ids of the sub-units of ``units`` (all when None), unit by unit."""
        if units is None:
            return torch.arange(self.n_subunits)
        return torch.cat([torch.arange(int(self.starts[u]), int(self.starts[u] + self.counts[u])) for u in units]
                         + [torch.zeros(0, dtype=torch.long)])

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(1, -1) if self.kind == "conv1x1" else x  # (B, C, H, W) -> (B, H, W, C)

    def _channels_back(self, y: torch.Tensor) -> torch.Tensor:
        return y.movedim(-1, 1) if self.kind == "conv1x1" else y

    def subunits(self, x: torch.Tensor, units: Iterable[int] | None = None) -> torch.Tensor:
        """Sub-unit pre-activations of a layer input, channels last: (..., sub-units of ``units``; all when
        None, in :meth:`subunit_ids` order)."""
        return self.subunits_of_instances(self._channels_last(x), units)

    def subunits_of_instances(self, q: torch.Tensor, units: Iterable[int] | None = None) -> torch.Tensor:
        """Sub-unit pre-activations of instance rows q (..., upstream), whatever the layer kind."""
        w, b = self._rows(None if units is None else list(units), q.device)
        return F.linear(q, w.to(q.dtype), b.to(q.dtype))

    def _recorded_units(self) -> list[int] | None:
        return None if self.record is True else [int(u) for u in self.record]

    def _keep(self, s: torch.Tensor, units: list[int] | None, ids_of_s: torch.Tensor | None = None) -> None:
        """Record sub-units ``s`` (whose ids are ``ids_of_s``, all when None) for ``units``."""
        ids = self.subunit_ids(units)
        if ids_of_s is not None:  # pick the recorded units' columns out of s
            pos = torch.searchsorted(ids_of_s, ids)
            s = s[..., pos.to(s.device)]
        elif units is not None:
            s = s[..., ids.to(s.device)]
        self.last_subunits, self.last_subunit_ids = s.detach(), ids


class DisentangledLayer(_SubunitAccess):
    """Dense mode: sub-unit projection + merge. Outputs equal the original layer's (eqs. 6, 8) up to
    floating-point summation order. ``parent`` (n_subunits,) — the unit each sub-unit belongs to;
    ``metadata`` — per-unit cluster information (K_u, rho, cluster sizes, ...)."""

    BLOCK_OUTPUTS = 2  # sub-unit activations held at once, in outputs' worth (see _chunked)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, parent: torch.Tensor, out_features: int,
                 kind: str = "linear", metadata: dict | None = None):
        super().__init__()
        parent = self._setup(parent, out_features, kind, metadata)
        self.in_features = weight.shape[1]
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("parent", parent.clone())
        self.register_buffer("merge_index", merge_table(self.counts))

    def _rows(self, units: list[int] | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        if units is None:
            return self.weight, self.bias
        ids = self.subunit_ids(units).to(self.weight.device)
        return self.weight[ids], self.bias[ids]

    def merge(self, s: torch.Tensor) -> torch.Tensor:
        """Eq. 8: a_u = sum over c of a_u^(c), back in the original layout."""
        return self._channels_back(_merge(s, self.merge_index))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record is not False:  # every sub-unit is asked for: compute them all at once
            s = self.subunits(x)
            self._keep(s, self._recorded_units())
            if self.subunit_gain is not None:
                s = self._gained(s, self.subunit_gain.to(s.device))
            return self.merge(s)
        return self._channels_back(self._chunked(self._channels_last(x)))

    def _chunked(self, q: torch.Tensor) -> torch.Tensor:
        """Eqs. 6 and 8 a block of units at a time: each block's sub-units (at most BLOCK_OUTPUTS x
        out_features of them) are merged into their units' outputs before the next block's exist, so the
        layer never holds more than two outputs' worth of sub-unit activations (all 6,144 of ViT-B at EF 8
        held at once cost +55% peak memory on an H200). Each unit's sum runs in the same order as
        :meth:`merge`'s. Two outputs, not one: 1.07x the all-at-once time for this layer on 2 CPU cores at
        batch 32 (one: 1.13x)."""
        out = q.new_empty(*q.shape[:-1], self.out_features)
        gain = None if self.subunit_gain is None else self.subunit_gain.to(q.device)
        for u0, u1 in self._unit_blocks():
            i0, i1 = int(self.starts[u0]), int(self.starts[u1 - 1] + self.counts[u1 - 1])
            s = F.linear(q, self.weight[i0:i1].to(q.dtype), self.bias[i0:i1].to(q.dtype))
            if gain is not None:
                s = self._gained(s, gain[i0:i1])
            out[..., u0:u1] = _merge(s, self._block_table(u0, u1, q.device))
        return out

    def _unit_blocks(self) -> list[tuple[int, int]]:
        """Consecutive unit ranges with at most max(BLOCK_OUTPUTS x out_features, largest K_u) sub-units each."""
        if getattr(self, "_blocks", None) is None:
            cap = max(self.BLOCK_OUTPUTS * self.out_features, int(self.counts.max()))
            blocks, u0, held = [], 0, 0
            for u, k in enumerate(self.counts.tolist()):
                if held + k > cap:
                    blocks.append((u0, u))
                    u0, held = u, 0
                held += k
            self._blocks = blocks + [(u0, self.out_features)]
            self._tables: dict = {}
        return self._blocks

    def _block_table(self, u0: int, u1: int, device) -> torch.Tensor:
        key = (u0, str(device))
        if key not in self._tables:
            self._tables[key] = merge_table(self.counts[u0:u1]).to(device)
        return self._tables[key]

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
        from ..models.backbones import layer_weight_bias

        w, b = layer_weight_bias(layer)
        kind = "conv1x1" if isinstance(layer, nn.Conv2d) else "linear"
        return cls.from_weights(w, b, kind, unit_fractions, unit_omegas, metadata)

    @classmethod
    def from_weights(cls, w: torch.Tensor, b: torch.Tensor, kind: str, unit_fractions: list[np.ndarray],
                     unit_omegas: list[np.ndarray], metadata: dict | None = None) -> "DisentangledLayer":
        """As :meth:`from_fractions`, from the layer's (out, in) weights and bias and its kind ("linear" or
        "conv1x1"), e.g. as :func:`elude.pipeline.stages.job.layer_weights` reads them without the model."""
        rows, biases, parent = [], [], []
        for u, (frac, omega) in enumerate(zip(unit_fractions, unit_omegas)):
            rows.append(torch.from_numpy(frac).float() * w[u])  # eq. 4
            biases.append(torch.from_numpy(omega).float() * b[u])
            parent += [u] * len(omega)
        return cls(torch.cat(rows), torch.cat(biases), torch.tensor(parent), w.shape[0], kind, metadata)


class LazyDisentangledLayer(_SubunitAccess):
    """Lazy mode: ``forward`` is the original layer's (the same module, so bit-identical outputs and no
    parameter or activation beyond the backbone's); sub-unit weights stay where ``rows`` reads them (the
    merge artifact's safetensors file, read by row ranges) until asked for:

    * ``record`` True or a list of units: the forward also computes those units' sub-units;
    * ``subunit_gain``: the units with a gain other than 1 are recomputed from their gained sub-units
      (eq. 8); every other unit keeps the original layer's output;
    * ``subunits(x, units)``: only those units' sub-units.

    The last rows read stay on the device they were used on, so a steering or recording loop reads them once.
    """

    def __init__(self, original: nn.Module, rows: Callable[[list[int] | None], tuple[torch.Tensor, torch.Tensor]],
                 parent: torch.Tensor, kind: str | None = None, metadata: dict | None = None):
        super().__init__()
        from ..models.backbones import layer_shape

        kind = kind or ("conv1x1" if isinstance(original, nn.Conv2d) else "linear")
        n_out, self.in_features = layer_shape(original)
        self.parent = self._setup(parent, n_out, kind, metadata)  # on the host, like counts and starts
        self.original = original
        self._read = rows
        self._last: tuple | None = None

    @classmethod
    def load(cls, folder: str | Path, original: nn.Module) -> "LazyDisentangledLayer":
        """The merge artifact ``folder`` in lazy mode around ``original`` (the layer it disentangles)."""
        from safetensors import safe_open

        from ..models.backbones import layer_shape

        folder = Path(folder)
        info = json.loads((folder / "layer.json").read_text())
        n_out, n_in = layer_shape(original)
        if (n_out, n_in) != (info["out_features"], info["in_features"]):
            raise ValueError(f"{folder}/layer.json disentangles a {info['in_features']} -> {info['out_features']} "
                             f"layer, but the layer given is {n_in} -> {n_out}: "
                             "pass the module the merge artifact was made from")
        path = str(folder / "layer.safetensors")
        with safe_open(path, framework="pt") as f:
            parent = f.get_tensor("parent")
        counts = torch.bincount(parent.long(), minlength=info["out_features"])
        starts = (torch.cumsum(counts, 0) - counts).tolist()

        def rows(units):
            with safe_open(path, framework="pt") as f:
                if units is None:
                    return f.get_tensor("weight"), f.get_tensor("bias")
                w_sl, b_sl = f.get_slice("weight"), f.get_slice("bias")
                ranges = [(starts[u], starts[u] + int(counts[u])) for u in units]
                return (torch.cat([w_sl[a:e] for a, e in ranges]), torch.cat([b_sl[a:e] for a, e in ranges]))

        return cls(original, rows, parent, info["kind"], info["metadata"])

    @classmethod
    def from_dense(cls, dense: DisentangledLayer, original: nn.Module) -> "LazyDisentangledLayer":
        """A lazy view of a dense layer held in memory (its weights stay where they are)."""
        def rows(units):
            return dense._rows(units, dense.weight.device)

        return cls(original, rows, dense.parent, dense.kind, dense.metadata)

    def _rows(self, units: list[int] | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (None if units is None else tuple(units), str(device))
        if units is not None and not units:
            return torch.zeros(0, self.in_features, device=device), torch.zeros(0, device=device)
        if self._last is None or self._last[0] != key:
            w, b = self._read(units)
            self._last = (key, w.to(device), b.to(device))
        return self._last[1], self._last[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.original(x)
        if self.record is False and self.subunit_gain is None:
            return out
        recorded = self._recorded_units() if self.record is not False else []
        steered = [] if self.subunit_gain is None else \
            torch.unique(self.parent_of(torch.nonzero(self.subunit_gain != 1).flatten().cpu())).tolist()
        if self.record is True:
            units = None
        else:
            units = sorted(set(recorded) | set(steered))
        s = self.subunits(x, units)
        ids = self.subunit_ids(units)
        if self.record is not False:
            self._keep(s, recorded, None if units is None else ids)
        if steered:
            pos = torch.searchsorted(ids, self.subunit_ids(steered))
            gained = self._gained(s[..., pos.to(s.device)], self.subunit_gain[self.subunit_ids(steered)].to(s.device))
            merged = _merge(gained, merge_table(self.counts[steered]).to(s.device))
            out = self._channels_last(out).clone()
            out[..., steered] = merged.to(out.dtype)
            out = self._channels_back(out)
        return out

    def parent_of(self, subunit_ids: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.starts + self.counts, subunit_ids, right=True)


def disentangle(model: nn.Module, layer_path: str, merge_dir: str | Path, mode: str = "lazy"):
    """Swap the disentangled layer of the merge artifact ``merge_dir`` into ``model`` at ``layer_path`` and
    return it. ``lazy`` (default): the original layer's outputs, sub-units on demand; ``dense``: the
    projection + merge of Section B.4 (what verify checks)."""
    original = get_module(model, layer_path)
    if mode == "lazy":
        layer = LazyDisentangledLayer.load(merge_dir, original)
    elif mode == "dense":
        layer = DisentangledLayer.load(merge_dir).to(original.weight.device)
    else:
        raise ValueError(f"mode must be 'lazy' or 'dense', not {mode!r}")
    set_module(model, layer_path, layer)
    return layer

def swap_in(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Hot-swap ``new`` in at ``path``; returns the original module for :func:`swap_out`."""
    get_module(model, path)
    return set_module(model, path, new)


def swap_out(model: nn.Module, path: str, original: nn.Module) -> nn.Module:
    """Put the original module back; returns the disentangled one."""
    return set_module(model, path, original)


@contextlib.contextmanager
def swapped(model: nn.Module, path: str, layer: nn.Module, back_to_cpu: bool = False):
    """``layer`` in place of the module at ``path`` for a ``with`` block, the original restored on exit
    (also on error). ``back_to_cpu``: a dense layer that lives on the CPU between uses joins the model's
    device on entry and returns on exit (not for a lazy layer: it holds the model's own module)."""
    if back_to_cpu:
        layer = layer.to(next(model.parameters()).device)
    original = swap_in(model, path, layer)
    try:
        yield layer
    finally:
        swap_out(model, path, original)
        if back_to_cpu:
            layer.cpu()
