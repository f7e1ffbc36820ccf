"""Models, target layers, and how a layer's activations become instances.

A backbone is described by a small JSON-able spec (``model.json``) plus a weights file, so every stage
rebuilds exactly the same network. Kinds: ``demo`` (a timm VisionTransformer trained by the backbone
stage on the embedded digits data), ``timm`` (any timm model by name, weights from a local file),
``hub`` (a torch.hub entry point from a local repository clone, or ``owner/name`` found in the user's
hub cache, e.g. ``facebookresearch/dinov2`` + ``dinov2_vitb14``) and ``factory`` (a user function
``"package.module:function"`` returning a torch module, so any model can be disentangled). The backbone
stage saves the built model's state dict; later stages rebuild the architecture (with
``pretrained=False`` where the entry point takes it) and load those weights, so nothing is fetched again.
"""
from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)
def build_timm(name: str, kwargs: dict) -> nn.Module:
    import timm

    return timm.create_model(name, **{"pretrained": False, **kwargs})  # kwargs' own pretrained wins (paper configs)


CHECKPOINT_KEYS = ("state_dict_ema", "state_dict", "model")  # timm's load_checkpoint order (use_ema=True)


def load_weights(path: str | Path, trust_pickle: bool = False, checkpoint_key: str | None = None,
                 key: str = "backbone.timm.weights") -> dict[str, torch.Tensor]:
    """A state dict from a local weights file as people have them: safetensors, a bare torch state dict, or a
    training checkpoint that wraps one (timm's: ``state_dict_ema``, else ``state_dict``, else ``model``, as
    timm's own loader picks; ``checkpoint_key`` names one), with DataParallel's ``module.`` prefix removed.
    Pickles are read with ``weights_only=True`` plus what a timm checkpoint holds besides tensors (its training
    args, an ``argparse.Namespace``); anything else needs ``trust_pickle`` (unpickling runs code the file names).
    Errors name ``key`` (the config key of the file) and the fix."""
    import argparse
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist (a local .safetensors, .pth or timm checkpoint file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif trust_pickle:
        state = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            why = str(exc).strip().splitlines()[-1][:200]
            raise ValueError(f"{key}: {path} holds objects that a safe load refuses ({why}). Save the state dict as "
                             ".safetensors, or, if you trust the file, set backbone.timm.trust_pickle: true "
                             "(unpickling runs code that the file names)") from None
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = [k for k in ([checkpoint_key] if checkpoint_key else CHECKPOINT_KEYS) if isinstance(state.get(k), dict)]
        if not found:
            raise ValueError(f"{key}: {path} is a checkpoint without a state dict under "
                             f"{[checkpoint_key] if checkpoint_key else list(CHECKPOINT_KEYS)} (its keys: "
                             f"{sorted(map(str, state))[:12]}): set backbone.timm.checkpoint_key to the one that holds it")
        state = state[found[0]]
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_hub(repo: str, entry: str, kwargs: dict) -> nn.Module:
    """torch.hub entry point: ``repo`` is a local clone (a folder with hubconf.py) or ``owner/name`` in the
    hub cache (``$TORCH_HOME/hub``); no validation round trip to GitHub."""
    local = Path(repo).expanduser()
    if local.is_dir():
        if not (local / "hubconf.py").exists():
            raise FileNotFoundError(f"backbone.hub.repo: {repo} has no hubconf.py (expected a torch.hub repository)")
        return torch.hub.load(str(local), entry, source="local", **kwargs)
    return torch.hub.load(repo, entry, source="github", trust_repo=True, skip_validation=True, **kwargs)


def import_target(target: str, key: str):
    """The object named by ``"package.module:function"`` (``key`` names the config key in errors)."""
    import importlib

    module_name, _, fn_name = target.partition(":")
    if not module_name or not fn_name:
        raise ValueError(f"{key}: {target!r} must look like 'package.module:function'")
    try:
        return getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"{key}: cannot import {target!r} ({exc}); make the module "
                          "importable in every job (install it, or put its folder on PYTHONPATH)") from None


