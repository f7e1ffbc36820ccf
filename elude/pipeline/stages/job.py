"""What every stage job shares: :class:`Stage` (the artifact a job publishes: name, id, parameters, input ids),
and the prologue of the jobs that run the model (the model on its device, the target layer, the dataset)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..artifacts import atomic_dir

if TYPE_CHECKING:  # (torch is imported where it is used: the workflow's main process imports this module)
    import torch
    from torch import nn


@dataclass
class Stage:
    name: str
    id: str
    params: dict
    inputs: dict[str, str] = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)  # settings that do not change results (not in the id)

    def publish(self, out: str | Path, resumable: bool = False, **extra):
        return atomic_dir(out, self.name, self.id, self.params, self.inputs, extra, resumable)


def load_layer(backbone_dir: str | Path):
    """(model, its target layer, layer.json) of a backbone artifact."""
    from ...models import backbones

    model = backbones.load_backbone(backbone_dir)
    info = json.loads((Path(backbone_dir) / "layer.json").read_text())
    return model, backbones.get_module(model, info["path"]), info


def layer_weights(backbone_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(W, b, layer.json + "kind") of the target layer, as :func:`elude.models.backbones.layer_weight_bias`
    gives them, read straight from the saved weights: stages that need only the layer's weights skip
    rebuilding the model (importing timm alone takes ~1.5-2.5 s per job). "kind": "linear" or "conv1x1" (a 4-D
    weight). Falls back to the model where the keys differ."""
    import torch
    from safetensors import safe_open
    from torch import nn

    from ...models import backbones

    info = json.loads((Path(backbone_dir) / "layer.json").read_text())
    with safe_open(str(Path(backbone_dir) / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        if f"{info['path']}.weight" in keys:
            w = f.get_tensor(f"{info['path']}.weight").float()
            info["kind"] = "conv1x1" if w.dim() == 4 else "linear"
            w = w.T.contiguous() if info.get("type") == "Conv1D" else w.reshape(w.shape[0], -1)  # stored (in, out)
            bias = f"{info['path']}.bias"
            return w, f.get_tensor(bias).float() if bias in keys else torch.zeros(w.shape[0]), info
    layer = load_layer(backbone_dir)[1]
    w, b = backbones.layer_weight_bias(layer)
    return w, b, {**info, "kind": "conv1x1" if isinstance(layer, nn.Conv2d) else "linear"}


def load_preprocess(backbone_dir: str | Path) -> dict | None:
    """The preprocessing the backbone stage recorded for image files (None: the data's own tensors)."""
    return json.loads((Path(backbone_dir) / "preprocess.json").read_text())


def dataset(data: dict, split: str, backbone_dir: str | Path):
    """Split ``split`` ("probe" or "eval") of the ``data`` section, preprocessed as the backbone wants."""
    from ...models.data import open_dataset

    return open_dataset(data, split, load_preprocess(backbone_dir), Path(backbone_dir) / "tokenizer")


class ModelJob(NamedTuple):
    model: nn.Module  # on ``device``, in eval mode
    layer: nn.Module  # the target layer (a module of ``model``)
    info: dict  # layer.json: path, type, n_units, n_upstream
    data: object  # the dataset of ``split``, with the backbone's preprocessing
    device: torch.device


def model_job(params: dict, backbone_dir: str | Path, split: str) -> ModelJob:
    """The prologue of a job that runs the model: the device ``params["device"]`` (an error naming the fix when
    CUDA is asked for and missing), the backbone on it, its target layer and the ``params["data"]`` split."""
    from ...models.backbones import resolve_device

    device = resolve_device(params["device"])
    model, layer, info = load_layer(backbone_dir)
    return ModelJob(model.to(device), layer, info, dataset(params["data"], split, backbone_dir), device)
