"""LLM Rank's protocol and aggregation (Section B.1), checked against hand-computed cases."""
import pytest
import torch

from elude.judges.consensus import bootstrap, comparisons, consensus, ranks, win_rates
from elude.judges.protocol import PROMPT, parse_answer, presentations, sample_unit_pairs


def test_prompt_is_the_papers():
    assert PROMPT.startswith("Each grid shows the 9 images that most strongly activate a neural network unit.")
    assert "Grid A = first image. Grid B = second image." in PROMPT
    assert PROMPT.endswith('{"reasoning_a": "...", "reasoning_b": "...", "answer": "A" or "B"}')


def test_every_unit_pair_is_shown_in_both_orders_with_a_recorded_seed():
    units = {"backbone": 64, "topk": 512, "elude": 236}
    shown = presentations(units, 5, seed=42)
    assert len(shown) == 3 * 5 * 2  # 3 method pairs x 5 unit pairs x both orders
    assert shown == presentations(units, 5, seed=42)  # the seed fixes the sample
    assert shown != presentations(units, 5, seed=43)
    for first, second in zip(shown[::2], shown[1::2]):
        assert (first["a"], first["b"]) == (second["b"], second["a"]) and not first["swapped"] and second["swapped"]
        assert first["a"][0] == first["pair"][0]
    assert {p["pair"] for p in shown} == {("backbone", "topk"), ("backbone", "elude"), ("topk", "elude")}
    assert all(0 <= p["a"][1] < units[p["a"][0]] and 0 <= p["b"][1] < units[p["b"][0]] for p in shown)
    assert len(sample_unit_pairs(3, 4, 10, 0)) == 10  # fewer units than pairs: drawn with replacement
    with pytest.raises(ValueError, match="need a unit"):
        sample_unit_pairs(0, 4, 2, 0)


@pytest.mark.parametrize("text, answer", [
    ('{"reasoning_a": "dogs", "reasoning_b": "mixed", "answer": "A"}', "A"),
    ('Sure!\n```json\n{"reasoning_a": "a {brace} \\"quoted\\"", "reasoning_b": "x", "answer": "b"}\n```', "B"),
    ('{"answer": "Grid B", "reasoning_a": "", "reasoning_b": ""}', "B"),
    ('I think A is more coherent.', None),  # no JSON: unparseable, never guessed
    ('{"reasoning_a": "x", "answer": "both"}', None),
    ('{"reasoning_a": "x", "answer": "A"', None),  # truncated at max_tokens
])
def test_answers_are_parsed_or_recorded_as_unparseable(text, answer):
    parsed = parse_answer(text)
    assert parsed["answer"] == answer and parsed["parsed"] is (answer is not None)


def test_consensus_is_a_majority_of_all_judges_and_ties_are_dropped():
    assert consensus(["A", "A", "B"]) == "A"
    assert consensus(["B", None, "B"]) == "B"  # 2 of 3
    assert consensus(["A", None, "B"]) is None  # no majority: dropped
    assert consensus(["A", None, None]) is None
    assert consensus(["A", "B"]) is None  # an even split


def test_win_rates_intervals_and_ranks_by_hand():
    shown = presentations({"x": 4, "y": 4, "z": 4}, 1, seed=0)  # (x,y), (x,z), (y,z), each in both orders
    answers = {"j1": ["A", "B", "A", "A", "B", "A"], "j2": ["A", "B", "A", "B", "B", "A"],
               "j3": ["B", "A", None, "A", "B", "A"]}
    results, counts = comparisons(shown, answers)
    # 1: A,A,B -> A: x beats y. 2 (swapped: a=y): B,B,A -> B: x beats y. 3: A,A,None -> A: x beats z.
    # 4 (swapped: a=z): A,B,A -> A: z beats x. 5: B,B,B -> B: z beats y. 6 (swapped: a=z): A,A,A -> A: z beats y.
    assert results == [("x", "y"), ("x", "y"), ("x", "z"), ("z", "x"), ("z", "y"), ("z", "y")]
    assert counts == {"presentations": 6, "ties_dropped": 0, "comparisons": 6}
    rates = win_rates(results, ["x", "y", "z"])
    assert rates == {"x": 3 / 4, "y": 0.0, "z": 3 / 4}
    assert ranks(rates) == {"x": 1, "y": 3, "z": 1}
    ci = bootstrap(results, ["x", "y", "z"], n=2000, seed=1)
    assert ci["y"] == (0.0, 0.0)  # y never wins in any resample
    lo, hi = ci["x"]
    assert 0.0 <= lo < 0.75 < hi <= 1.0
    assert bootstrap(results, ["x", "y", "z"], n=2000, seed=1) == ci  # seeded
    _, counts = comparisons(shown[:1], {"j1": ["A"], "j2": ["B"]})
    assert counts["ties_dropped"] == 1
    assert win_rates([], ["x"]) == {"x": None} and ranks({"x": None, "y": 0.5}) == {"x": None, "y": 1}


