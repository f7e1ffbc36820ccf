"""The activation cache: the target layer's inputs q for every probe instance, as chunked zarr v3.

Layout of a cache folder: ``q.zarr`` with array ``q`` (instances, upstream units) in row chunks and
``index`` (instances, 2) = (image, token/position). Instances are ordered image-major, token-minor.
Memory bound: one batch of activations plus one chunk of rows.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import nn

from .backbones import instances_of
from .progress import progress

log = logging.getLogger(__name__)


def _compressors(name: str):
    if name == "none":
        return None
    from zarr.codecs import BloscCodec

    cname, _, level = name.partition("-")  # e.g. "lz4-1", "zstd-3"
    return BloscCodec(cname=cname, clevel=int(level or 1), shuffle="shuffle")


@torch.no_grad()
def write_cache(model: nn.Module, layer: nn.Module, images: torch.Tensor, folder: Path, *, batch_size: int,
                dtype: str, chunk_rows: int, compressor: str) -> dict:
    """Run ``images`` through ``model`` and store the inputs of ``layer`` as instances."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    root = zarr.open_group(str(folder / "q.zarr"), mode="w")
    q_arr = idx_arr = None
    buf: list[np.ndarray] = []
    buf_rows = written = 0
    n_batches = (len(images) + batch_size - 1) // batch_size
    try:
        for b in progress(range(n_batches), n_batches, "cache batches"):
            captured.clear()
            model(images[b * batch_size : (b + 1) * batch_size])
            x = instances_of(layer, captured[0]).float()  # (B, T, D)
            if not torch.isfinite(x).all():
                bad = torch.nonzero(~torch.isfinite(x))[0].tolist()
                raise FloatingPointError(
                    f"non-finite activation at image {b * batch_size + bad[0]}, instance {bad[1]}, unit {bad[2]}"
                )
            n_img, n_tok, dim = x.shape
            if q_arr is None:
                total = len(images) * n_tok
                q_arr = root.create_array("q", shape=(total, dim), chunks=(chunk_rows, dim), dtype=dtype,
                                          compressors=_compressors(compressor), fill_value=0)
                idx_arr = root.create_array("index", shape=(total, 2), chunks=(chunk_rows, 2), dtype="int32",
                                            fill_value=0)
                img = np.repeat(np.arange(len(images), dtype=np.int32), n_tok)
                tok = np.tile(np.arange(n_tok, dtype=np.int32), len(images))
                idx_arr[:] = np.stack([img, tok], axis=1)
            buf.append(x.reshape(-1, dim).numpy().astype(dtype))
            buf_rows += n_img * n_tok
            # Write whole chunks only, so every chunk is written once.
            if buf_rows >= chunk_rows or b == n_batches - 1:
                rows = np.concatenate(buf)
                n_write = len(rows) if b == n_batches - 1 else (len(rows) // chunk_rows) * chunk_rows
                q_arr[written : written + n_write] = rows[:n_write]
                written += n_write
                buf = [rows[n_write:]]
                buf_rows = len(buf[0])
    finally:
        handle.remove()
    if q_arr is None:
        raise ValueError("the probe set is empty: no images to cache")
    return {"n_instances": int(q_arr.shape[0]), "n_upstream": int(q_arr.shape[1]),
            "instances_per_image": int(q_arr.shape[0] // len(images)), "n_images": len(images)}


def open_cache(folder: str | Path):
    """(q array, index array) of a cache folder, lazily."""
    root = zarr.open_group(str(Path(folder) / "q.zarr"), mode="r")
    return root["q"], root["index"]


def iter_chunks(q) -> "Iterator[tuple[int, np.ndarray]]":
    """(first row, float32 rows) per stored chunk, in order: one sequential pass."""
    step = q.chunks[0]
    for start in range(0, q.shape[0], step):
        yield start, np.asarray(q[start : start + step], dtype=np.float32)


def gather_rows(q, rows: np.ndarray) -> np.ndarray:
    """q[rows] as float32, read in one sequential pass over the chunks that hold them (no random reads)."""
    rows = np.asarray(rows, dtype=np.int64)
    uniq, inverse = np.unique(rows, return_inverse=True)
    out = np.empty((len(uniq), q.shape[1]), dtype=np.float32)
    step = q.chunks[0]
    chunk_of = uniq // step
    for c in np.unique(chunk_of):
        sel = np.nonzero(chunk_of == c)[0]
        block = np.asarray(q[c * step : min((c + 1) * step, q.shape[0])], dtype=np.float32)
        out[sel] = block[uniq[sel] - c * step]
    return out[inverse]
