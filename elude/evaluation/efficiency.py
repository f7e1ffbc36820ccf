"""Inference cost (Section B.4, Table 5): ms per batch and peak memory of the backbone with each method in
place, measured side by side on one loaded model.

GPU protocol (the paper's): ``warmup`` forward passes, a synchronise, a reset of the peak-memory counter,
then ``iterations`` passes each timed by a pair of CUDA events; ms/batch is the mean (and std) over the
timed passes, peak memory ``torch.cuda.max_memory_allocated()`` (weights + activations). CPU protocol:
the same with ``time.perf_counter`` per pass and, for memory, the process's peak resident set (VmHWM,
reset through ``/proc/self/clear_refs`` where Linux allows it) minus ``floor_mb``, the resident set the
caller measured before it loaded any model (Python, the libraries, the input batch), so the number is the
model's weights and activations, as on the GPU. Every variant is timed on the same model object, the layer
hot-swapped in place (ELUDe) or a hook after it (baselines); ``torch.compile`` is applied per variant when
asked. Nothing here asserts a time: the stage and ``bench/efficiency.py`` report what they measure.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import re
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..util.timing import timed_ms

log = logging.getLogger(__name__)


def rss_mb(peak: bool = False) -> float:
    """The process's resident set (VmRSS) or its peak since the last reset (VmHWM), in MB."""
    key = "VmHWM" if peak else "VmRSS"
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1)) / 1024


def _reset_peak(device: torch.device) -> bool:
    """Reset the peak-memory counter; False where the CPU's cannot be reset (the peak then covers the
    whole process so far: an upper bound)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def model_bytes(*modules: nn.Module) -> int:
    """Bytes of the distinct parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            key = (t.data_ptr(), t.numel())
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


def _peak_mb(device: torch.device, floor_mb: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mb(peak=True) - floor_mb


@torch.no_grad()
def measure(model: nn.Module, inputs, variants: dict[str, Callable], *, warmup: int, iterations: int,
            compile: bool, rounds: int = 1, floor_mb: float = 0.0) -> dict[str, dict]:
    """Time every variant side by side on ``model``. ``variants``: name -> fn() returning a context manager
    under which the model computes with that method in place (a null context for the backbone), yielding
    the extra modules it adds (for the parameter bytes).

    Each variant gets ``warmup`` passes (compiled first when ``compile``); its ``iterations`` timed passes
    are split over ``rounds`` rounds (1 when compiled) that visit the variants in alternating order, so that
    a drift of the machine (clock, caches, allocator) does not favour the variants measured last. Peak memory: the
    largest over the variant's rounds, each after a reset. Adds each variant's ratios to the first one."""
    from ..models.backbones import call_model

    device = next(model.parameters()).device
    names = list(variants)
    rounds = 1 if compile else rounds  # a round reloads each method: compiled, it would recompile every round
    per_round = [iterations // rounds + (r < iterations % rounds) for r in range(rounds)]
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks = {n: 0.0 for n in names}
    exact, params, compiled = True, {}, {}
    with torch._dynamo.config.patch(cache_size_limit=max(8, 2 * len(names))):
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                release(device)
                with variants[name]() as extra:
                    if name not in compiled:
                        compiled[name] = torch.compile(model) if compile else model
                        params[name] = model_bytes(model, *(extra or ())) / 2**20

                    def fn(x, m=compiled[name]):
                        return call_model(m, x)

                    for _ in range(warmup if r == 0 else min(warmup, 2)):
                        fn(inputs)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    release(device)  # the warm-up's freed activations leave the resident set: the peak re-counts them
                    exact &= _reset_peak(device)
                    times[name] += timed_ms(fn, inputs, per_round[r], device)
                    log.info("round %d/%d, %s: %.2f ms/batch so far", r + 1, rounds, name, float(np.mean(times[name])))
                    peaks[name] = max(peaks[name], _peak_mb(device, floor_mb))
                    del fn
    rows = {n: {"ms_per_batch": float(np.mean(times[n])), "ms_std": float(np.std(times[n])),
                "peak_mem_mb": peaks[n], "param_mb": params[n], "iterations": len(times[n]), "warmup": warmup,
                "rounds": rounds, "compile": compile, "peak_reset": exact} for n in names}
    ref = rows[names[0]]
    for row in rows.values():
        for key in ("ms_per_batch", "peak_mem_mb", "param_mb"):
            row[f"{key}_ratio"] = row[key] / ref[key] if ref[key] > 0 else float("nan")
    return rows


@contextlib.contextmanager
def nothing():
    yield ()


def release(device: torch.device) -> None:
    """Free what the last variant left: Python garbage, torch's cached GPU blocks, and glibc's free heap
    pages (so the CPU's resident set goes back down before the next reset)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def in_place(model: nn.Module, layer_path: str, load: Callable[[], nn.Module]):
    """ELUDe's variants: the layer ``load()`` gives, hot-swapped in (B.4), dropped on exit."""
    from ..method.layers import swapped

    with swapped(model, layer_path, load()):
        yield ()


@contextlib.contextmanager
def after(model: nn.Module, layer_path: str, load: Callable[[], nn.Module]):
    """A baseline's variant: its forward hooked after the untouched layer, its reconstruction in place of the
    layer output (B.4; the hook of its accuracy in :func:`elude.evaluation.scoring.score_baseline`). The baseline
    is loaded on entry and dropped on exit, so no variant's memory holds another's modules."""
    from .scoring import substituted

    baseline = load()
    with substituted(model, layer_path, lambda q, a: baseline.apply(q, a)[1]):
        yield (baseline,)


def method_variants(model: nn.Module, layer_path: str, dense: Callable | None = None, lazy: Callable | None = None,
                    baselines: dict[str, Callable] | None = None) -> dict[str, Callable]:
    """Table 5's variants, the backbone first: ELUDe dense and lazy, then each baseline. Each method is
    given as a loader (fn() -> module on the model's device), called when its variant is measured."""
    out: dict[str, Callable] = {"backbone": nothing}
    if dense is not None:
        out["elude_dense"] = lambda: in_place(model, layer_path, dense)
    if lazy is not None:
        out["elude_lazy"] = lambda: in_place(model, layer_path, lazy)
    for family, load in (baselines or {}).items():
        out[family] = lambda load=load: after(model, layer_path, load)
    return out


def input_batch(dataset, batch_size: int, device: torch.device):
    """The first ``batch_size`` examples of ``dataset`` (cycled when it has fewer) at its native resolution,
    on ``device``: a tensor, or a dict of tensors."""
    from ..models.data import iter_batches

    idx = [i % len(dataset) for i in range(batch_size)]
    x = next(iter(iter_batches(dataset, batch_size, idx))).inputs
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def compile_default(setting: str | bool, device: torch.device) -> bool:
    """``efficiency.compile``: true, false, or auto = on with CUDA (the paper's protocol), off on the CPU,
    where inductor's compile time (~10 s per variant for the demo's 4-block ViT on 2 cores, more for
    larger models) would dwarf a short benchmark."""
    return device.type == "cuda" if setting == "auto" else bool(setting)
