"""The activation cache: the target layer's inputs q for every probe instance, as chunked zarr v3.

A cache is one folder per dataset shard (a contiguous block of images, cached by its own job). Each
holds ``q.zarr`` with array ``q`` (instances, upstream units) in row chunks and ``index`` (instances, 2)
= (global image, token/position). Instances are ordered image-major, token-minor; :class:`Cache` reads
the shards in order as one table.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import zarr
from torch import nn

from ..util.files import write_atomic
from ..util.progress import progress
from .backbones import call_model, instances_of
from .data import iter_batches

log = logging.getLogger(__name__)


def _compressors(name: str):
    if name == "none":
        return None
    from zarr.codecs import BloscCodec

    cname, _, level = name.partition("-")  # e.g. "lz4-1", "zstd-3"
    return BloscCodec(cname=cname, clevel=int(level or 1), shuffle="shuffle")


PROGRESS = "progress.json"


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of uint64 values (counter-based randomness)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_tokens(valid: np.ndarray, images: np.ndarray, per_image: int | None, seed: int) -> np.ndarray:
    """(B, T) bool: the instances of each example that enter the cache. All valid ones, or a seeded token
    dataset (Section 4.1, E.8): the ``per_image`` valid instances with the smallest hash of (seed, global
    image index, position), i.e. a uniform draw without replacement, CLS eligible (all valid ones when
    fewer are valid). The draw depends only on (seed, image), not on batches or dataset shards."""
    if per_image is None:
        return valid
    with np.errstate(over="ignore"):
        img = images.astype(np.uint64)[:, None]
        pos = np.arange(valid.shape[1], dtype=np.uint64)[None, :]
        keys = _mix64(_mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _mix64(img + np.uint64(0x9E3779B97F4A7C15))) + pos)
    keys = np.where(valid, keys, np.iinfo(np.uint64).max)
    ranks = np.empty_like(keys, dtype=np.int64)
    np.put_along_axis(ranks, np.argsort(keys, axis=1, kind="stable"), np.arange(valid.shape[1])[None, :], axis=1)
    return valid & (ranks < per_image)


def shard_range(n_images: int, n_shards: int, shard: int) -> range:
    """The contiguous block of images that dataset shard ``shard`` of ``n_shards`` caches."""
    return range(shard * n_images // n_shards, (shard + 1) * n_images // n_shards)


@torch.no_grad()
def write_cache(model: nn.Module, layer: nn.Module, dataset, folder: Path, *, images: range | None = None, batch_size: int,
                dtype: str, chunk_rows: int, compressor: str, device: str | torch.device = "cpu", workers: int = 0,
                tokens_per_image: int | None = None, token_seed: int = 42) -> dict:
    """Run the ``images`` of ``dataset`` through ``model`` and store the inputs of ``layer`` as instances
    (rows), with their (global image, instance) index: every valid instance, or ``tokens_per_image`` drawn
    with ``token_seed`` (:func:`sample_tokens`). Invalid instances (the dataset's ``valid`` mask, images
    skipped as unreadable) are not stored.

    Memory: at most ``workers`` x 2 decoded batches, one batch of activations, the rows of the current
    chunk, and 2 chunks queued for the background writer, whatever the number of images.
    Resumable: only whole chunks are written, and ``folder/progress.json`` records how many are done and
    where each batch's rows start. A rerun recomputes from the batch holding the first missing row
    (batches are fixed, so the bytes are those of an uninterrupted run).
    """
    images = range(len(dataset)) if images is None else images
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    progress_file = folder / PROGRESS
    state = json.loads(progress_file.read_text()) if progress_file.exists() else None
    root = zarr.open_group(str(folder / "q.zarr"), mode="r+" if state else "w")
    q_arr, idx_arr = (root["q"], root["index"]) if state else (None, None)
    batch_starts = state["batch_starts"] if state else []  # row offset of each batch's first row
    written = state["chunks_done"] * chunk_rows if state else 0
    first_batch = max((b for b, r in enumerate(batch_starts) if r <= written), default=0)
    del batch_starts[first_batch + 1 :]
    if state:
        log.info("cache: resuming after %d written chunks (%d rows), from batch %d", state["chunks_done"], written,
                 first_batch)
    n_batches = -(-len(images) // batch_size)
    next_row = batch_starts[first_batch] if batch_starts else 0  # row index of the next computed row
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, index) not yet written
    pending_rows = 0
    chunks_written = 0
    bad: list[str] = []
    n_tok = None
    writer = None
    batch_ids = list(images)[first_batch * batch_size :]
    try:
        for b, batch in enumerate(progress(iter_batches(dataset, batch_size, batch_ids, workers),
                                           n_batches - first_batch, "cache batches"), start=first_batch):
            if b == len(batch_starts):
                batch_starts.append(next_row)
            captured.clear()
            call_model(model, batch.inputs, device)
            x = instances_of(layer, captured[0]).float().cpu()  # (B, T, D)
            n_tok = x.shape[1]
            if tokens_per_image is not None and tokens_per_image > n_tok:
                raise ValueError(f"cache.tokens_per_image={tokens_per_image} exceeds the {n_tok} instances per example "
                                 "of the target layer")
            valid = batch.valid_mask(n_tok)
            bad += list(batch.bad.values())
            keep = sample_tokens(valid.numpy(), batch.index.numpy(), tokens_per_image, token_seed)
            if keep.all():  # every instance: a view, no gather
                rows = x.reshape(-1, x.shape[2])
            else:
                rows = x[torch.from_numpy(keep)]  # image-major, token-minor
            img_col = np.repeat(batch.index.numpy().astype(np.int32), keep.sum(1))
            tok_col = np.nonzero(keep)[1].astype(np.int32)
            if q_arr is None:  # capacity: an upper bound, trimmed at the end
                capacity = max(1, len(images) * (tokens_per_image or n_tok))
                q_arr = root.create_array("q", shape=(capacity, x.shape[2]), chunks=(chunk_rows, x.shape[2]),
                                          dtype=dtype, compressors=_compressors(compressor), fill_value=0)
                idx_arr = root.create_array("index", shape=(capacity, 2), chunks=(chunk_rows, 2), dtype="int32",
                                            fill_value=0)
            stored = rows.to(getattr(torch, dtype))  # torch casts faster than numpy
            if not torch.isfinite(stored.sum(dtype=torch.float64)):  # a cheap reduction first; NaN/inf propagate
                r, u = torch.nonzero(~torch.isfinite(stored))[0].tolist()
                file = f" ({dataset.items[img_col[r]][0]})" if hasattr(dataset, "items") else ""
                raise FloatingPointError(  # never cached: NaN would reach the clustering and the merged weights
                    f"non-finite layer input at image {img_col[r]}{file}, instance {tok_col[r]}, dimension {u} (stored as "
                    f"{dtype}: {float(rows[r, u])!r} before the cast): check the model and its inputs, or remove the "
                    "image from the data"
                    + (", or set cache.dtype: float32 (float16 overflows above 65504)" if dtype == "float16" else ""))
            pending.append((stored.numpy(), np.stack([img_col, tok_col], axis=1)))
            next_row += len(rows)
            pending_rows += len(rows)
            last = b == n_batches - 1
            if pending_rows < chunk_rows and not last:
                continue  # concatenate once per chunk, not once per batch
            q_rows, i_rows = (np.concatenate(a) for a in zip(*pending))
            start = next_row - len(q_rows)
            if start < written:  # rows of chunks already on disk (resume)
                q_rows, i_rows, start = q_rows[written - start :], i_rows[written - start :], written
            # Write whole chunks only (and the final partial one), each exactly once per run.
            n_write = len(q_rows) if last else (len(q_rows) // chunk_rows) * chunk_rows
            if n_write:
                if writer is None:
                    writer = _ChunkWriter(q_arr, idx_arr, progress_file, chunk_rows)
                writer.put(written, q_rows[:n_write], i_rows[:n_write], list(batch_starts))
                written += n_write
                chunks_written += -(-n_write // chunk_rows)
            pending = [(q_rows[n_write:].copy(), i_rows[n_write:].copy())]  # copies: free the written block
            pending_rows = len(pending[0][0])
        if writer is not None:
            writer.close()
    finally:
        handle.remove()
        if writer is not None:
            writer.stop()
    if q_arr is None or written == 0:
        raise ValueError("the probe set is empty: no valid instances to cache (check the data section of the config"
                         + (f"; {len(bad)} unreadable images were skipped" if bad else "") + ")")
    q_arr.resize((written, q_arr.shape[1]))
    idx_arr.resize((written, 2))
    progress_file.unlink()
    return {"n_instances": int(written), "n_upstream": int(q_arr.shape[1]), "instances_per_image": int(n_tok),
            "tokens_per_image": tokens_per_image,
            "images": [images.start, images.stop], "n_images": len(images),
            "chunks_written_this_run": chunks_written, "chunks_resumed": (state or {}).get("chunks_done", 0),
            "bad_images_skipped": bad}


class _ChunkWriter:
    """Writes whole chunks in a background thread, so disk writes (and blosc compression, which
    releases the GIL) overlap the next forward passes. At most ``depth`` writes wait in the queue,
    which bounds memory; writes and their progress records happen in order, one at a time, so the
    progress file never claims a chunk that is not on disk."""

    def __init__(self, q_arr, idx_arr, progress_file: Path, chunk_rows: int, depth: int = 2):
        import queue
        import threading

        self.q_arr, self.idx_arr, self.progress_file, self.chunk_rows = q_arr, idx_arr, progress_file, chunk_rows
        self.queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain after a failure
            start, rows, index, batch_starts = item
            try:
                self.q_arr[start : start + len(rows)] = rows
                self.idx_arr[start : start + len(rows)] = index
                _save_progress(self.progress_file, -(-(start + len(rows)) // self.chunk_rows), batch_starts)
            except BaseException as exc:  # re-raised in the producer
                self.error = exc

    def put(self, start: int, rows: np.ndarray, index: np.ndarray, batch_starts: list[int]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((start, rows, index, batch_starts))

    def close(self) -> None:
        """Wait for every queued write; raise the writer's error, if any."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


