"""Training a baseline on the probe instances, streamed from the activation cache (Section E.1).

The cache holds the layer inputs q; the layer output a = W q + b is computed per chunk. An epoch visits
the chunks in a seeded order, shuffles rows within windows of ``WINDOW_CHUNKS`` chunks and carries the
remainder over, so memory stays at a few chunks whatever the dataset size. Each epoch ends with a
checkpoint (model, optimiser, epoch), and the data order depends only on (seed, epoch): a killed job
resumes at the last finished epoch and ends with the same weights.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..evaluation.metrics import R2
from ..models.cache import Cache
from ..util.files import write_atomic
from ..util.progress import progress
from . import WINDOW_CHUNKS, overcomplete_sae
from .models import Baseline, prefix_sizes

log = logging.getLogger(__name__)


class InstanceStream:
    """(q, a) rows of the probe instances: q from the cache, a = W q + b."""

    def __init__(self, cache: Cache, weight: torch.Tensor, bias: torch.Tensor):
        self.cache, self.w, self.b = cache, weight.float(), bias.float()
        self.slices = cache.chunk_slices()

    @property
    def n_rows(self) -> int:
        return self.cache.n_rows

    def _pair(self, q: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.from_numpy(q)
        return q, torch.nn.functional.linear(q, self.w, self.b)

    def chunks(self, order=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in (range(len(self.slices)) if order is None else order):
            yield self._pair(self.cache.read(*self.slices[i]))

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pair(self.cache.gather(np.sort(rows)))

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled full batches of one epoch (the last partial batch is dropped)."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.slices))
        carry: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(order), WINDOW_CHUNKS):
            parts = carry + list(self.chunks(order[start : start + WINDOW_CHUNKS]))
            q, a = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            perm = torch.from_numpy(rng.permutation(len(q)))
            q, a = q[perm], a[perm]
            full = len(q) // batch_size * batch_size
            for i in range(0, full, batch_size):
                yield q[i : i + batch_size], a[i : i + batch_size]
            carry = [(q[full:], a[full:])] if full < len(q) else []


def normalisation(stream: InstanceStream, transcoder: bool, standardise: bool = True) -> dict[str, torch.Tensor]:
    """Per-feature mean and one RMS scale of the model's input (q for a transcoder, else a) and of a,
    in one streaming pass (float64 sums). ``standardise`` False (``baselines.standardise``): zero means and unit
    scales, so the model reads the raw instances, as overcomplete trains (the paper's E.3; audit D7)."""
    if not standardise:
        n_units, n_upstream = stream.w.shape  # no pass over the cache needed
        return {"in_mean": torch.zeros(n_upstream if transcoder else n_units), "in_scale": torch.tensor(1.0),
                "out_mean": torch.zeros(n_units), "out_scale": torch.tensor(1.0)}
    sums = {}
    for q, a in stream.chunks():
        for name, x in (("in", q if transcoder else a), ("out", a)):
            x = x.double()
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0], s[1], s[2] = s[0] + len(x), s[1] + x.sum(0), s[2] + float((x**2).sum())
    out = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n
        var = max((s2 / n - float((mean**2).sum())) / len(mean), 1e-24)
        out[f"{name}_mean"], out[f"{name}_scale"] = mean.float(), torch.tensor(math.sqrt(var), dtype=torch.float32)
    return out


def archetypal_points(stream: InstanceStream, n_points: int, seed: int, in_mean, in_scale) -> torch.Tensor:
    """Candidate archetypes C of the relaxed archetypal dictionary: a seeded sample of training rows
    (standardised), ``n_points`` of them (all rows when fewer)."""
    n = min(n_points, stream.n_rows)
    rows = np.random.default_rng([seed, 1]).choice(stream.n_rows, size=n, replace=False)
    _, a = stream.rows(rows)
    return (a - in_mean) / in_scale


