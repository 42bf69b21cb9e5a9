"""Caption decoders (registered with ``task="caption"``) and the captioner that joins them to an image encoder.

Every decoder has one interface, so greedy, beam and sampled decoding and SCST are written once
(:mod:`vislang.models.decoding`):

* ``init_state(pooled, grid) -> state``: a dict of batch-first tensors (the decoder's memory);
* ``step(state, tokens) -> (logits [B, V], state)``: scores of the next word after the prefix
  ``tokens`` ``[B, t]`` (``<start>`` first); beam search reorders a state by indexing dim 0;
* ``forward(state, tokens) -> (logits [B, T, V], attention [B, T, P] or None)``: teacher forcing
  from a state (training expands one image's state to its K captions instead of its features).

Image features: ``pooled [B, C]`` (global vector) and ``grid [B, P, C]`` (the backbone's last
feature map, ``P = h * w`` positions). :class:`Captioner` exposes the DESIGN interface
``encode(images or features)`` / ``decode_step(state, tokens)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vislang.models.registry import register_model

State = dict[str, torch.Tensor]


class ShowTell(nn.Module):
    """Show and Tell (Vinyals et al. 2015): the global image vector initialises an LSTM language model."""

    has_attention = False

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 num_layers: int = 1, dropout: float = 0.5, embeddings: torch.Tensor | None = None):
        super().__init__()
        self.embed = _embedding(vocab_size, embed_dim, embeddings)
        self.init_h = nn.Linear(feature_dim, hidden_dim * num_layers)
        self.init_c = nn.Linear(feature_dim, hidden_dim * num_layers)
        self.lstm = nn.LSTM(self.embed.embedding_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.layers, self.hidden = num_layers, hidden_dim

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor | None = None) -> State:
        b = pooled.shape[0]
        h = torch.tanh(self.init_h(pooled)).view(b, self.layers, self.hidden)
        c = torch.tanh(self.init_c(pooled)).view(b, self.layers, self.hidden)
        return {"h": h, "c": c}

    def _run(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        hc = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())
        y, (h, c) = self.lstm(self.drop(self.embed(tokens)), hc)
        return self.out(self.drop(y)), {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        logits, state = self._run(state, tokens[:, -1:])
        return logits[:, -1], state

    def forward(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self._run(state, tokens)[0], None


class ShowAttendTell(nn.Module):
    """Show, Attend and Tell (Xu et al. 2015), soft attention: at each word an MLP attends over the
    grid, a gate ``beta = sigmoid(W h)`` scales the context, and the LSTM reads [word; context].
    The attention weights are returned for the doubly stochastic regularisation and for explanations."""

    has_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.5, gate: bool = True,
                 embeddings: torch.Tensor | None = None):
        super().__init__()
        self.embed = _embedding(vocab_size, embed_dim, embeddings)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.att_feat = nn.Linear(feature_dim, attention_dim)
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)
        self.att_score = nn.Linear(attention_dim, 1)
        self.gate = nn.Linear(hidden_dim, feature_dim) if gate else None
        self.cell = nn.LSTMCell(self.embed.embedding_dim + feature_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor) -> State:
        mean = grid.mean(1)
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean)),
                "grid": grid, "keys": self.att_feat(grid)}

    def _attend(self, state: State, word: torch.Tensor) -> tuple[torch.Tensor, State, torch.Tensor]:
        h, c, grid = state["h"], state["c"], state["grid"]
        e = self.att_score(torch.tanh(state["keys"] + self.att_hidden(h).unsqueeze(1))).squeeze(-1)
        alpha = e.float().softmax(-1).to(grid.dtype)
        context = torch.bmm(alpha.unsqueeze(1), grid).squeeze(1)  # no [B, P, C] temporary per word
        if self.gate is not None:
            context = torch.sigmoid(self.gate(h)) * context
        h, c = self.cell(torch.cat([self.embed(word), context], -1), (h, c))
        return self.out(self.drop(h)), {**state, "h": h, "c": c}, alpha

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        logits, state, _ = self._attend(state, tokens[:, -1])
        return logits, state

    def forward(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, alphas = [], []
        for t in range(tokens.shape[1]):
            out, state, alpha = self._attend(state, tokens[:, t])
            logits.append(out)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer: causal self-attention with a key/value cache for decoding,
    cross-attention over the image grid, feed-forward. Written here (not ``nn.TransformerDecoderLayer``)
    for two things torch's layer lacks: the cache (decoding one word costs one position, not the whole
    prefix) and cross-attention of an image's K captions against its memory computed once (the K
    query sequences are laid end to end: cross-attention has no mask, so this is exact)."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.h, self.p = num_heads, dropout
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.self_out = nn.Linear(d_model, d_model)
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.cross_out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model))
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [N, t, d] -> [N, h, t, d/h]
        return x.unflatten(-1, (self.h, -1)).transpose(1, 2)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(memory).chunk(2, -1)
        return self._heads(k), self._heads(v)

    def forward(self, x: torch.Tensor, mem_k: torch.Tensor, mem_v: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                weights: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        n, t, _ = x.shape
        p = self.p if self.training else 0.0
        q, k, v = (self._heads(z) for z in self.qkv(self.norm1(x)).chunk(3, -1))
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=cache is None and t > 1)
        x = x + self.drop(self.self_out(a.transpose(1, 2).flatten(2)))
        m = mem_k.shape[0]
        r = n // m  # query rows per memory row (K captions of one image)
        q = self._heads(self.q(self.norm2(x)))  # [n, h, t, dh]
        q = q.unflatten(0, (m, r)).transpose(1, 2).flatten(2, 3)  # [m, h, r*t, dh]
        att = None
        if weights:
            att = (q @ mem_k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
            c = att @ mem_v
            att = att.mean(1).unflatten(1, (r, t)).flatten(0, 1)  # [n, t, P], mean over heads
        else:
            c = F.scaled_dot_product_attention(q, mem_k, mem_v, dropout_p=p)
        c = c.unflatten(2, (r, t)).transpose(1, 2).flatten(0, 1)  # [n, h, t, dh]
        x = x + self.drop(self.cross_out(c.transpose(1, 2).flatten(2)))
        x = x + self.drop(self.ff(self.norm3(x)))
        return x, (k, v), att


class TransformerCaptioner(nn.Module):
    """A transformer decoder: masked self-attention over the words, cross-attention over the grid
    (projected, with learned position embeddings; the pooled vector is one more memory token)."""

    has_attention = True
    broadcasts_state = True  # forward() takes one state row per image for its K captions

    def __init__(self, vocab_size: int, feature_dim: int, grid_positions: int = 49, d_model: int = 512,
                 num_layers: int = 3, num_heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1,
                 max_length: int = 40, tie_embeddings: bool = True, embeddings: torch.Tensor | None = None):
        super().__init__()
        # GPT-2 style: word and position embeddings on the same small scale (std 0.02, no sqrt(d)
        # factor), so the position signal is not drowned by the words and tied output logits start small
        self.embed = _embedding(vocab_size, d_model, embeddings, project=True)
        if embeddings is None:
            nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(max_length + 2, d_model) * 0.02)
        self.mem_proj = nn.Sequential(nn.Linear(feature_dim, d_model), nn.LayerNorm(d_model))
        self.mem_pos = nn.Parameter(torch.randn(grid_positions + 1, d_model) * 0.1)
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, ff_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, vocab_size)
        if tie_embeddings and isinstance(self.embed, nn.Embedding):
            self.out.weight = self.embed.weight
        self.d_model = d_model

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor) -> State:
        mem = torch.cat([pooled.unsqueeze(1), grid], 1)
        mem = self.mem_proj(mem) + self.mem_pos[: mem.shape[1]]
        state: State = {}
        n, dh = mem.shape[0], self.d_model // self.layers[0].h
        for i, layer in enumerate(self.layers):
            state[f"mk{i}"], state[f"mv{i}"] = layer.memory_kv(mem)
            state[f"k{i}"] = state[f"v{i}"] = mem.new_zeros(n, layer.h, 0, dh)  # self-attention cache
        return state

    def _embed(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.drop(self.embed(tokens) + self.pos[start: start + tokens.shape[1]])

    def forward(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = self._embed(tokens)
        for i, layer in enumerate(self.layers):
            x, _, _ = layer(x, state[f"mk{i}"], state[f"mv{i}"])
        return self.out(self.norm(x)), None

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        t = tokens.shape[1] - 1
        x = self._embed(tokens[:, -1:], t)
        new = dict(state)
        for i, layer in enumerate(self.layers):
            x, (k, v), _ = layer(x, state[f"mk{i}"], state[f"mv{i}"], cache=(state[f"k{i}"], state[f"v{i}"]))
            new[f"k{i}"], new[f"v{i}"] = k, v
        return self.out(self.norm(x))[:, -1], new

    @torch.no_grad()
    def cross_attention(self, pooled: torch.Tensor, grid: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Last layer's cross-attention of each word over the grid positions, averaged over heads:
        ``[B, T, P]`` (the pooled token's share dropped, rows renormalised)."""
        state = self.init_state(pooled, grid)
        x = self._embed(tokens)
        att = None
        for i, layer in enumerate(self.layers):
            x, _, att = layer(x, state[f"mk{i}"], state[f"mv{i}"], weights=i == len(self.layers) - 1)
        w = att[:, :, 1:]
        return w / w.sum(-1, keepdim=True).clamp_min(1e-9)


