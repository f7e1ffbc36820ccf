"""The demo judge: a tiny randomly initialised vision-language model (LLaVA: a CLIP vision tower and a
Llama text model, a character-level tokenizer) built offline and saved with its processor like a Hugging
Face model folder, so the default run and the tests exercise the real ``transformers`` backend without a
download. Its judgments are noise by construction.

``answers=True`` adds two whole-answer tokens, ``{"answer": "A"}`` and ``{"answer": "B"}``, and an output
head that only ever picks one of them (rows +v and -v for a random v): a random function of the prompt and
the two grids, always parseable. Without it, the replies are random characters (unparseable)."""
from __future__ import annotations

from pathlib import Path

CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}\":,.=-_\n'()[]!?")
ANSWERS = ['{"answer": "A"}', '{"answer": "B"}']


def build_demo_judge(folder: str | Path, seed: int = 0, answers: bool = True) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    tokens = ["<unk>", "<s>", "</s>", "<pad>", "<image>"] + CHARS + (ANSWERS if answers else [])
    vocab = {c: i for i, c in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Split("", "isolated"), decoders.Fuse()
    template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=["<image>"], padding_side="left")
    tokenizer.chat_template = template
    torch.manual_seed(seed)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=28, patch_size=14),
                      text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                              max_position_embeddings=2048),
                      image_token_index=vocab["<image>"], vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(cfg).eval()
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                                  crop_size={"height": 28, "width": 28}),
                               tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="full",
                               chat_template=template)
    if answers:
        _answer_head(model, processor, vocab, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _answer_head(model, processor, vocab: dict, seed: int) -> None:
    """Make the first generated token a random function of both grids: text tokens carry no signal (zero
    embeddings) but the prompt's last one, whose sharpened query picks image tokens (position-dependent
    through RoPE, so swapping A and B can change the answer); the head can only write ANSWERS[0] (+v) or
    ANSWERS[1] (-v), with v orthogonal to the last hidden state's mean over random image pairs, so that the
    answer follows what the images change rather than a constant (calibrated on grids of digits, the
    demo's data: on other images this judge may well answer one letter only)."""
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    from ..evaluation.judges.backends import messages
    from ..evaluation.judges.grids import grid_image

    params = dict(model.named_parameters())
    last = vocab["}"]  # the prompt ends with '... "A" or "B"}'
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        keep = embed[last].clone()
        embed.zero_()
        embed[last] = keep
        for name, p in params.items():
            if name.endswith("self_attn.q_proj.weight"):
                p.mul_(20)
            if name.endswith("self_attn.o_proj.weight"):
                p.mul_(50)
        rng = np.random.default_rng(seed)
        digits = load_digits().images  # the demo's data (shipped with scikit-learn): grids of 9 random digits
        images = [Image.fromarray(grid_image(list(digits[rng.choice(len(digits), 9)]), cell=56)) for _ in range(32)]
        text = processor.apply_chat_template(messages(), add_generation_prompt=True)
        x = processor(text=[text] * 16, images=images, return_tensors="pt", padding=True)
        h = model(**x, output_hidden_states=True).hidden_states[-1][:, -1]
        mean = torch.nn.functional.normalize(h.mean(0), dim=0)
        v = torch.randn(h.shape[1])
        v -= (v @ mean) * mean
        head = model.get_output_embeddings().weight
        head.zero_()
        head[vocab[ANSWERS[0]]], head[vocab[ANSWERS[1]]] = v, -v
