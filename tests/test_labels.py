"""Concept labels (CLIP-Dissect soft-WPMI, elude.evaluation.labels) and concept groups (elude.evaluation.groups) on hand-made
data; the workflow's labels stage and steering by label run in tests/test_using.py."""
import math

import numpy as np
import pytest
import torch

from elude.evaluation.groups import active, concept_groups, correlation
from elude.evaluation.labels import (
    LabelsError,
    best_concepts,
    label_features,
    load_clip,
    load_concepts,
    soft_wpmi,
)


def test_soft_wpmi_matches_a_hand_computed_case():
    # 3 images, 2 concepts; a = 1 and similarities ln 3 / 0 make p(t|x) = (3/4, 1/4), (1/2, 1/2), (1/4, 3/4)
    ln3 = math.log(3)
    sims = torch.tensor([[ln3, 0.0], [0.0, 0.0], [0.0, ln3]])
    top = torch.tensor([[0, 1], [2, 1]])  # feature 0: images 0 then 1; feature 1: images 2 then 1
    # p_start 1, p_end 0.5, k = 2: p_j = 1, 0.75. log p(t|B_0) = log p(t|x0) + log(1 - 0.75 / 2) and
    # symmetrically for feature 1, so log p(t) = log(0.625 / 2) for both concepts, and
    # WPMI(f0, t0) = log(3/4 * 0.625) - log(0.3125) = log 1.5, WPMI(f0, t1) = log 0.5 (mirrored for f1)
    got = soft_wpmi(sims, top, a=1.0, lam=1.0, p_start=1.0, p_end=0.5, min_prob=0.0)
    want = torch.tensor([[math.log(1.5), math.log(0.5)], [math.log(0.5), math.log(1.5)]], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-12)
    # lambda weighs the prior: lam 0 leaves log p(t|B_k)
    got0 = soft_wpmi(sims, top, a=1.0, lam=0.0, p_start=1.0, p_end=0.5, min_prob=0.0)
    assert got0[0, 0].item() == pytest.approx(math.log(0.75 * 0.625))
    assert [b[0][0] for b in best_concepts(got, ["cat", "dog"], 2)] == ["cat", "dog"]
    # a tie goes to the earlier concept of the list
    assert best_concepts(torch.zeros(1, 3), ["a", "b", "c"], 1) == [[("a", 0.0)]]


def test_concept_sets(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("# comment\nstriped\n\n dog \nstriped\ncat\n")
    assert load_concepts(str(f)) == ["striped", "dog", "cat"]
    assert load_concepts("digits")[:3] == ["zero", "one", "two"] and len(load_concepts("digits")) == 10
    assert len(load_concepts(None)) > 400
    with pytest.raises(LabelsError, match=r"labels.concepts: .*nope.txt.* is not a file.*digits"):
        load_concepts(str(tmp_path / "nope.txt"))
    f.write_text("one\n")
    with pytest.raises(LabelsError, match="at least 2"):
        load_concepts(str(f))


def tiny_random_clip(folder, words):
    """A random-init Hugging Face CLIP with a word-level tokenizer, saved like a model folder (offline)."""
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

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=8, eos_token_id=3),
        vision_config=CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2), projection_dim=8))
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_a_random_clip_folder_labels_through_the_transformers_loader(tmp_path):
    words = ["red", "green", "blue"]
    clip = load_clip(str(tiny_random_clip(tmp_path / "clip", words)))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(6)] + [np.zeros((8, 8), np.uint8)]
    emb = clip.encode_images(images, batch_size=4)
    assert emb.shape == (7, 8) and torch.allclose(emb.norm(dim=1), torch.ones(7))
    text = clip.encode_texts(words)
    assert text.shape == (3, 8) and not torch.allclose(text[0], text[1])
    # label_features = soft-WPMI over each feature's top images, with these embeddings
    acts = torch.tensor(rng.random((7, 4)), dtype=torch.float32)
    acts[:, 3] = 0  # a feature that never fires gets no label
    res = label_features({"f": acts}, lambda i: images[i], clip, words, top_k=3, a=10, lam=1, p_start=0.998,
                         p_end=0.97, alternatives=2)["f"]
    assert res[3] is None
    top = torch.sort(acts.T[:3], dim=1, descending=True, stable=True).indices[:, :3]
    want = soft_wpmi(emb @ text.T, top, 10, 1, 0.998, 0.97)
    for f in range(3):
        assert res[f]["label"] == words[int(want[f].argmax())]
        assert res[f]["score"] == pytest.approx(float(want[f].max())) and len(res[f]["alternatives"]) == 2


