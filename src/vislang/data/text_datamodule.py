"""The text DataModule: dataset → label_map → subsets → test/val carve (or a CV fold) → token ids in RAM
→ length-bucketed whole-batch loaders.

Texts are tokenized once in :meth:`TextDataModule.setup` and held per split as one flat id tensor
plus offsets and lengths. A batch is gathered with one vectorised index operation, padded only
to its own longest text: ``((ids [B, T], lengths [B]), labels [B])``. Training batches come from
length buckets (texts of similar length together, batch order shuffled), so a batch is rarely
mostly padding; recurrent models then pack the batch (``pack_padded_sequence``) and skip the
padding entirely.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vislang.data.datamodule import BatchIndexSampler, stratified_sample
from vislang.data.text import TableFormat, TextDataset, TextSplit, Tokenizer, Vocab, apply_label_map
from vislang.errors import VislangError

log = logging.getLogger("vislang.data")


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


# ---------------------------------------------------------------------------------------------
# encoders: text → token ids, the same at training and at prediction time


class WordEncoder:
    """vislang's :class:`~vislang.data.text.Tokenizer` plus a :class:`~vislang.data.text.Vocab`."""

    kind = "words"
    pad_id = 0

    def __init__(self, tokenizer: Tokenizer, vocab: Vocab | None, max_length: int):
        self.tokenizer, self.vocab, self.max_length = tokenizer, vocab, max_length

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        return [self.tokenizer(t) for t in texts]

    def encode(self, texts: list[str]) -> list[list[int]]:
        assert self.vocab is not None
        # a text with no known token still gets one <unk> (a model cannot read an empty sequence)
        return [self.vocab.encode(toks[: self.max_length]) or [1] for toks in self.tokenize(texts)]

    def tokens(self, ids: list[int]) -> list[str]:
        assert self.vocab is not None
        return [self.vocab.tokens[i] for i in ids]

    def display(self, text: str) -> list[str] | None:
        """The text's tokens as written (out-of-vocabulary words too), aligned with its ids."""
        return self.tokenizer(text)[: self.max_length] or ["<unk>"]

    def special_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(ids, dtype=torch.bool)

    def to_info(self) -> dict[str, Any]:
        assert self.vocab is not None
        return {"kind": self.kind, "max_length": self.max_length, "settings": vars(self.tokenizer).copy(),
                "vocab_size": len(self.vocab)}


class HFEncoder:
    """A pretrained transformer's own Hugging Face tokenizer (word pieces, [CLS] ... [SEP])."""

    kind = "huggingface"

    def __init__(self, source: str, max_length: int):
        from transformers import AutoTokenizer

        from vislang.models.text import pretrained_dir

        self.source, self.max_length = source, max_length
        self.tok = AutoTokenizer.from_pretrained(str(pretrained_dir(source)))
        self.pad_id = int(self.tok.pad_token_id or 0)
        self.specials = torch.tensor(sorted(set(self.tok.all_special_ids)))

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def tokens(self, ids: list[int]) -> list[str]:
        return self.tok.convert_ids_to_tokens(ids)

    def special_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(ids, self.specials)

    def display(self, text: str) -> list[str] | None:
        return None  # word pieces are shown as the tokenizer cut them (joined into words when explained)

    def to_info(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "max_length": self.max_length,
                "vocab_size": len(self.tok)}


def encoder_from_info(info: dict[str, Any]) -> WordEncoder | HFEncoder:
    """The encoder a run was trained with, from its ``data.json``."""
    t = info["tokenizer"]
    if t["kind"] == HFEncoder.kind:
        return HFEncoder(t["source"], t["max_length"])
    return WordEncoder(Tokenizer(**t["settings"]), Vocab(info["vocab"]), t["max_length"])


# ---------------------------------------------------------------------------------------------
# tensors and batches


