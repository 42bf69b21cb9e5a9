"""Every text model family: forward shapes, padding never changes a prediction, attention weights,
the transformer loads offline, integrated-gradients completeness."""

from __future__ import annotations

import pytest
import torch

from vislang.models import create_model, list_models

WORD_MODELS = {
    "lstm": {"pooling": "last"},
    "gru": {"pooling": "mean", "num_layers": 2},
    "attention": {},
    "textcnn": {"multichannel": True},
}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[5, 9, 3, 0, 0, 0], [7, 2, 4, 8, 6, 11], [12, 0, 0, 0, 0, 0]])
    return ids, torch.tensor([3, 6, 1])


def test_text_models_are_registered():
    assert {"lstm", "gru", "attention", "textcnn", "transformer"} <= set(list_models("text"))


@pytest.mark.parametrize("name", WORD_MODELS)
def test_forward_and_padding_invariance(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, vocab_size=20, embed_dim=16, **WORD_MODELS[name]).eval()
    ids, lengths = batch()
    logits = model(ids, lengths)
    assert logits.shape == (3, 3)
    with torch.no_grad():
        alone = model(ids[:1, :3], lengths[:1])  # the first text without the batch's extra padding
    assert torch.allclose(alone, logits[:1], atol=1e-5)


def test_attention_weights_sum_to_one_and_skip_padding():
    model = create_model("attention", num_classes=2, vocab_size=20, embed_dim=16, hidden_size=8).eval()
    ids, lengths = batch()
    _, weights = model.forward_with_attention(ids, lengths)
    assert torch.allclose(weights.sum(-1), torch.ones(3))
    assert (weights[0, 3:] == 0).all() and weights[2, 0] == 1


def test_pretrained_vectors_and_freezing():
    from vislang.tasks.text import TextExperimentConfig, build_task

    cfg = TextExperimentConfig(model={"name": "textcnn"}, data={"embeddings": {"path": "v.txt", "trainable": False}})
    info = {"classes": ["a", "b"], "vocab_size": 10, "embeddings": {"dim": 8}, "class_counts": {"train": [1, 1]}}
    task = build_task(cfg, info)
    vectors = torch.randn(10, 8)
    vectors[0] = 0
    task.model.set_pretrained(vectors)
    assert torch.equal(task.model.embedding.trainable.weight, vectors)
    assert not task.model.embedding.trainable.weight.requires_grad


def test_transformer_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent")  # nothing may come from a hub cache either
    from transformers import AutoTokenizer

    from vislang.models.text import pretrained_dir

    tok = AutoTokenizer.from_pretrained(str(pretrained_dir("all-MiniLM-L6-v2")))
    enc = tok(["a gorgeous , witty film", "dull"], padding=True, return_tensors="pt")
    model = create_model("transformer", num_classes=2).eval()
    lengths = enc["attention_mask"].sum(1)
    with torch.no_grad():
        logits = model(enc["input_ids"], lengths)
        alone = model(enc["input_ids"][1:, : int(lengths[1])], lengths[1:])
    assert logits.shape == (2, 2) and torch.allclose(alone, logits[1:], atol=1e-4)
    assert sum(p.numel() for p in model.parameters()) > 22_000_000  # the pretrained MiniLM-L6 body


@pytest.mark.parametrize("name", ["attention", "textcnn"])
def test_integrated_gradients_completeness(name):
    from vislang.explain.text import token_attributions

    torch.manual_seed(0)
    model = create_model(name, num_classes=2, vocab_size=20, embed_dim=16).eval()
    ids, lengths = batch()
    target = torch.tensor([1, 0, 1])
    scores, delta = token_attributions(model, ids, lengths, target, steps=200, return_delta=True)
    with torch.no_grad():
        gap = model(ids, lengths)[torch.arange(3), target] - model(torch.zeros_like(ids), lengths)[torch.arange(3), target]
    assert torch.allclose(scores.sum(-1), gap, atol=2e-3)
    assert delta.abs().max() < 2e-3
    assert (scores[0, 3:] == 0).all()  # padding gets nothing