def test_a_model_that_is_neither_a_folder_nor_cached_is_refused_with_the_fix():
    with pytest.raises(RuntimeError, match=r"labels.model: 'no-such-org/no-such-clip' .*hf download"):
        load_clip("no-such-org/no-such-clip")
    with pytest.raises(RuntimeError, match="open_clip_torch"):
        load_clip("open_clip:ViT-B-32:laion2b_s34b_b79k")


def test_concept_groups_join_correlated_subunits_of_different_neurons():
    rng = np.random.default_rng(0)
    n = 400
    base = rng.random((n, 3))
    cols = [base[:, 0], base[:, 0] + 0.05 * rng.random(n), base[:, 0] + 0.05 * rng.random(n),  # one concept x3
            base[:, 1], base[:, 1] + 0.05 * rng.random(n),  # another x2, within one neuron
            base[:, 2], np.zeros(n), np.full(n, 0.5)]  # alone; never fires; constant
    acts = torch.tensor(np.stack(cols, 1), dtype=torch.float32)
    parent = np.array([0, 1, 2, 3, 3, 4, 5, 6])
    assert active(acts).tolist() == [True] * 6 + [False, False]
    g = concept_groups(acts, parent, threshold=0.8)
    group = g["group"]
    assert group[0] == group[1] == group[2] == 0  # the largest group first
    assert group[3] == group[4] == 1 and group[5] == 2 and list(group[6:]) == [-1, -1]
    assert g["n_groups"] == 3 and g["n_active_subunits"] == 6 and g["n_multi_unit_groups"] == 1
    assert g["sizes"] == [3, 2, 1] and g["mean_corr"][0] > 0.95 and math.isnan(g["mean_corr"][2])
    # a threshold above every correlation leaves each sub-unit its own concept
    assert concept_groups(acts, parent, threshold=1.0)["n_groups"] == 6
    c = correlation(acts[:, :3])
    assert torch.allclose(c, torch.tensor(np.corrcoef(np.stack(cols[:3]))), atol=1e-9)


@pytest.mark.slow
def test_bad_labels_settings_fail_before_any_job(tmp_path):
    import yaml
    from workflow_helpers import REPO, snakemake, write_config

    from elude.pipeline.config import ConfigError, merge_config, validate_config

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    for over, message in [
        ({"labels": {"concepts": str(tmp_path / "none.txt")}}, r"labels.concepts: .*none.txt.* is not a file"),
        ({"data": {"kind": "imagefolder", "probe_dir": "p", "eval_dir": "e"}}, r"labels.model 'demo:0' is the demo CLIP"),
        ({"labels": {"p_start": 0.9, "p_end": 0.95}}, r"labels.p_end 0.95 > labels.p_start 0.9"),
        ({"labels": {"softmax_scale": 0}}, r"labels.softmax_scale: 0 is out of range"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_config(merge_config(base, over))
    # a model that is neither local nor cached: refused while the DAG is built, no job runs
    cfg = write_config(tmp_path / "c.yaml", {"labels": {"model": "no-such-org/no-such-clip"}})
    proc = snakemake(tmp_path, cfg, check=False)
    assert proc.returncode != 0 and "labels.model: 'no-such-org/no-such-clip'" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_labels_and_judges_need_image_data_and_say_so():
    from torch.utils.data import TensorDataset

    from elude.models.data import DigitsDataset, image_reader

    with pytest.raises(ValueError, match=r"labels \(labels.model\) needs the evaluation images.*thumbnail"):
        image_reader(TensorDataset(torch.zeros(3, 4)), 512, "labels (labels.model)")
    image = image_reader(DigitsDataset("eval", 0.3, 0), 512, "labels")
    assert image(5).shape == (8, 8) and image(5).dtype == np.uint8