def test_grids_put_the_top_nine_images_in_3x3_cells(tmp_path):
    import numpy as np
    from PIL import Image

    from elude.data import DigitsDataset
    from elude.judges.grids import EMPTY, cell_image, grid_image, save_grid

    digits = DigitsDataset("eval", 0.3, 0)
    images = [digits.thumbnail(i) for i in range(7)]  # 8x8 digits; only 7: two cells stay empty
    grid = grid_image(images, cell=48)
    assert grid.shape == (144, 144, 3) and grid.dtype == np.uint8
    first = cell_image(images[0], 48)
    assert np.array_equal(grid[:48, :48], first)  # row by row, best first
    assert np.array_equal(grid[48:96, 48:96], cell_image(images[4], 48))
    assert (grid[96:, 48:] == EMPTY).all()  # cells 8 and 9
    # nearest-neighbour enlargement: each digit pixel is a 6x6 block of one value
    assert (first[:6, :6] == first[0, 0]).all() and len(np.unique(first[..., 0])) > 2
    wide = cell_image(np.zeros((20, 40, 3), np.uint8) + np.arange(40, dtype=np.uint8)[None, :, None], 10)
    assert wide.shape == (10, 10, 3) and wide[0, 0, 0] > 0  # the shorter side fits, the longer is centre-cropped
    save_grid(tmp_path / "g.png", images, cell=48)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)


def tiny_vlm(folder):
    """A random-init LLaVA (CLIP vision tower, Llama text model) with a character-level tokenizer and its
    processor, saved like a Hugging Face model folder: built here, nothing downloaded. Its answers are noise."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}\":,.=-_\n'()[]!?")
    vocab = {c: i for i, c in enumerate(["<unk>", "<s>", "</s>", "<pad>", "<image>"] + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Split("", "isolated"), decoders.Fuse()
    template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=["<image>"], padding_side="left")
    tokenizer.chat_template = template
    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=28, patch_size=14),
                      text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                              max_position_embeddings=1024),
                      image_token_index=vocab["<image>"], vision_feature_layer=-1)
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
                   tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="full",
                   chat_template=template).save_pretrained(folder)
    return folder


def test_transformers_judge_asks_every_presentation_in_both_orders_and_resumes(tmp_path):
    import io

    from PIL import Image

    from elude.data import DigitsDataset
    from elude.judges.backends import JudgmentStore, TransformersJudge, run_judge
    from elude.judges.grids import grid_image

    digits = DigitsDataset("eval", 0.3, 0)
    top = {"backbone": [[u + 9 * r for r in range(9)] for u in range(4)], "elude": [[u * 3 + r for r in range(9)] for u in range(6)]}

    def grid_png(unit):
        buf = io.BytesIO()
        Image.fromarray(grid_image([digits.thumbnail(i) for i in top[unit[0]][unit[1]]], cell=16)).save(buf, format="PNG")
        return buf.getvalue()

    shown = presentations({m: len(t) for m, t in top.items()}, 3, seed=42)
    judge = TransformersJudge(str(tiny_vlm(tmp_path / "vlm")), max_tokens=12, batch_size=4)
    asked = []

    def ask(pairs):
        asked.extend(pairs)
        return judge.ask(pairs)

    store = JudgmentStore(tmp_path / "judgments.jsonl")
    first = run_judge("tiny", ask, shown[:4], grid_png, store)
    assert len(asked) == 4
    # a kill mid-write leaves a cut line: it is ignored, and a rerun asks only what is missing
    with open(tmp_path / "judgments.jsonl", "a") as f:
        f.write('{"key": "cut')
    store = JudgmentStore(tmp_path / "judgments.jsonl")
    every = run_judge("tiny", ask, shown, grid_png, store)
    assert len(shown) == 6 and len(asked) == 6 and every[:4] == first  # 1 method pair x 3 unit pairs x 2 orders
    assert [(j["a"], j["b"]) for j in every[::2]] == [(j["b"], j["a"]) for j in every[1::2]]  # both orders
    assert all(j["parsed"] is (j["answer"] in ("A", "B")) and isinstance(j["reply"], str) for j in every)
    assert not any(j["parsed"] for j in every)  # a random model's noise is counted as unparseable, never guessed
    assert run_judge("tiny", ask, shown, grid_png, JudgmentStore(tmp_path / "judgments.jsonl")) == every
    assert len(asked) == 6  # nothing asked again
    run_judge("other", lambda pairs: ['{"answer": "A"}'] * len(pairs), shown[:2], grid_png, store)
    assert len(asked) == 6 and len(store.done) == 8  # one more judge asks only that judge


def test_vllm_requests_and_a_clear_error_where_it_cannot_run():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from elude.judges.backends import JudgeDependencyError, VllmJudge, vllm_requests, vllm_settings

    a, b = (Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200))
    (conv,) = vllm_requests([(a, b)])
    parts = conv[0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"] and parts[2]["text"] == PROMPT
    first = Image.open(io.BytesIO(base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1])))
    assert np.asarray(first)[0, 0, 0] == 10  # grid A first
    s = vllm_settings()
    assert s["engine"]["limit_mm_per_prompt"] == {"image": 2} and s["engine"]["max_model_len"] == 32768
    assert s["sampling"] == {"temperature": 0.0, "max_tokens": 256, "seed": 42}
    with pytest.raises(JudgeDependencyError, match="backend 'transformers'"):
        VllmJudge("any-model")  # no vLLM (or no GPU) here: refused before any model is loaded