def loss_terms(model: Baseline, x: torch.Tensor, y: torch.Tensor, hp: dict) -> tuple[torch.Tensor, dict]:
    """Training loss of one batch (standardised coordinates): reconstruction MSE (Matryoshka: the mean over
    its nested prefixes), the family's sparsity term (Vanilla/Transcoder: w_l1 x the mean per-instance L1
    of the codes; JumpReLU: w_sp x the mean per-instance L0 through overcomplete's Heaviside
    pseudo-gradient), and the dead-feature term of Sec. E.1, w_dead x (-1/(|F_dead| B)) sum of the
    batch-dead features' pre-activations."""
    family = model.settings["family"]
    pre, codes, y_hat = model(x)
    if family == "matryoshka":
        d = model.model.get_dictionary()
        mse = torch.stack([((y - codes[:, :m] @ d[:m]) ** 2).mean() for m in
                           prefix_sizes(model.n_features, model.settings["matryoshka_prefixes"])]).mean()
    else:
        mse = ((y - y_hat) ** 2).mean()
    loss = mse
    if family in ("vanilla", "transcoder"):
        loss = loss + hp["w_l1"] * codes.abs().sum(-1).mean()
    if family == "jumprelu":
        sae, m = overcomplete_sae(), model.model
        l0 = sae.heaviside(torch.relu(pre), torch.exp(m.thresholds), m.kernel_fn, m.bandwidth).sum(-1).mean()
        loss = loss + hp["w_sp"] * l0
    dead = (codes != 0).sum(0) == 0
    n_dead = int(dead.sum())
    if n_dead and hp["w_dead"]:
        z_pre = model.pre_activations(x, pre)
        loss = loss - hp["w_dead"] * z_pre[:, dead].sum() / (n_dead * len(x))
    return loss, {"mse": float(mse.detach()), "dead_in_batch": n_dead}


def fit(model: Baseline, stream: InstanceStream, *, hp: dict, epochs: int, batch_size: int, seed: int,
        device: torch.device, checkpoint: Path | None = None) -> list[dict]:
    """Adam at learning rate ``hp["lr"]`` (constant), gradients clipped at norm 1 (as overcomplete's
    ``train_sae``), ``epochs`` passes. Resumes from ``checkpoint`` when it holds a finished epoch.
    Returns per-epoch means of the loss and the MSE."""
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    start, history = 0, []
    if checkpoint is not None and checkpoint.exists():
        ck = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, history = ck["epoch"], ck["history"]
        log.info("resuming at epoch %d of %d", start, epochs)
    batch_size = min(batch_size, stream.n_rows)
    for epoch in progress(range(start, epochs), epochs - start, "baseline epochs"):
        tot, n = {"loss": 0.0, "mse": 0.0}, 0
        for q, a in stream.batches(batch_size, seed, epoch):
            x, y = model.inputs(q.to(device), a.to(device))
            loss, parts = loss_terms(model, x, y, hp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            tot["loss"] += float(loss.detach())
            tot["mse"] += parts["mse"]
            n += 1
        history.append({"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in tot.items()}})
        if checkpoint is not None:
            state = {"model": model.state(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": history}
            write_atomic(checkpoint, lambda tmp: torch.save(state, tmp))
    return history


@torch.no_grad()
def training_metrics(model: Baseline, stream: InstanceStream, device: torch.device) -> dict:
    """On the training instances, in inference mode: MSE (standardised coordinates, mean over elements),
    L0 (mean active features per instance), R^2 of a (:class:`elude.evaluation.metrics.R2`), features never active
    (and, under ``"alive"``, a bool tensor of the features that fired: Table 4 leaves the others out).
    MSE and L0 are eq. 9's inputs."""
    model.to(device).eval()
    sse, n_el, active, n, ever, r2 = 0.0, 0, 0.0, 0, None, R2()
    for q, a in stream.chunks():
        x, y = model.inputs(q.to(device), a.to(device))
        _, codes, y_hat = model(x)
        sse += float(((y - y_hat) ** 2).double().sum())
        n_el += y.numel()
        nz = codes != 0
        active += float(nz.sum())
        n += len(x)
        ever = nz.any(0) if ever is None else ever | nz.any(0)
        r2.update(y.cpu(), y_hat.cpu())
    mse = sse / max(n_el, 1)
    return {"mse": mse if math.isfinite(mse) else float("inf"), "l0": active / max(n, 1),
            "l0_fraction": active / max(n, 1) / model.n_features, "r2": r2.value(),
            "dead_features": int((~ever).sum()) if ever is not None else model.n_features, "n_instances": n,
            "alive": ever.cpu() if ever is not None else torch.zeros(model.n_features, dtype=torch.bool)}