def build_factory(target: str, kwargs: dict) -> nn.Module:
    """A user factory ``"package.module:function"`` (importable in every job) returning an nn.Module."""
    model = import_target(target, "backbone.factory.target")(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"backbone.factory.target: {target!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("backbone.kind hf needs the transformers package: pip install transformers") from None
    return transformers


def load_hf(model: str, cls: str, submodule: str | None, kwargs: dict) -> tuple[nn.Module, dict]:
    """A Hugging Face model by hub id (from the user's cache, $HF_HOME) or local folder, loaded with
    ``transformers.<cls>.from_pretrained``; ``submodule`` (dotted attributes, e.g. ``vision_model`` for
    SigLIP2, ``model.vision_tower`` for LLaVA-OneVision) picks the part to disentangle. Returns the module
    and the spec that rebuilds its architecture without the hub (class and config, see :func:`build_hf`)."""
    tf = _transformers()
    if not hasattr(tf, cls):
        raise ValueError(f"backbone.hf.class: transformers has no class {cls!r} (e.g. AutoModel, "
                         "LlavaOnevisionForConditionalGeneration)")
    full = getattr(tf, cls).from_pretrained(model, **kwargs)
    module = full
    for attr in (submodule.split(".") if submodule else []):
        if not hasattr(module, attr):
            raise KeyError(f"backbone.hf.submodule: {type(module).__name__} has no attribute {attr!r}; its "
                           f"children: {[n for n, _ in module.named_children()]}")
        module = getattr(module, attr)
    config = module.config
    spec = {"kind": "hf", "model": model, "module": f"{type(module).__module__}:{type(module).__qualname__}",
            "config_class": f"{type(config).__module__}:{type(config).__qualname__}", "config": config.to_dict()}
    return module.float(), spec


def save_tokenizer(name: str, folder: Path) -> None:
    """Save the tokenizer ``name`` (backbone.tokenizer: a Hugging Face hub id in the user's cache, or a folder) to
    ``folder``, the backbone artifact's ``tokenizer/``, which every later stage reads."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ValueError(f"backbone.tokenizer: no tokenizer {name!r} could be loaded ({str(exc).splitlines()[0][:200]}); "
                         "give a folder with tokenizer files or a hub id in your cache (HF_HOME)") from None
    tok.save_pretrained(str(folder))


def build_hf(spec: dict) -> nn.Module:
    """The architecture of a saved Hugging Face (sub)module: its class built from its config (no hub access)."""
    _transformers()
    config = import_target(spec["config_class"], "backbone.hf").from_dict(spec["config"])
    return import_target(spec["module"], "backbone.hf")(config)


def build_from_spec(spec: dict, rebuild: bool = True) -> nn.Module:
    """The architecture of a spec. ``rebuild``: weights will be loaded from the artifact, so an entry
    point's own ``pretrained`` download/cache lookup is switched off."""
    kwargs = dict(spec.get("kwargs", {}))
    if rebuild and "pretrained" in kwargs:
        kwargs["pretrained"] = False
    if spec["kind"] == "timm":
        return build_timm(spec["name"], kwargs)
    if spec["kind"] == "hub":
        return build_hub(spec["repo"], spec["entry"], kwargs)
    if spec["kind"] == "factory":
        return build_factory(spec["target"], kwargs)
    if spec["kind"] == "hf":
        return build_hf(spec)
    raise ValueError(f"backbone kind {spec['kind']!r} is not supported; allowed: 'timm', 'hub', 'hf', 'factory'")


def save_backbone(model: nn.Module, spec: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    # clone: tied parameters share storage, which safetensors refuses to write twice
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "model.json").write_text(json.dumps(spec, indent=2, sort_keys=True))


def load_backbone(folder: str | Path) -> nn.Module:
    """Rebuild a backbone saved by :func:`save_backbone`, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = json.loads((folder / "model.json").read_text())
    model = build_from_spec(spec)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path; a wrong path names the closest existing ones."""
    names = dict(model.named_modules())
    if path not in names:
        close = difflib.get_close_matches(path, list(names), n=5, cutoff=0.5)
        raise KeyError(
            f"layer {path!r} is not a module of {type(model).__name__}; nearest existing names: {close}"
        )
    return names[path]


def set_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Replace the submodule at ``path`` and return the one that was there."""
    parent_path, _, attr = path.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def is_hf_conv1d(layer: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's ``mlp.c_proj``): a Linear whose weight is stored (in, out)."""
    return type(layer).__name__ == "Conv1D" and hasattr(layer, "nf") and getattr(layer, "weight", None) is not None


def check_target_layer(layer: nn.Module, path: str) -> None:
    is_conv1x1 = isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1
    if not (isinstance(layer, nn.Linear) or is_conv1x1 or is_hf_conv1d(layer)):
        raise TypeError(
            f"backbone.layer: {path!r} is a {type(layer).__name__}; ELUDe disentangles nn.Linear, 1x1 nn.Conv2d "
            "(groups=1) or Hugging Face Conv1D layers only (exact surgery needs a layer linear in its input): pick "
            "such a layer (e.g. a ViT block's 'mlp.fc2', GPT-2's 'transformer.h.5.mlp.c_proj', Llama's "
            "'model.layers.5.mlp.down_proj')"
        )


def layer_weight_bias(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) as (units, upstream) and (units,) float32 CPU tensors, for Linear, 1x1 Conv2d and Conv1D alike."""
    w = layer.weight.detach().float().cpu()
    w = w.T.contiguous() if is_hf_conv1d(layer) else w.reshape(w.shape[0], -1)
    b = layer.bias.detach().float().cpu() if layer.bias is not None else torch.zeros(w.shape[0])
    return w, b


def layer_shape(layer: nn.Module) -> tuple[int, int]:
    """(units, upstream) of a target layer, without copying its weight."""
    w = layer.weight
    return (w.shape[1], w.shape[0]) if is_hf_conv1d(layer) else (w.shape[0], w[0].numel())


def is_channels_first(layer: nn.Module) -> bool:
    """Whether the layer reads and writes (B, C, H, W): a Conv2d, or a disentangled 1x1 conv."""
    return isinstance(layer, nn.Conv2d) or getattr(layer, "kind", None) == "conv1x1"


def instances_of(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(batch, instances per image, features) for the tensor a layer reads or writes."""
    if is_channels_first(layer):
        return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
    return x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, D); (B, D) becomes (B, 1, D)