def _embedding(vocab_size: int, dim: int, vectors: torch.Tensor | None, project: bool = False) -> nn.Module:
    """A word embedding, initialised from pretrained vectors when given (projected to ``dim`` if sizes differ)."""
    if vectors is None:
        return nn.Embedding(vocab_size, dim, padding_idx=0)
    emb = nn.Embedding.from_pretrained(vectors.float(), freeze=False, padding_idx=0)
    if vectors.shape[1] == dim or not project:
        return emb
    return nn.Sequential(emb, nn.Linear(vectors.shape[1], dim))


@register_model("show_tell", task="caption")
def show_tell(vocab_size: int, feature_dim: int, grid_positions: int = 49, embed_dim: int = 512,
              hidden_dim: int = 512, num_layers: int = 1, dropout: float = 0.5,
              embeddings: torch.Tensor | None = None) -> ShowTell:
    """Show and Tell: global image vector → LSTM (Vinyals et al. 2015)."""
    return ShowTell(vocab_size, feature_dim, embed_dim, hidden_dim, num_layers, dropout, embeddings)


@register_model("show_attend_tell", task="caption")
def show_attend_tell(vocab_size: int, feature_dim: int, grid_positions: int = 49, embed_dim: int = 512,
                     hidden_dim: int = 512, attention_dim: int = 512, dropout: float = 0.5, gate: bool = True,
                     embeddings: torch.Tensor | None = None) -> ShowAttendTell:
    """Show, Attend and Tell: soft attention over the grid with a gate (Xu et al. 2015)."""
    return ShowAttendTell(vocab_size, feature_dim, embed_dim, hidden_dim, attention_dim, dropout, gate, embeddings)


