"""The baseline families as modules, with the input/output normalisation they are trained in.

From overcomplete 0.3.0: Vanilla (``SAE``: Linear encoder + ReLU, unit-norm dictionary), TopK
(``TopKSAE``), BatchTopK (``BatchTopKSAE``), JumpReLU (``JumpSAE``), Matching Pursuit (``MpSAE``),
Archetypal (``RATopKSAE``: TopK on a relaxed archetypal dictionary). Written here on its building blocks:
Matryoshka (BatchTopK with nested prefix losses, Bussmann et al. 2025; overcomplete has none) and the
Transcoder (Vanilla architecture, encoder on the layer input q, dictionary on the layer output a).

A :class:`Baseline` sees instance rows: an SAE reads and rebuilds a = W q + b; a transcoder reads q and
predicts a. Both work in standardised coordinates (x - mean) / scale, with a per-feature mean and one
scalar scale (the RMS deviation) measured on the training data: the mean plays the decoder bias that
overcomplete's dictionaries lack, and the scale makes learning rates comparable across layers.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import overcomplete_sae

SAE_FAMILIES_WITH_K = ("topk", "batchtopk", "mp", "matryoshka")


def n_active(settings: dict, n_features: int) -> int:
    """Target active features per instance: ``sparsity`` (20), or for Archetypal ``archetypal_ratio`` of the
    dictionary (10%, Sec. E.1)."""
    if settings["family"] == "archetypal":
        return max(1, round(settings["archetypal_ratio"] * n_features))
    return min(settings["sparsity"], n_features)


def build(settings: dict, d_in: int, d_out: int, n_features: int, points: torch.Tensor | None = None,
          device: str = "cpu") -> nn.Module:
    """The overcomplete module of a family (``settings["family"]``), freshly initialised from torch's RNG, on
    ``device`` (overcomplete's modules keep the device they were built for, e.g. for matching pursuit's codes)."""
    sae = overcomplete_sae()
    family = settings["family"]
    k = n_active(settings, n_features) if family in SAE_FAMILIES_WITH_K + ("archetypal",) else None
    if family == "vanilla":
        return sae.SAE(d_out, n_features, device=device)
    if family == "transcoder":  # the encoder reads q (d_in), the dictionary writes a (d_out)
        encoder = sae.EncoderFactory.create_module("linear", d_in, n_features, device=device)
        return sae.SAE(d_out, n_features, encoder_module=encoder, device=device)
    if family == "topk":
        return sae.TopKSAE(d_out, n_features, top_k=k, device=device)
    if family in ("batchtopk", "matryoshka"):
        return batch_topk(d_out, n_features, k, device)
    if family == "jumprelu":
        return sae.JumpSAE(d_out, n_features, device=device)
    if family == "mp":
        return sae.MpSAE(d_out, n_features, k=k, device=device)
    if family == "archetypal":
        if points is None:
            raise ValueError("archetypal: the candidate points C are needed to build the dictionary")
        return sae.RATopKSAE(d_out, n_features, points=points.to(device), top_k=k, device=device)
    raise ValueError(f"baselines.families: unknown family {family!r}")


def batch_topk(d: int, n_features: int, top_k: int, device: str = "cpu") -> nn.Module:
    """overcomplete's BatchTopKSAE with its budget given per instance: a batch of B rows keeps its k x B
    largest codes (overcomplete's ``top_k`` counts the whole batch); at inference, the running threshold."""
    sae = overcomplete_sae()

    class PerInstanceBatchTopKSAE(sae.BatchTopKSAE):
        def encode(self, x):
            self.top_k = self.k_per_instance * x.shape[0]
            return super().encode(x)

    model = PerInstanceBatchTopKSAE(d, n_features, top_k=top_k, device=device)
    model.k_per_instance = top_k
    return model


def prefix_sizes(n_features: int, fractions: list[float]) -> list[int]:
    """Matryoshka's nested dictionary sizes: the given fractions of the dictionary, the whole one last."""
    return sorted({max(1, min(n_features, round(f * n_features))) for f in fractions} | {n_features})


class Baseline(nn.Module):
    """A trained family member with its normalisation: ``apply(q, a)`` gives (codes, reconstruction of a)."""

    def __init__(self, settings: dict, d_in: int, d_out: int, n_features: int, points: torch.Tensor | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__()
        self.settings, self.d_in, self.d_out, self.n_features = dict(settings), d_in, d_out, n_features
        self.transcoder = settings["family"] == "transcoder"
        self.model = build(settings, d_in, d_out, n_features, points, str(device))
        d_read = d_in if self.transcoder else d_out
        for name, d in (("in_mean", d_read), ("out_mean", d_out)):
            self.register_buffer(name, torch.zeros(d, device=device))
        for name in ("in_scale", "out_scale"):
            self.register_buffer(name, torch.ones((), device=device))

    def set_normalisation(self, in_mean, in_scale, out_mean, out_scale) -> None:
        for name, v in (("in_mean", in_mean), ("in_scale", in_scale), ("out_mean", out_mean), ("out_scale", out_scale)):
            getattr(self, name).copy_(torch.as_tensor(v, dtype=torch.float32))  # copy_ moves it to the buffer's device

    def inputs(self, q: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, target), standardised: (a, a) for an SAE, (q, a) for a transcoder."""
        x = q if self.transcoder else a
        return (x - self.in_mean) / self.in_scale, (a - self.out_mean) / self.out_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Standardised input -> (pre-codes, codes, standardised reconstruction)."""
        return self.model(x)

    def pre_activations(self, x: torch.Tensor, pre_codes: torch.Tensor) -> torch.Tensor:
        """Per-feature pre-activations z~ for the dead-feature term (E.1). Matching Pursuit returns its residual
        as pre-codes, so its features' pre-activations are the input's correlations with the atoms."""
        return x @ self.model.get_dictionary().T if self.settings["family"] == "mp" else pre_codes

    @torch.no_grad()
    def apply(self, q: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance rows (..., d_in), (..., d_out) -> codes (..., n_features), reconstruction of a (..., d_out)."""
        shape, dev = a.shape[:-1], self.in_mean.device
        x, _ = self.inputs(q.reshape(-1, q.shape[-1]).float().to(dev), a.reshape(-1, a.shape[-1]).float().to(dev))
        _, codes, rec = self.model(x)
        rec = rec * self.out_scale + self.out_mean
        return codes.reshape(*shape, -1).to(a.device), rec.reshape(*shape, -1).to(a.device)

    def dictionary(self) -> torch.Tensor:
        """Decoder atoms (n_features, d_out) in standardised output coordinates."""
        return self.model.get_dictionary().detach()

    # --- persistence ------------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if getattr(self.model, "running_threshold", None) is not None:  # BatchTopK: an attribute, not a buffer
            out["model.running_threshold"] = self.model.running_threshold.detach().reshape(())
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if "model.running_threshold" in state:
            self.model.running_threshold = state.pop("model.running_threshold")
        self.load_state_dict(state)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        was_training = self.training
        self.eval()  # fuses overcomplete's dictionaries
        save_file(self.state(), str(folder / "model.safetensors"))
        spec = {"settings": self.settings, "d_in": self.d_in, "d_out": self.d_out, "n_features": self.n_features}
        if "model.dictionary.C" in self.state_dict():
            spec["n_points"] = int(self.state_dict()["model.dictionary.C"].shape[0])
        (folder / "model.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        self.train(was_training)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Baseline":
        from safetensors.torch import load_file

        folder = Path(folder)
        spec = json.loads((folder / "model.json").read_text())
        state = load_file(str(folder / "model.safetensors"), device=str(device))
        points = state.get("model.dictionary.C")
        model = cls(spec["settings"], spec["d_in"], spec["d_out"], spec["n_features"], points, device)
        model.load_state(state)
        model.train()  # recompute, then fuse, overcomplete's dictionary from the loaded parameters
        return model.eval()