class TokenStore:
    """Token ids of one split: a flat tensor, per-text offsets and lengths; ``gather`` pads a batch."""

    def __init__(self, ids: list[list[int]], pad_id: int = 0):
        self.lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        self.offsets = torch.zeros(len(ids), dtype=torch.long)
        if len(ids) > 1:
            self.offsets[1:] = torch.cumsum(self.lengths[:-1], 0)
        self.flat = torch.tensor([i for x in ids for i in x] + [pad_id], dtype=torch.long)
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.lengths)

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, T], lengths [B])`` with ``T`` the batch's longest text (one indexing op, no loop)."""
        lengths = self.lengths[index]
        t = int(lengths.max()) if len(lengths) else 1
        pos = torch.arange(t)
        valid = pos[None, :] < lengths[:, None]
        where = torch.where(valid, self.offsets[index, None] + pos[None, :], len(self.flat) - 1)
        return self.flat[where], lengths

    def row(self, i: int) -> list[int]:
        o, n = int(self.offsets[i]), int(self.lengths[i])
        return self.flat[o:o + n].tolist()


class TokenBatchDataset(Dataset):
    """Items are whole batches: ``dataset[index_tensor] → ((ids, lengths), labels)``."""

    def __init__(self, store: TokenStore, labels: torch.Tensor):
        self.store, self.labels = store, labels

    def __getitem__(self, index: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return self.store.gather(index), self.labels[index]

    def __len__(self) -> int:
        return len(self.labels)


class BucketBatchSampler(Sampler[torch.Tensor]):
    """Length bucketing: a seeded permutation is cut into pools of ``pool`` batches, each pool sorted by
    length and cut into batches, and the batches shuffled, so each batch holds texts of similar length
    while every epoch still sees a different, reproducible order (seed, epoch)."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int = 0, pool: int = 50):
        self.lengths, self.batch_size, self.seed, self.pool = lengths, batch_size, seed, pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g)
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += list(chunk.split(self.batch_size))
        if len(batches) > 1 and len(batches[-1]) < self.batch_size / 2:
            batches.pop()  # a tiny last batch only adds noise
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]

    def __len__(self) -> int:
        # pools hold whole batches, so only the very last batch can be partial (and dropped when tiny)
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest >= self.batch_size / 2 or (rest and not full) else 0)


# ---------------------------------------------------------------------------------------------
# the data module


class TextDataModule(L.LightningDataModule):
    """Loads ``cfg.dataset`` and serves token-id batches; see the module docstring.

    ``hf_source`` selects a pretrained transformer's tokenizer instead of vislang's word tokenizer.
    After :meth:`setup`: ``classes``, ``split_sizes``, ``class_counts``, ``label_counts`` (raw and
    after ``label_map``), ``texts`` per split, ``encoder``, ``vectors`` (or None) and ``coverage``.
    """

    def __init__(self, cfg: Any, seed: int = 0, hf_source: str | None = None, progress: bool = True):
        super().__init__()
        self.cfg, self.seed, self.hf_source, self.progress = cfg, seed, hf_source, progress
        self.dataset: TextDataset | None = None
        self.splits: dict[str, TextSplit] = {}
        self.stores: dict[str, TokenStore] = {}
        self.labels: dict[str, torch.Tensor] = {}
        self.label_counts: dict[str, dict[str, dict[str, int]]] = {}
        self.classes: list[str] = []
        self.encoder: WordEncoder | HFEncoder | None = None
        self.vectors: np.ndarray | None = None
        self.coverage: dict[str, Any] | None = None
        self.notes: list[str] = []

    # -- loading ------------------------------------------------------------------------------

    def _load(self) -> TextDataset:
        from vislang.data.registry import DATASETS, create_dataset

        cfg = self.cfg
        entry = DATASETS.get(cfg.dataset)
        if entry.meta.get("task") != "text":
            raise VislangError(f"Dataset '{cfg.dataset}' is not a text dataset; text datasets: "
                               f"{', '.join(DATASETS.names(task='text'))}.")
        reader_keys = ("text_column", "label_column", "sep", "val_path", "test_path")
        if entry.meta.get("source") == "path":
            fmt = TableFormat(text_column=cfg.text_column or "text", label_column=cfg.label_column or "label",
                              sep=cfg.sep, quoting=cfg.quoting, encoding=cfg.encoding, header=cfg.header,
                              drop_invalid=cfg.drop_invalid)
            return create_dataset(cfg.dataset, path=cfg.path, table=fmt, val_path=cfg.val_path,
                                  test_path=cfg.test_path, **cfg.options)
        for key in reader_keys:
            if getattr(cfg, key) is not None:
                raise VislangError(f"data.{key} is for files you give (dataset text_file with data.path); dataset "
                                   f"'{cfg.dataset}' knows its own format. Remove data.{key}.")
        return create_dataset(cfg.dataset, path=cfg.path, **cfg.options)

    def setup(self, stage: str | None = None) -> None:
        """Read, map labels, subset, carve, tokenize, build the vocabulary and load vectors. Idempotent."""
        if self.dataset is not None:
            return
        cfg = self.cfg
        dataset = self._load()
        splits = dict(dataset.splits)
        self.label_counts["raw"] = {k: dict(sorted(Counter(s.labels).items())) for k, s in splits.items()}
        splits = {k: apply_label_map(s, cfg.label_map) for k, s in splits.items()}
        for key in cfg.subset:
            if key not in set(splits) | {"val"}:
                raise VislangError(f"data.subset names split '{key}', but dataset '{dataset.name}' has splits "
                                   f"{', '.join(sorted(set(splits) | {'val'}))}.")
        self.classes = sorted(set(splits["train"].labels))
        if len(self.classes) < 2:
            raise VislangError(f"The train split of '{dataset.name}' has {len(self.classes)} class after data.label_map; "
                               "a classifier needs at least 2.")
        for name, split in splits.items():
            unknown = sorted(set(split.labels) - set(self.classes))
            if unknown:
                i = split.labels.index(unknown[0])
                raise VislangError(f"Label '{unknown[0]}' ({split.where(i)}) of split '{name}' never occurs in train "
                                   f"(classes: {', '.join(self.classes)}). Map or drop it with data.label_map.")
        splits = {k: self._cap(k, s) for k, s in splits.items()}
        if "test" not in splits and cfg.test_fraction > 0:
            splits["train"], splits["test"] = self._carve(splits["train"], cfg.test_fraction, "test")
        if cfg.cv_folds:
            splits.pop("val", None)
            splits["train"], splits["val"] = self._fold(splits["train"])
        elif "val" not in splits and cfg.val_fraction > 0:
            splits["train"], splits["val"] = self._carve(splits["train"], cfg.val_fraction, "val")
            splits["val"] = self._cap("val", splits["val"])
        self.label_counts["mapped"] = {k: dict(sorted(Counter(s.labels).items())) for k, s in splits.items()}
        self.splits = splits
        self._encode()
        self.dataset = dataset

    def _encode(self) -> None:
        cfg = self.cfg
        index = {c: i for i, c in enumerate(self.classes)}
        if self.hf_source:
            self.encoder = HFEncoder(self.hf_source, cfg.max_length)
            ids = {k: self.encoder.encode(s.texts) for k, s in self.splits.items()}
        else:
            enc = WordEncoder(Tokenizer(**cfg.tokenizer.model_dump()), None, cfg.max_length)
            tokens = {k: enc.tokenize(s.texts) for k, s in self.splits.items()}
            enc.vocab = Vocab.build(tokens["train"], cfg.vocab.min_freq, cfg.vocab.max_size)
            self.encoder = enc
            if cfg.embeddings.path or cfg.embeddings.source:
                self._load_vectors(Counter(t for toks in tokens["train"] for t in toks))
            ids = {k: [enc.vocab.encode(t[: cfg.max_length]) or [1] for t in toks] for k, toks in tokens.items()}
        for k, s in self.splits.items():
            self.stores[k] = TokenStore(ids[k], self.encoder.pad_id)
            self.labels[k] = torch.tensor([index[label] for label in s.labels], dtype=torch.long)

    def _load_vectors(self, counts: Counter) -> None:
        from vislang.data.text import load_word_vectors

        emb = self.cfg.embeddings
        path = emb.path
        if emb.source:
            from vislang.data.fetch import fetch
            from vislang.data.text import WORD_VECTORS

            if emb.source not in WORD_VECTORS:
                raise VislangError(f"data.embeddings.source '{emb.source}' is unknown; known: {', '.join(WORD_VECTORS)}.")
            path = str(fetch(WORD_VECTORS[emb.source], progress=self.progress))
        assert isinstance(self.encoder, WordEncoder) and self.encoder.vocab is not None
        self.vectors, self.coverage, self.encoder.vocab = load_word_vectors(
            path, self.encoder.vocab, seed=self.seed, token_counts=counts, extend=emb.extend_vocab)
        log.info("word vectors %s: %.1f%% of the vocabulary, %.1f%% of training tokens", path,
                 100 * self.coverage["type_coverage"], 100 * self.coverage.get("token_coverage", 0))

    def _cap(self, name: str, split: TextSplit) -> TextSplit:
        cap = self.cfg.subset.get(name)
        if cap is None or cap >= len(split):
            return split
        return split.take(stratified_sample(self._ids(split), cap, _rng(self.seed, f"subset/{name}")))

    def _ids(self, split: TextSplit) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in split.labels], dtype=np.int64)

    def _carve(self, train: TextSplit, fraction: float, name: str) -> tuple[TextSplit, TextSplit]:
        n = max(1, round(len(train) * fraction))
        if n >= len(train):
            raise VislangError(f"data.{name}_fraction={fraction} leaves no training texts out of {len(train)}.")
        picked = stratified_sample(self._ids(train), n, _rng(self.seed, name))
        rest = np.setdiff1d(np.arange(len(train)), picked)
        return train.take(rest), train.take(picked)

    def _fold(self, train: TextSplit) -> tuple[TextSplit, TextSplit]:
        from sklearn.model_selection import StratifiedKFold

        k, i = self.cfg.cv_folds, self.cfg.cv_fold or 0
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
        labels = self._ids(train)
        for j, (tr, va) in enumerate(folds.split(np.zeros(len(labels)), labels)):
            if j == i:
                return train.take(tr), train.take(va)
        raise VislangError(f"data.cv_fold={i} must be below data.cv_folds={k}.")

    # -- facts ---------------------------------------------------------------------------------

    def _require(self) -> TextDataset:
        if self.dataset is None:
            raise RuntimeError("call TextDataModule.setup() first")
        return self.dataset

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def split_sizes(self) -> dict[str, int]:
        self._require()
        return {k: len(v) for k, v in self.labels.items()}

    @property
    def class_counts(self) -> dict[str, list[int]]:
        self._require()
        return {k: torch.bincount(v, minlength=self.num_classes).tolist() for k, v in self.labels.items()}

    def texts(self, split: str) -> list[str]:
        return self.splits[split].texts

    def length_stats(self) -> dict[str, dict[str, float]]:
        return {k: {"mean": round(float(s.lengths.float().mean()), 2), "max": int(s.lengths.max()),
                    "truncated": int((s.lengths >= self.cfg.max_length).sum())} for k, s in self.stores.items()}

    # -- loaders -------------------------------------------------------------------------------

    def dataloader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        """Whole-batch loader over ``split``: length-bucketed when shuffling (training), else in file order."""
        self._require()
        if split not in self.stores:
            raise VislangError(f"Split '{split}' does not exist; this dataset has {', '.join(self.stores)}.")
        store = self.stores[split]
        bs = batch_size or (self.cfg.batch_size if shuffle else self.cfg.eval_batch_size)
        if shuffle and self.cfg.bucket:
            sampler: Sampler = BucketBatchSampler(store.lengths, bs, seed=self.seed)
        else:
            n = len(store)
            drop_last = shuffle and n > bs and 0 < n % bs < bs / 2
            sampler = BatchIndexSampler(n, bs, shuffle=shuffle, seed=self.seed, drop_last=drop_last)
        return DataLoader(TokenBatchDataset(store, self.labels[split]), sampler=sampler, batch_size=None,
                          num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val" if "val" in self.stores else "test")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test" if "test" in self.stores else "val")