IMAGENET_PREPROCESS = {"size": 224, "crop_pct": 0.875, "interpolation": "bicubic", "channels": 3,
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # DINOv2's eval transform


def _input_geometry(model: nn.Module) -> tuple[int | None, int | None]:
    """(image size, channels) the model itself declares, where it does (ViT patch embeddings, first conv)."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return size, (first_conv.in_channels if first_conv is not None else None)


def native_preprocess(model: nn.Module, spec: dict) -> dict | None:
    """The model's own eval preprocessing as {size, crop_pct, mean, std, interpolation, channels}: timm's
    data config (any timm model, also via torch.hub), the Hugging Face image processor saved with the
    model, DINOv2's ImageNet transform for other hub models; None where the model declares none."""
    pre = None
    if hasattr(model, "pretrained_cfg") or spec["kind"] == "timm":
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        pre = {"size": int(cfg["input_size"][-1]), "crop_pct": float(cfg["crop_pct"]), "mean": list(cfg["mean"]),
               "std": list(cfg["std"]), "interpolation": cfg["interpolation"] or "bicubic", "channels": 3}
    elif spec["kind"] == "hf":
        pre = _hf_preprocess(spec["model"])
    elif spec["kind"] == "hub":
        pre = dict(IMAGENET_PREPROCESS)
    elif hasattr(model, "preprocess"):  # a factory model may declare its own
        pre = dict(model.preprocess)
    if pre is not None:  # timm's data config keeps the pretrained 224 x 3 when a model is built smaller
        size, channels = _input_geometry(model)
        pre["size"], pre["channels"] = size or pre["size"], channels or pre["channels"]
        if len(pre["mean"]) != pre["channels"]:
            pre["mean"], pre["std"] = [float(np.mean(pre["mean"]))], [float(np.mean(pre["std"]))]
    return pre


def _hf_preprocess(model_id: str) -> dict | None:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(model_id)
    except (OSError, ValueError):
        return None
    size, crop = getattr(proc, "size", None) or {}, getattr(proc, "crop_size", None) or {}
    side = size.get("height") or size.get("shortest_edge")
    crop_side = crop.get("height") if getattr(proc, "do_center_crop", False) and crop else side
    interp = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(getattr(proc, "resample", 3)), "bicubic")
    squash = "height" in size and not getattr(proc, "do_center_crop", False)  # SigLIP: straight to H x W
    return {"size": int(crop_side), "crop_pct": float(crop_side / side), "interpolation": interp, "channels": 3,
            "mean": list(proc.image_mean), "std": list(proc.image_std), "resize": "squash" if squash else "short_side"}


def call_model(model: nn.Module, inputs, device: torch.device | str | None = None):
    """Forward a batch: a tensor positionally, a dict of tensors as keyword arguments."""
    if isinstance(inputs, dict):
        return model(**{k: v.to(device) if device is not None else v for k, v in inputs.items()})
    return model(inputs.to(device) if device is not None else inputs)


def output_tensors(out) -> list[torch.Tensor]:
    """Every floating tensor in a model output (a tensor, tuple, dict or Hugging Face ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in output_tensors(o)]
    return []


def pooled_output(out) -> torch.Tensor | None:
    """A Hugging Face model's ``pooler_output`` (B, D), if its output has one."""
    pooled = out.get("pooler_output") if isinstance(out, dict) else None
    return pooled if isinstance(pooled, torch.Tensor) and pooled.dim() == 2 else None


def resolve_device(name: str) -> torch.device:
    """The torch device for ``compute.device``; 'cuda' without a visible GPU fails with what to do."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("compute.device is 'cuda' but torch sees no CUDA GPU here: run on a GPU node "
                           "(the SLURM profile requests one per job) or set compute.device: cpu")
    return torch.device(name)
