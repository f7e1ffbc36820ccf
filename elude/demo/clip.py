"""The demo's CLIP-like model (``labels.model: demo:<seed>``): a tiny Hugging Face CLIPModel (8x8 images,
a word-level tokenizer over the concept list) trained in the labels job, in seconds on a CPU, on the demo
digits' probe split with each digit's name as its caption, and saved like a Hugging Face model folder, so
the default run and the tests label through the real ``transformers`` loading code without a download.
Unlike a random model its labels mean something on the demo (a sub-unit that fires on threes is "three"),
which makes CLIP-Dissect checkable end to end; on any other data it would be meaningless, so it is refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build_demo_clip(folder: str | Path, concepts: list[str], images: np.ndarray, labels: np.ndarray,
                    seed: int = 0, steps: int = 300) -> Path:
    """Train and save the demo CLIP. ``images`` (N, 8, 8) uint8 and ``labels`` (N,) digits: the probe split.
    Objective: CLIP's image-to-text cross-entropy against the ten digit names' text embeddings (the
    captions of one batch repeat, so the classes' names are the candidates)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    words = sorted({w for c in list(concepts) + DIGIT_NAMES for w in c.lower().split()})
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # the text tower pools at the first end-of-text token: every caption ends with one
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", model_max_length=16)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tokenizer)
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                                pad_token_id=0, bos_token_id=2, eos_token_id=3),
                     vision_config=CLIPVisionConfig(image_size=8, patch_size=2, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=2, num_attention_heads=2),
                     projection_dim=32)
    model = CLIPModel(cfg)
    from ..evaluation.labels import _features, _pil

    pixels = processor(images=[_pil(im) for im in images], return_tensors="pt")["pixel_values"]
    names = tokenizer(DIGIT_NAMES, return_tensors="pt", padding=True)
    y = torch.as_tensor(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(y), (128,), generator=gen)
        img = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=pixels[batch])), dim=-1)
        txt = torch.nn.functional.normalize(_features(model.get_text_features(**names)), dim=-1)
        loss = torch.nn.functional.cross_entropy(model.logit_scale.exp() * img @ txt.T, y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
