"""Caption metrics agree exactly with pycocoevalcap's own scorers; METEOR is missing (not 0) without
Java; the SCST CIDEr-D reward is pycocoevalcap's CIDEr-D; decoding (greedy, beam, sampling) behaves."""

from __future__ import annotations

import pytest
import torch

from vislang.errors import VislangError
from vislang.metrics.captions import CiderD, caption_scores, embedding_similarity, java_available
from vislang.models import create_model
from vislang.models.caption import Captioner
from vislang.models.decoding import beam_search, decode, greedy, sample

REFS = {
    "a.jpg": ["A dog runs through the grass .", "A brown dog is running in a field .", "The dog plays outside ."],
    "b.jpg": ["Two children play on a beach .", "Kids playing in the sand near the water ."],
    "c.jpg": ["A man rides a bicycle down the street .", "A cyclist on a city road ."],
}
GEN = {"a.jpg": "a dog is running in the grass", "b.jpg": "two children play in the sand",
       "c.jpg": "a man is riding a bike on the street"}


@pytest.mark.skipif(not java_available(), reason="pycocoevalcap's tokenizer and METEOR need Java")
def test_scores_equal_pycocoevalcap_on_the_same_captions():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": GEN[k]}] for k in REFS})
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, _ = Meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, cider_per = Cider().compute_score(gts, res)
    ours = caption_scores(REFS, GEN)
    c = ours["corpus"]
    assert ours["tokenizer"] == "ptb"
    assert [c[f"bleu{n}"] for n in range(1, 5)] == bleu
    assert (c["meteor"], c["rouge_l"], c["cider"]) == (meteor, rouge, cider)
    assert [ours["per_image"][k]["cider"] for k in REFS] == list(cider_per)
    assert [ours["per_image"][k]["bleu4"] for k in REFS] == bleu_per[3]


def test_meteor_is_missing_not_zero_without_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    assert not java_available()
    out = caption_scores(REFS, GEN)
    assert out["corpus"]["meteor"] is None and out["per_image"]["a.jpg"]["meteor"] is None
    assert out["tokenizer"] == "python"
    assert out["corpus"]["bleu4"] > 0 and out["corpus"]["cider"] > 0 and out["corpus"]["rouge_l"] > 0


def test_cider_d_reward_equals_pycocoevalcap_cider():
    from pycocoevalcap.cider.cider import Cider

    from vislang.data.captions import tokenize

    keys = list(REFS)
    refs = [[" ".join(tokenize(c)) for c in REFS[k]] for k in keys]
    gen = [" ".join(tokenize(GEN[k])) for k in keys]
    expected, per = Cider().compute_score(dict(zip(keys, refs)), {k: [g] for k, g in zip(keys, gen)})
    ours = CiderD(refs)(gen, list(range(len(keys))))
    assert ours == pytest.approx(per, rel=1e-5) and ours.mean() == pytest.approx(expected, rel=1e-5)


def test_embedding_similarity_prefers_the_right_references():
    gen = [GEN["a.jpg"], GEN["a.jpg"]]
    mean, best = embedding_similarity(gen, [REFS["a.jpg"], REFS["c.jpg"]])
    assert mean[0] > mean[1] + 0.2 and (best >= mean).all() and best[0] <= 1.0 + 1e-6


@pytest.fixture(scope="module", params=["show_tell", "show_attend_tell", "caption_transformer"])
def captioner(request) -> tuple[Captioner, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    small = {"show_tell": dict(embed_dim=32, hidden_dim=32),
             "show_attend_tell": dict(embed_dim=32, hidden_dim=32, attention_dim=16),
             "caption_transformer": dict(d_model=32, num_layers=2, num_heads=4, ff_dim=64)}[request.param]
    dec = create_model(request.param, vocab_size=40, feature_dim=24, grid_positions=9, **small)
    model = Captioner(None, dec).eval()
    return model, (torch.randn(5, 24), torch.randn(5, 9, 24))


def test_beam_of_one_is_greedy_and_decoding_is_batched(captioner):
    model, feats = captioner
    g = greedy(model, feats, max_length=12)
    b, _ = beam_search(model, feats, beam_size=1, max_length=12)
    assert torch.equal(g, b)
    # batched beam search gives each image the caption it gets alone
    b3, s3 = beam_search(model, feats, beam_size=3, max_length=12)
    for i in range(5):
        one, s1 = beam_search(model, (feats[0][i:i + 1], feats[1][i:i + 1]), beam_size=3, max_length=12)
        n = one.shape[1]
        assert torch.equal(one[0], b3[i, :n]) and not b3[i, n:].any()
        assert s1[0] == pytest.approx(float(s3[i]), abs=1e-4)
    assert (s3 >= greedy_logprob(model, feats, g) - 1e-4).all()  # beam 3 finds at least the greedy score


def greedy_logprob(model, feats, seqs):
    from vislang.models.decoding import START

    prefix = torch.cat([torch.full_like(seqs[:, :1], START), seqs[:, :-1]], 1)
    with torch.no_grad():
        logits, _ = model(feats, prefix)
    lp = logits.float().log_softmax(-1).gather(2, seqs[..., None]).squeeze(-1)
    return (lp * (seqs != 0)).sum(1)


def test_no_repeat_ngram_sampling_and_beam_size_zero(captioner):
    model, feats = captioner
    seqs, _ = beam_search(model, feats, beam_size=3, max_length=15, no_repeat_ngram=2)
    for row in seqs.tolist():
        words = [w for w in row if w not in (0, 2)]
        bigrams = list(zip(words, words[1:]))
        assert len(bigrams) == len(set(bigrams))
    ids, logp = sample(model, feats, n=4, max_length=10, generator=torch.Generator().manual_seed(0))
    assert ids.shape[0] == 20 and logp.shape == ids.shape and (logp <= 0).all()
    with pytest.raises(VislangError, match="Beam size must be at least 1"):
        decode(model, feats, beam_size=0)