def _save_progress(path: Path, chunks_done: int, batch_starts: list[int]) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps({"chunks_done": chunks_done, "batch_starts": batch_starts})))


class Cache:
    """The dataset shards of one cache as one table of rows: shard s's rows follow shard s-1's.
    Reads go shard by shard, chunk by chunk (sequential); nothing is loaded whole."""

    def __init__(self, folders: list[str | Path]):
        self.shards = [zarr.open_group(str(Path(f) / "q.zarr"), mode="r") for f in folders]
        sizes = [g["q"].shape[0] for g in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_upstream = int(self.shards[0]["q"].shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def n_chunks(self) -> int:
        return sum(-(-g["q"].shape[0] // g["q"].chunks[0]) for g in self.shards)

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first global row, float32 rows) per stored chunk, in order: one sequential pass."""
        for offset, g in zip(self.offsets, self.shards):
            for start, rows in iter_chunks(g["q"]):
                yield int(offset) + start, rows

    def chunk_slices(self) -> list[tuple[int, int, int]]:
        """(shard, first row, end row) of every stored chunk, in order; :meth:`read` reads one."""
        return [(s, start, min(start + g["q"].chunks[0], g["q"].shape[0])) for s, g in enumerate(self.shards)
                for start in range(0, g["q"].shape[0], g["q"].chunks[0])]

    def read(self, shard: int, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of one dataset shard as float32."""
        return np.asarray(self.shards[shard]["q"][start:stop], dtype=np.float32)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.shards[0]["q"].dtype)

    def gather(self, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Rows by global index (as ``dtype``; the storage type halves memory for float16 caches), in one
        sequential pass over the chunks that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.n_upstream), dtype=dtype)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            out[sel] = gather_rows(self.shards[s]["q"], rows[sel] - self.offsets[s], dtype)
        return out

    def index(self, rows: np.ndarray) -> np.ndarray:
        """(global image, instance) of global rows."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), 2), dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            out[sel] = self.shards[s]["index"].get_orthogonal_selection((rows[sel] - self.offsets[s], slice(None)))
        return out


def open_cache(folder: str | Path):
    """(q array, index array) of one cache shard folder, lazily."""
    root = zarr.open_group(str(Path(folder) / "q.zarr"), mode="r")
    return root["q"], root["index"]


def iter_chunks(q) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) per stored chunk, in order: one sequential pass."""
    step = q.chunks[0]
    for start in range(0, q.shape[0], step):
        yield start, np.asarray(q[start : start + step], dtype=np.float32)


def gather_rows(q, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
    """q[rows] as ``dtype``, read in one sequential pass over the chunks that hold them (no random reads)."""
    rows = np.asarray(rows, dtype=np.int64)
    uniq, inverse = np.unique(rows, return_inverse=True)
    out = np.empty((len(uniq), q.shape[1]), dtype=dtype)
    step = q.chunks[0]
    chunk_of = uniq // step
    for c in np.unique(chunk_of):
        sel = np.nonzero(chunk_of == c)[0]
        block = np.asarray(q[c * step : min((c + 1) * step, q.shape[0])])
        out[sel] = block[uniq[sel] - c * step]
    return out if len(uniq) == len(rows) and (inverse == np.arange(len(rows))).all() else out[inverse]
