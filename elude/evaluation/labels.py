"""Concept labels for units and sub-units: CLIP-Dissect [42] with its soft-WPMI similarity (Sec. C.3: the
paper labels ELUDe's sub-units this way, with SigLIP in place of CLIP).

A feature's label is the concept t of a word list that maximises soft-WPMI between t and the feature's
top-activating evaluation images B_k (ranked by the image's max activation over its instances, the
MS-Score's ranking), with p(t | x) = softmax over concepts of a x cos(image x, text t) from a CLIP-like
model. The CLIP-like model is a Hugging Face CLIP or SigLIP folder / cached id, an open_clip model, or
the demo's tiny CLIP trained in the job on the digits (:mod:`elude.demo.clip`)."""
from __future__ import annotations

import numpy as np
import torch

from .concept_sets import CONCEPTS_DIR, DEFAULT_CONCEPTS, LabelsError, concepts_file, load_concepts  # noqa: F401


def soft_wpmi(sims: torch.Tensor, top_images: torch.Tensor, a: float = 10.0, lam: float = 1.0,
              p_start: float = 0.998, p_end: float = 0.97, min_prob: float = 1e-7) -> torch.Tensor:
    """soft-WPMI (CLIP-Dissect [42], Sec. 3) of every feature and concept: (F, M).

    ``sims`` (images, M): cosine similarity of each image to each concept; ``top_images`` (F, k): each
    feature's top images (rows of ``sims``), most active first. With p(t|x) = softmax_t(a * sims[x]) and the
    j-th top image in the feature's concept set B_k with probability p_j = p_start - j/k (p_start - p_end):
    log p(t | B_k) = sum_j log(1 + p_j (p(t|x_j) - 1) + min_prob), log p(t) = log mean_k p(t | B_k), and
    soft-WPMI = log p(t | B_k) - lam log p(t); the prior is taken over the features labelled together."""
    p_t_given_x = torch.softmax(a * sims.double(), dim=1)
    k = top_images.shape[1]
    p_in = p_start - torch.arange(k, dtype=torch.float64) / k * (p_start - p_end)
    log_p = torch.stack([torch.log(1 + p_in[:, None] * (p_t_given_x[rows] - 1) + min_prob).sum(0)
                         for rows in top_images])  # (F, M), one feature at a time: memory k x M
    log_prior = torch.logsumexp(log_p, dim=0) - np.log(len(top_images))
    return log_p - lam * log_prior


def best_concepts(scores: torch.Tensor, concepts: list[str], n: int) -> list[list[tuple[str, float]]]:
    """Each feature's ``n`` best concepts with their scores (ties: the earlier concept in the list)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n]
    return [[(concepts[int(j)], float(scores[f, j])) for j in row] for f, row in enumerate(order)]


# --- CLIP-like models -----------------------------------------------------------------------------------
class ClipLike:
    """Normalised image and text embeddings from a CLIP-like model (``encode_images`` takes uint8 arrays,
    grey or RGB; ``encode_texts`` strings)."""

    def __init__(self, name: str, encode_images, encode_texts):
        self.name, self._images, self._texts = name, encode_images, encode_texts

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray], batch_size: int = 64) -> torch.Tensor:
        out = [self._images([_pil(im) for im in images[i : i + batch_size]]).float().cpu()
               for i in range(0, len(images), batch_size)]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = [self._texts(list(texts[i : i + batch_size])).float().cpu() for i in range(0, len(texts), batch_size)]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _pil(img: np.ndarray):
    from PIL import Image

    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return Image.fromarray(a.astype(np.uint8)).convert("RGB")


def _features(out) -> torch.Tensor:
    """get_image_features / get_text_features return a tensor, or (newer transformers) an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_check(spec: str) -> None:
    """The model can be loaded here without a download (folder, Hugging Face cache, open_clip installed),
    or an error naming labels.model and the fix. ``demo:<seed>`` is built by the job."""
    from ..models import demo_seed
    from .judges.backends import model_check

    if demo_seed(spec) is not None:
        return
    if spec.startswith("open_clip:"):
        try:
            import open_clip  # noqa: F401
        except ImportError:
            raise LabelsError(f"labels.model: {spec!r} needs open_clip, which is not installed: pip install "
                              "open_clip_torch (and have its weights local), or use a Hugging Face CLIP/SigLIP") from None
        return
    model_check(spec, key="labels.model")


def load_clip(spec: str, device: str = "cpu") -> ClipLike:
    """A Hugging Face CLIP/SigLIP (folder or cached id) or ``open_clip:<arch>:<pretrained>``."""
    clip_check(spec)
    if spec.startswith("open_clip:"):
        import open_clip

        _, arch, pretrained = spec.split(":", 2)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
        model.eval()
        return ClipLike(spec, lambda ims: model.encode_image(torch.stack([preprocess(i) for i in ims]).to(device)),
                        lambda txt: model.encode_text(tokenizer(txt).to(device)))
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(spec).eval().to(device)
    processor = AutoProcessor.from_pretrained(spec)
    # SigLIP was trained on text padded to its full length: its embeddings differ with shorter padding
    padding = "max_length" if "siglip" in model.config.model_type else True

    def images(ims):
        return _features(model.get_image_features(**processor(images=ims, return_tensors="pt").to(device)))

    def texts(txt):
        inputs = processor(text=txt, return_tensors="pt", padding=padding, truncation=True).to(device)
        return _features(model.get_text_features(**{k: v for k, v in inputs.items()
                                                    if k in ("input_ids", "attention_mask")}))

    return ClipLike(spec, images, texts)


# --- labelling a layer ----------------------------------------------------------------------------------
def top_image_rows(acts: torch.Tensor, k: int) -> torch.Tensor:
    """(F, k) rows of ``acts`` (N, F) with each feature's k largest values, largest first (stable)."""
    return torch.sort(acts.T, dim=1, descending=True, stable=True).indices[:, : min(k, len(acts))]


def label_features(feature_sets: dict[str, torch.Tensor], image, clip: ClipLike, concepts: list[str], *,
                   top_k: int, a: float, lam: float, p_start: float, p_end: float, alternatives: int,
                   batch_size: int = 64) -> dict[str, list[dict | None]]:
    """Labels of each feature set (name -> per-image activations (N, F)): per feature {"label", "score",
    "alternatives"} or None for features that never fire or are constant (no top images to describe).
    ``image(i)``: evaluation image i as a uint8 array. Each set gets its own soft-WPMI prior (the features
    of one layer, as in CLIP-Dissect); the images are embedded once for all sets."""
    from .groups import active

    tops = {name: top_image_rows(acts, top_k) for name, acts in feature_sets.items()}
    alive = {name: active(acts) for name, acts in feature_sets.items()}
    rows = sorted({int(r) for name, t in tops.items() for r in t[alive[name]].reshape(-1).tolist()})
    text = clip.encode_texts(concepts)
    sims = torch.zeros(len(next(iter(feature_sets.values()))), len(concepts))
    if rows:
        sims[rows] = clip.encode_images([image(r) for r in rows], batch_size) @ text.T
    out = {}
    for name, t in tops.items():
        labels: list[dict | None] = [None] * t.shape[0]
        idx = torch.nonzero(alive[name]).reshape(-1)
        if len(idx):
            scores = soft_wpmi(sims, t[idx], a, lam, p_start, p_end)
            for f, best in zip(idx.tolist(), best_concepts(scores, concepts, alternatives)):
                labels[f] = {"label": best[0][0], "score": best[0][1], "alternatives": [list(b) for b in best]}
        out[name] = labels
    return out