@register_model("caption_transformer", task="caption")  # 'transformer' is the text classifier
def caption_transformer(vocab_size: int, feature_dim: int, grid_positions: int = 49, d_model: int = 512,
                num_layers: int = 3, num_heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1,
                max_length: int = 40, tie_embeddings: bool = True,
                embeddings: torch.Tensor | None = None) -> TransformerCaptioner:
    """Transformer decoder: masked self-attention + cross-attention over the grid."""
    return TransformerCaptioner(vocab_size, feature_dim, grid_positions, d_model, num_layers, num_heads, ff_dim,
                                dropout, max_length, tie_embeddings, embeddings)


class Captioner(nn.Module):
    """Image encoder + caption decoder. ``encoder`` maps uint8 images ``[B, 3, H, W]`` to a feature grid
    ``[B, P, C]``; with a frozen encoder the data module caches its output and training feeds
    ``(pooled, grid)`` straight to the decoder."""

    def __init__(self, encoder: nn.Module | None, decoder: nn.Module, freeze_encoder: bool = True):
        super().__init__()
        self.encoder, self.decoder, self.freeze_encoder = encoder, decoder, freeze_encoder
        if encoder is not None and freeze_encoder:
            encoder.requires_grad_(False)

    @property
    def has_attention(self) -> bool:
        return bool(getattr(self.decoder, "has_attention", False))

    def features(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled [B, C], grid [B, P, C])`` of uint8 images ``[B, 3, H, W]``, or cached features as they are."""
        if isinstance(inputs, (tuple, list)):
            return inputs[0].float(), inputs[1].float()
        if self.encoder is None:
            raise RuntimeError("this captioner was built without an image encoder")
        if self.freeze_encoder:
            self.encoder.eval()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            grid = self.encoder(inputs).float()
        return grid.mean(1), grid

    def encode(self, inputs: Any) -> State:
        """The decoder state for images ``[B, 3, H, W]`` or cached features ``(pooled, grid)``."""
        return self.decoder.init_state(*self.features(inputs))

    def decode_step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Logits ``[B, V]`` of the word after ``tokens`` ``[B, t]``, and the updated state."""
        return self.decoder.step(state, tokens)

    def forward(self, inputs: Any, tokens: torch.Tensor, repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: logits ``[B*repeat, T, V]`` for input tokens ``[B*repeat, T]`` (``repeat``
        captions per image, image-major) and attention (or None)."""
        state = self.encode(inputs)
        if repeat > 1 and not getattr(self.decoder, "broadcasts_state", False):
            state = expand_state(state, repeat)
        return self.decoder(state, tokens)

    @torch.no_grad()
    def attention(self, inputs: Any, tokens: torch.Tensor) -> torch.Tensor | None:
        """Per-word attention over the grid positions ``[B, T, P]`` for the prefix tokens (attention decoders)."""
        pooled, grid = self.features(inputs)
        if isinstance(self.decoder, TransformerCaptioner):
            return self.decoder.cross_attention(pooled, grid, tokens)
        if isinstance(self.decoder, ShowAttendTell):
            return self.decoder(self.decoder.init_state(pooled, grid), tokens)[1]
        return None


def reorder_state(state: State, index: torch.Tensor) -> State:
    """The state of the batch rows ``index`` (beam search keeps the best continuations)."""
    return {k: v.index_select(0, index) for k, v in state.items()}


def expand_state(state: State, n: int) -> State:
    """Each batch row repeated ``n`` times in place (``[a, b] → [a, a, b, b]``)."""
    return {k: v.repeat_interleave(n, 0) for k, v in state.items()}


def decoder_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                 attention: torch.Tensor | None = None, attention_reg: float = 0.0) -> torch.Tensor:
    """Cross-entropy over non-pad targets (+ Xu et al.'s doubly stochastic attention penalty
    ``lambda * sum_p (1 - sum_t alpha_tp)^2``, which pushes every region to be attended once overall)."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=0,
                           label_smoothing=label_smoothing)
    if attention is not None and attention_reg > 0:
        mask = (targets != 0).unsqueeze(-1).to(attention.dtype)
        coverage = (attention.float() * mask).sum(1)
        loss = loss + attention_reg * ((1.0 - coverage) ** 2).mean()
    return loss
