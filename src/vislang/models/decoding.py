"""Caption decoding shared by every decoder: greedy, batched beam search and sampling.

All three work on a whole batch of images at once through the captioner interface
``encode(inputs) -> state`` / ``decode_step(state, tokens) -> (logits, state)`` (see
:mod:`vislang.models.caption`), so one call decodes many images (and all their beams) together.
Sequences are returned without ``<start>``, padded with ``<pad>`` (0) after ``<end>``.
"""

from __future__ import annotations

from typing import Any

import torch

from vislang.errors import VislangError
from vislang.models.caption import expand_state, reorder_state

PAD, START, END = 0, 1, 2


def _finish(seqs: torch.Tensor) -> torch.Tensor:
    """Zero every token after the first ``<end>``."""
    ended = (seqs == END).long().cumsum(1)
    after = (ended - (seqs == END).long()) > 0
    return seqs.masked_fill(after, PAD)


def _words_only(logits: torch.Tensor) -> torch.Tensor:
    """Logits with ``<pad>`` and ``<start>`` ruled out (a caption never contains them)."""
    logits = logits.clone()
    logits[:, [PAD, START]] = float("-inf")
    return logits


@torch.no_grad()
def greedy(model: Any, inputs: Any, max_length: int = 20) -> torch.Tensor:
    """The most likely word at each step: ``[B, <= max_length + 1]`` token ids."""
    state = model.encode(inputs)
    b = next(iter(state.values())).shape[0]
    device = next(iter(state.values())).device
    tokens = torch.full((b, 1), START, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for _ in range(max_length + 1):
        logits, state = model.decode_step(state, tokens)
        word = _words_only(logits.float()).argmax(-1).masked_fill(done, PAD)
        tokens = torch.cat([tokens, word[:, None]], 1)
        done |= word == END
        if bool(done.all()):
            break
    return _finish(tokens[:, 1:])


def _banned_ngrams(tokens: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, words) whose choice would repeat an n-gram already in that row of ``tokens`` ``[N, t]``."""
    if n <= 0 or tokens.shape[1] < n:
        empty = torch.empty(0, dtype=torch.long, device=tokens.device)
        return empty, empty
    windows = tokens.unfold(1, n, 1)  # [N, t-n+1, n]
    prefix = tokens[:, tokens.shape[1] - (n - 1):] if n > 1 else tokens[:, :0]
    match = (windows[:, :, : n - 1] == prefix[:, None, :]).all(-1)  # [N, W]
    rows, pos = match.nonzero(as_tuple=True)
    return rows, windows[rows, pos, n - 1]


@torch.no_grad()
def beam_search(model: Any, inputs: Any, beam_size: int = 3, max_length: int = 20, length_penalty: float = 0.0,
                no_repeat_ngram: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search: every image's ``beam_size`` hypotheses advance together in one batch.

    Finished hypotheses stay in the beam (only ``<end>``/``<pad>`` may follow, at no cost); at the end
    each is ranked by ``log p / length ** length_penalty`` (0 = raw log-probability). With
    ``no_repeat_ngram = n`` a word that would repeat an n-gram of its hypothesis is never chosen.
    Returns the best sequence per image ``[B, T]`` and its (length-normalised) score ``[B]``.
    """
    if beam_size < 1:
        raise VislangError(f"Beam size must be at least 1 (got {beam_size}); use 1 for greedy decoding.")
    k = beam_size
    state = model.encode(inputs)
    first = next(iter(state.values()))
    b, device = first.shape[0], first.device
    state = expand_state(state, k)
    tokens = torch.full((b * k, 1), START, dtype=torch.long, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step gives k distinct words
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, device=device)
    offsets = (torch.arange(b, device=device) * k)[:, None]
    for _ in range(max_length + 1):
        logits, state = model.decode_step(state, tokens)
        logp = _words_only(logits.float()).log_softmax(-1)
        vocab = logp.shape[-1]
        rows, words = _banned_ngrams(tokens[:, 1:], no_repeat_ngram)
        if len(rows):
            logp[rows, words] = float("-inf")
        # a finished hypothesis continues with <pad> only, keeping its score
        logp[done] = float("-inf")
        logp[done, PAD] = 0.0
        logp[~done, PAD] = float("-inf")
        total = (scores.view(-1, 1) + logp).view(b, k * vocab)
        scores, flat = total.topk(k, dim=1)
        beam = (flat // vocab + offsets).view(-1)
        word = (flat % vocab).view(-1)
        tokens = torch.cat([tokens.index_select(0, beam), word[:, None]], 1)
        state = reorder_state(state, beam)
        was_done = done.index_select(0, beam)
        lengths = lengths.index_select(0, beam) + (~was_done).float()
        done = was_done | (word == END)
        if bool(done.all()):
            break
    final = scores.view(-1) / lengths.clamp_min(1) ** length_penalty if length_penalty else scores.view(-1)
    best = final.view(b, k).argmax(1) + offsets.view(-1)
    return _finish(tokens.index_select(0, best)[:, 1:]), final.index_select(0, best)


def sample(model: Any, inputs: Any, n: int = 1, max_length: int = 20, temperature: float = 1.0,
           top_k: int = 0, generator: torch.Generator | None = None,
           state: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``n`` captions per image (rows ``[i*n, i*n+n)`` belong to image ``i``).

    Returns tokens ``[B*n, T]`` and the log-probability of each chosen token ``[B*n, T]`` (0 after
    ``<end>``). Runs with gradients when they are enabled (self-critical training differentiates it).
    """
    state = expand_state(state if state is not None else model.encode(inputs), n)
    first = next(iter(state.values()))
    m, device = first.shape[0], first.device
    tokens = torch.full((m, 1), START, dtype=torch.long, device=device)
    logps: list[torch.Tensor] = []
    done = torch.zeros(m, dtype=torch.bool, device=device)
    for _ in range(max_length + 1):
        logits, state = model.decode_step(state, tokens)
        logp = _words_only(logits.float() / temperature).log_softmax(-1)
        probs = logp.detach().exp()
        if top_k:
            kth = probs.topk(top_k, -1).values[:, -1:]
            probs = probs.masked_fill(probs < kth, 0.0)
        word = torch.multinomial(probs, 1, generator=generator).squeeze(1).masked_fill(done, PAD)
        logps.append(logp.gather(1, word[:, None]).squeeze(1).masked_fill(done, 0.0))
        tokens = torch.cat([tokens, word[:, None]], 1)
        done = done | (word == END)
        if bool(done.all()):
            break
    return _finish(tokens[:, 1:]), torch.stack(logps, 1)


def decode(model: Any, inputs: Any, beam_size: int = 1, max_length: int = 20, length_penalty: float = 0.0,
           no_repeat_ngram: int = 0) -> torch.Tensor:
    """Greedy when ``beam_size == 1`` and no n-gram blocking, else beam search; token ids ``[B, T]``."""
    if beam_size < 1:
        raise VislangError(f"Beam size must be at least 1 (got {beam_size}); use 1 for greedy decoding.")
    if beam_size == 1 and not no_repeat_ngram:
        return greedy(model, inputs, max_length)
    return beam_search(model, inputs, beam_size, max_length, length_penalty, no_repeat_ngram)[0]
