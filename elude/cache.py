"""The activation cache: the target layer's inputs q for every probe instance, as chunked zarr v3.

Layout of a cache folder: ``q.zarr`` with array ``q`` (instances, upstream units) in row chunks and
``index`` (instances, 2) = (image, token/position). Instances are ordered image-major, token-minor.
Memory bound: one batch of activations plus one chunk of rows.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import nn

from .artifacts import write_atomic
from .backbones import instances_of
from .progress import progress

log = logging.getLogger(__name__)


def _compressors(name: str):
    if name == "none":
        return None
    from zarr.codecs import BloscCodec

    cname, _, level = name.partition("-")  # e.g. "lz4-1", "zstd-3"
    return BloscCodec(cname=cname, clevel=int(level or 1), shuffle="shuffle")


PROGRESS = "progress.json"


@torch.no_grad()
def sample_tokens(n_images: int, n_tokens: int, per_image: int, seed: int) -> np.ndarray:
    """A seeded token dataset (Section 4.1, E.8): ``per_image`` distinct random instances of each image
    (CLS eligible), sorted; image i's draw depends only on (seed, i), not on batches or shards."""
    if per_image > n_tokens:
        raise ValueError(f"cache.tokens_per_image={per_image} exceeds the {n_tokens} instances per image")
    return np.stack([np.sort(np.random.default_rng([seed, i]).choice(n_tokens, per_image, replace=False))
                     for i in range(n_images)]).astype(np.int32)


def write_cache(model: nn.Module, layer: nn.Module, images: torch.Tensor, folder: Path, *, batch_size: int,
                dtype: str, chunk_rows: int, compressor: str, device: str | torch.device = "cpu",
                tokens_per_image: int | None = None, token_seed: int = 42) -> dict:
    """Run ``images`` through ``model`` and store the inputs of ``layer`` as instances: all of each
    image's instances, or ``tokens_per_image`` of them drawn with ``token_seed`` (:func:`sample_tokens`).

    Resumable: only whole chunks are written, and ``folder/progress.json`` records how many are done.
    A rerun on the same folder recomputes from the batch holding the first missing row (batches are
    fixed, so the bytes are those of an uninterrupted run) and rewrites whole chunks from there.
    """
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    progress_file = folder / PROGRESS
    state = json.loads(progress_file.read_text()) if progress_file.exists() else None
    root = zarr.open_group(str(folder / "q.zarr"), mode="r+" if state else "w")
    q_arr = root["q"] if state else None
    written = state["chunks_done"] * chunk_rows if state else 0
    n_tok = state["instances_per_image"] if state else None
    n_batches = (len(images) + batch_size - 1) // batch_size
    first_batch = (written // n_tok) // batch_size if state else 0
    if state:
        log.info("cache: resuming after %d written chunks (%d rows), from batch %d", state["chunks_done"], written,
                 first_batch)
    pending: list[np.ndarray] = []
    pending_start = first_batch * batch_size * (n_tok or 0)  # row index of pending's first row
    chunks_written = 0
    tokens = None  # (images, tokens_per_image) when sampling
    writer = None
    try:
        for b in progress(range(first_batch, n_batches), n_batches - first_batch, "cache batches"):
            captured.clear()
            model(images[b * batch_size : (b + 1) * batch_size].to(device))
            x = instances_of(layer, captured[0]).float().cpu()  # (B, T, D)
            if not torch.isfinite(x).all():
                bad = torch.nonzero(~torch.isfinite(x))[0].tolist()
                row = (b * batch_size + bad[0]) * x.shape[1] + bad[1]
                raise FloatingPointError(
                    f"non-finite activation at image {b * batch_size + bad[0]}, instance {bad[1]}, unit {bad[2]} "
                    f"(cache row {row}, chunk {row // chunk_rows}): check the model and its inputs")
            if tokens_per_image is not None and tokens is None:
                tokens = sample_tokens(len(images), x.shape[1], tokens_per_image, token_seed)
            if tokens is not None:
                x = x[torch.arange(len(x))[:, None], torch.from_numpy(tokens[b * batch_size : b * batch_size + len(x)]).long()]
            if q_arr is None:
                n_tok, dim = x.shape[1], x.shape[2]
                total = len(images) * n_tok
                q_arr = root.create_array("q", shape=(total, dim), chunks=(chunk_rows, dim), dtype=dtype,
                                          compressors=_compressors(compressor), fill_value=0)
                idx = root.create_array("index", shape=(total, 2), chunks=(chunk_rows, 2), dtype="int32", fill_value=0)
                img = np.repeat(np.arange(len(images), dtype=np.int32), n_tok)
                tok = tokens.reshape(-1) if tokens is not None else np.tile(np.arange(n_tok, dtype=np.int32), len(images))
                idx[:] = np.stack([img, tok], axis=1)
            pending.append(x.reshape(-1, x.shape[-1]).to(getattr(torch, dtype)).numpy())  # torch casts faster
            rows = np.concatenate(pending)
            if pending_start < written:  # rows of chunks already on disk (resume)
                rows = rows[written - pending_start :]
                pending_start = written
            # Write whole chunks only (and the final partial one), each exactly once per run.
            n_write = len(rows) if b == n_batches - 1 else (len(rows) // chunk_rows) * chunk_rows
            if n_write:
                if writer is None:
                    writer = _ChunkWriter(q_arr, progress_file, chunk_rows, n_tok)
                writer.put(written, rows[:n_write])
                written += n_write
                chunks_written += -(-n_write // chunk_rows)
            pending = [rows[n_write:]]
            pending_start = written
        if writer is not None:
            writer.close()
    finally:
        handle.remove()
        if writer is not None:
            writer.stop()
    if q_arr is None:
        raise ValueError("the probe set is empty: no images to cache (check the data section of the config)")
    progress_file.unlink()
    return {"n_instances": int(q_arr.shape[0]), "n_upstream": int(q_arr.shape[1]),
            "instances_per_image": int(n_tok), "n_images": len(images),
            "chunks_written_this_run": chunks_written, "chunks_resumed": (state or {}).get("chunks_done", 0)}


class _ChunkWriter:
    """Writes whole chunks in a background thread, so disk writes (and blosc compression, which
    releases the GIL) overlap the next forward passes. At most ``depth`` writes wait in the queue,
    which bounds memory; writes and their progress records happen in order, one at a time, so the
    progress file never claims a chunk that is not on disk."""

    def __init__(self, q_arr, progress_file: Path, chunk_rows: int, n_tok: int, depth: int = 2):
        import queue
        import threading

        self.q_arr, self.progress_file, self.chunk_rows, self.n_tok = q_arr, progress_file, chunk_rows, n_tok
        self.queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain after a failure
            start, rows = item
            try:
                self.q_arr[start : start + len(rows)] = rows
                _save_progress(self.progress_file, -(-(start + len(rows)) // self.chunk_rows), self.n_tok)
            except BaseException as exc:  # re-raised in the producer
                self.error = exc

    def put(self, start: int, rows: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((start, rows))

    def close(self) -> None:
        """Wait for every queued write; raise the writer's error, if any."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


def _save_progress(path: Path, chunks_done: int, n_tok: int) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps({"chunks_done": chunks_done, "instances_per_image": n_tok})))


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
