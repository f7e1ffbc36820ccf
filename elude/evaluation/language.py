"""A language model's and an encoder's faithfulness (issue 27): the next-token loss and KL with a method in place of
the layer, and an encoder's output cosine; what :func:`elude.evaluation.scoring.score` adds to Table 2 on text."""
from __future__ import annotations

import torch
from torch import nn

# (annotations: Forward is elude.evaluation.scoring's, Batch elude.models.data's; not imported: scoring imports this)

def lm_vocabulary(model: nn.Module) -> int | None:
    """The vocabulary of a language model's output head (Hugging Face's ``get_output_embeddings``), else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None


def next_token_logits(fwd: Forward, batch: Batch, vocab: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A causal LM's logits at every position whose next token is real (N, vocab) and those tokens (N,); None
    where the model is not one (no output head, no ``input_ids``, or a first output that is not the logits)."""
    if vocab is None or not isinstance(batch.inputs, dict) or "input_ids" not in batch.inputs or not fwd.outputs:
        return None
    logits, ids = fwd.outputs[0], batch.inputs["input_ids"]
    if logits.dim() != 3 or tuple(logits.shape) != (*ids.shape, vocab):
        return None
    mask = batch.inputs.get("attention_mask", torch.ones_like(ids)).bool()
    predicts = mask[:, :-1] & mask[:, 1:]  # position t predicts token t + 1, both real
    return logits[:, :-1][predicts], ids[:, 1:][predicts]


class NextTokenLoss:
    """A language model's faithfulness (SAEBench's): the next-token cross-entropy (nats per predicted token) of
    the original model and of each method in place of the layer, and the KL divergence KL(original || method)
    of the next-token distributions, averaged over every position that predicts a real token; float64."""

    def __init__(self):
        self.n, self.ce, self.kl = 0, {}, {}

    def update(self, name: str, logits: torch.Tensor, targets: torch.Tensor, reference: torch.Tensor | None = None):
        logp = torch.log_softmax(logits.double(), -1)
        self.ce[name] = self.ce.get(name, 0.0) - float(logp.gather(1, targets[:, None]).sum())
        if reference is None:
            self.n += len(targets)
        else:
            ref = torch.log_softmax(reference.double(), -1)
            self.kl[name] = self.kl.get(name, 0.0) + float((ref.exp() * (ref - logp)).sum())

    def value(self) -> dict | None:
        """{"ce": name -> nats, "kl": name -> nats (0 for the original), "n_predicted"}, or None (not an LM)."""
        if not self.n:
            return None
        return {"ce": {name: ce / self.n for name, ce in self.ce.items()},
                "kl": {name: self.kl.get(name, 0.0) / self.n for name in self.ce}, "n_predicted": self.n}


class OutputSimilarity:
    """An encoder's faithfulness (a model whose first output is per-token hidden states, not logits: BERT-like
    text encoders, ViT-like vision towers): the mean cosine similarity, over the valid instances, between the
    original model's first output and the one with a method in place of the layer (1 = unchanged)."""

    def __init__(self):
        self.sum, self.n = {}, 0

    @staticmethod
    def applies(fwd: Forward) -> bool:
        first = fwd.outputs[0] if fwd.outputs else None
        return first is not None and first.dim() == 3 and tuple(first.shape[:2]) == tuple(fwd.valid.shape)

    def update(self, name: str, ref: Forward, new: Forward, count: bool) -> None:
        cos = nn.functional.cosine_similarity(ref.outputs[0][ref.valid].double(), new.outputs[0][ref.valid].double(), -1)
        self.sum[name] = self.sum.get(name, 0.0) + float(cos.sum())
        self.n += len(cos) if count else 0

    def value(self) -> dict | None:
        return {name: v / self.n for name, v in self.sum.items()} if self.n else None
