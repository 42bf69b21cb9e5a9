"""Text data: table readers (CSV / TSV / JSON lines), label maps, a social-media tokenizer, a vocabulary
and pretrained word vectors (GloVe / word2vec text format).

A reader returns a :class:`TextDataset` whose splits hold raw texts, raw label strings and the file
line each came from, so every later error (a label missing from ``label_map``, an empty text) can
name the file and row. Every problem a user can fix raises :class:`VislangError`.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import regex

from vislang.data.fetch import Archive
from vislang.errors import VislangError, did_you_mean

PAD, UNK = "<pad>", "<unk>"
# pretrained word vectors known by name (data.embeddings.source), fetched like datasets (VISLANG_MIRROR)
WORD_VECTORS = {
    "glove.6B.100d.top50k": Archive(
        "glove.6B.100d.top50k", "glove.6B.100d.top50k.txt.gz", (),
        "b55e38b4325f5c50da736aa1ef2d549f4b1e7ded082553a384dd03949031cfe3", extract=False),
}
DROP = "drop"  # label_map value that removes a label's rows


# ---------------------------------------------------------------------------------------------
# datasets


@dataclass
class TextSplit:
    """One split: ``texts``, raw ``labels`` (strings) and, per item, the ``rows`` (file line numbers)
    of ``source`` they were read from."""

    texts: list[str]
    labels: list[str]
    rows: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Iterable[int]) -> TextSplit:
        idx = [int(i) for i in indices]
        return TextSplit([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                         [self.rows[i] for i in idx], self.source)

    def where(self, row: int) -> str:
        return f"{self.source} line {self.rows[row]}"


@dataclass
class TextDataset:
    """A named text dataset: ``splits`` of raw texts and labels, and a ``fingerprint`` of the source."""

    name: str
    splits: dict[str, TextSplit]
    fingerprint: str = ""
    info: dict[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.splits["train"].labels)) if "train" in self.splits else []

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class TableFormat:
    """How to read a labelled text table.

    ``sep``: None picks by extension (``.tsv`` tab, ``.jsonl``/``.json`` JSON lines, else comma).
    ``quoting``: ``minimal`` (CSV quotes honoured) or ``none`` (quotes are ordinary characters:
    tweets). ``header``: False names the columns by position, ``"0"``, ``"1"`` ...
    """

    text_column: str = "text"
    label_column: str = "label"
    sep: str | None = None
    quoting: str = "minimal"
    encoding: str = "utf-8"
    header: bool = True
    drop_invalid: bool = False


def _decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        hint = " It looks like Latin-1 / Windows-1252: set data.encoding: latin-1 (or cp1252)." \
            if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig") else \
            " Set data.encoding to the file's encoding."
        raise VislangError(f"{path} line {line} is not valid {encoding} (byte {raw[err.start]:#04x} at offset "
                           f"{err.start}).{hint}") from None
    except LookupError:
        raise VislangError(f"data.encoding '{encoding}' is not an encoding Python knows (e.g. utf-8, latin-1).") from None
    return text.removeprefix("\ufeff")


def _records(path: Path, fmt: TableFormat) -> tuple[list[str], Iterable[tuple[int, dict[str, str]]]]:
    """Column names and ``(line number, {column: value})`` records of a CSV/TSV or JSON-lines file."""
    text = _decode(path, fmt.encoding)
    name = path.name.removesuffix(".gz").lower()
    if name.endswith((".jsonl", ".json", ".ndjson")) and fmt.sep is None:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise VislangError(f"{path} line {n} is not valid JSON ({err.msg}).") from None
            if not isinstance(obj, dict):
                raise VislangError(f"{path} line {n}: expected a JSON object per line.")
            rows.append((n, {str(k): "" if v is None else str(v) for k, v in obj.items()}))
        columns = list(dict.fromkeys(k for _, r in rows[:100] for k in r))
        return columns, rows
    sep = fmt.sep or ("\t" if name.endswith((".tsv", ".tab")) else ",")
    quoting = csv.QUOTE_NONE if fmt.quoting == "none" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting,
                        **({"quotechar": None} if quoting == csv.QUOTE_NONE else {}))
    try:
        first = next(reader)
    except StopIteration:
        raise VislangError(f"{path} is empty.") from None
    columns = [c.strip() for c in first] if fmt.header else [str(i) for i in range(len(first))]

    def rows() -> Iterable[tuple[int, dict[str, str]]]:
        if not fmt.header:
            yield 1, dict(zip(columns, first))
        try:
            for values in reader:
                if not values:
                    continue
                if len(values) != len(columns):
                    raise VislangError(
                        f"{path} line {reader.line_num} has {len(values)} fields but the header has {len(columns)} "
                        f"(separator {sep!r}). A separator or quote inside a text? Check data.sep and data.quoting "
                        f"(quoting: none reads quotes as ordinary characters).")
                yield reader.line_num, dict(zip(columns, values))
        except csv.Error as err:
            raise VislangError(f"{path} line {reader.line_num}: {err}. Check data.sep and data.quoting.") from None

    return columns, rows()


def read_text_table(path: str | Path, fmt: TableFormat) -> TextSplit:
    """Read the text and label columns of one file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise VislangError(f"Text file {path} does not exist.")
    columns, records = _records(path, fmt)
    for col, key in ((fmt.text_column, "text_column"), (fmt.label_column, "label_column")):
        if col not in columns:
            raise VislangError(f"{path} has no column '{col}' (data.{key}).{did_you_mean(col, columns)} "
                               f"Its columns are: {', '.join(columns)}.")
    texts, labels, lines = [], [], []
    for n, rec in records:
        text, label = rec.get(fmt.text_column, "").strip(), rec.get(fmt.label_column, "").strip()
        problem = "an empty text" if not text else "no label" if not label else None
        if problem:
            if fmt.drop_invalid:
                continue
            raise VislangError(f"{path} line {n} has {problem} (column '{fmt.text_column if not text else fmt.label_column}'). "
                               "Fix the row, or set data.drop_invalid: true to skip such rows.")
        texts.append(text)
        labels.append(label)
        lines.append(n)
    if not texts:
        raise VislangError(f"{path} holds no labelled texts.")
    return TextSplit(texts, labels, lines, str(path))


def apply_label_map(split: TextSplit, label_map: dict[str, str]) -> TextSplit:
    """Rename labels through ``label_map`` (value ``drop`` removes the row); an unmapped label is an error."""
    if not label_map:
        return split
    keep, mapped = [], []
    for i, label in enumerate(split.labels):
        if label not in label_map:
            raise VislangError(
                f"Label '{label}' ({split.where(i)}) is not in data.label_map.{did_you_mean(label, label_map)} "
                f"Map it to a class or to '{DROP}'; label_map has: {', '.join(map(str, label_map))}.")
        target = str(label_map[label])
        if target != DROP:
            keep.append(i)
            mapped.append(target)
    out = split.take(keep)
    out.labels = mapped
    return out


# ---------------------------------------------------------------------------------------------
# tokenizer

_URL = r"(?:https?://|www\.)\S+"
_TOKEN = regex.compile(
    rf"(?P<url>{_URL})|(?P<mention>@\w+)|(?P<hashtag>#\w+)"
    r"|(?P<emoji>\p{Regional_Indicator}{2}|\p{Extended_Pictographic}(?:\p{Emoji_Modifier}|\uFE0F|\u200D\p{Extended_Pictographic})*)"
    r"|(?P<number>(?<!\w)\d+(?:[.,:]\d+)*(?!\w))|(?P<word>\w+(?:['’]\w+)*|['’]\w+)|(?P<punct>[^\w\s])"
)
_CAMEL = regex.compile(r"\p{Lu}?\p{Ll}+|\p{Lu}+(?!\p{Ll})|\d+")


@functools.lru_cache(maxsize=8)
def _repeats(n: int) -> regex.Pattern:
    """A letter repeated more than ``n`` times."""
    return regex.compile(r"(\p{L})\1{" + str(n) + ",}")


@dataclass(frozen=True)
class Tokenizer:
    """Word tokenizer for real social-media text (hand-written: no library tokenizer offers this set of
    options together; the transformer uses its own Hugging Face tokenizer instead).

    ``lowercase`` keeps accents unless ``strip_accents``; ``urls`` / ``mentions`` / ``numbers``:
    ``token`` (one ``<url>`` / ``<user>`` / ``<num>`` token), ``keep`` or ``drop``; ``hashtags``:
    ``split`` (``#JuegoDeTronos`` → juego de tronos), ``keep`` (``#juegodetronos``) or ``drop``;
    ``emoji``: ``keep`` (one token each) or ``drop``; ``max_repeat``: letters repeated more than this
    are cut to it (``holaaaa`` → ``holaa``; 0 = off); ``punctuation``: keep ``! ? .`` as tokens.
    """

    lowercase: bool = True
    strip_accents: bool = False
    urls: str = "token"
    mentions: str = "token"
    hashtags: str = "split"
    emoji: str = "keep"
    numbers: str = "token"
    max_repeat: int = 2
    punctuation: bool = True

    def _norm(self, word: str) -> str:
        if self.max_repeat:
            word = _repeats(self.max_repeat).sub(r"\1" * self.max_repeat, word)
        if self.lowercase:
            word = word.lower()
        if self.strip_accents:
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
        return word

    def __call__(self, text: str) -> list[str]:
        out: list[str] = []
        for m in _TOKEN.finditer(text):
            kind, tok = m.lastgroup, m.group()
            if kind == "url":
                out += ["<url>"] if self.urls == "token" else [tok] if self.urls == "keep" else []
            elif kind == "mention":
                out += ["<user>"] if self.mentions == "token" else [self._norm(tok)] if self.mentions == "keep" else []
            elif kind == "hashtag":
                if self.hashtags == "split":
                    out += [self._norm(w) for w in _CAMEL.findall(tok[1:])] or [self._norm(tok[1:])]
                elif self.hashtags == "keep":
                    out.append(self._norm(tok))
            elif kind == "emoji":
                out += [tok] if self.emoji == "keep" else []
            elif kind == "number":
                out += ["<num>"] if self.numbers == "token" else [tok] if self.numbers == "keep" else []
            elif kind == "word":
                out.append(self._norm(tok))
            elif self.punctuation:
                out.append(tok)
        return out


# ---------------------------------------------------------------------------------------------
# vocabulary


class Vocab:
    """Token ↔ id; id 0 is padding, id 1 stands for every out-of-vocabulary token."""

    def __init__(self, tokens: list[str]):
        if tokens[:2] != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """The tokens seen at least ``min_freq`` times, most frequent first (ties alphabetical), at most
        ``max_size`` of them (not counting <pad> and <unk>)."""
        counts = Counter(t for toks in texts for t in toks)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in (PAD, UNK)),
                      key=lambda t: (-counts[t], t))
        return cls([PAD, UNK, *kept[:max_size]])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.index.get(t, 1) for t in tokens]


# ---------------------------------------------------------------------------------------------
# pretrained word vectors


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def load_word_vectors(path: str | Path, vocab: Vocab, seed: int = 0, token_counts: Counter | None = None,
                      extend: bool = False) -> tuple[np.ndarray, dict[str, float | int | str], Vocab]:
    """An embedding matrix from a GloVe or word2vec text file (plain or .gz), and the vocabulary it indexes.

    Rows of words found in the file hold their vectors (exact match first, then lower-cased);
    other rows are drawn from N(0, std of the file's vectors) with ``seed``; the padding row is 0.
    ``extend`` appends every other word of the file to the vocabulary, so words never seen in
    training still get their pretrained vector at test time (as with Kim's word2vec models).
    Returns the matrix, the coverage (training vocabulary types found and, with ``token_counts``,
    the share of training tokens they cover) and the (extended) vocabulary. A malformed line raises
    an error naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise VislangError(f"Word-vector file {path} (data.embeddings.path) does not exist.")
    exact = {tok: i for i, tok in enumerate(vocab.tokens[2:], 2)}
    folded: dict[str, list[int]] = {}  # lower-cased fallbacks for tokens that are not lower case
    for tok, i in exact.items():
        if tok.lower() != tok:
            folded.setdefault(tok.lower(), []).append(i)
    found: dict[int, np.ndarray] = {}
    exact_hits: set[int] = set()
    extra: dict[str, np.ndarray] = {}
    dim = None
    try:
        with _open_text(path) as fh:
            for n, line in enumerate(fh, 1):
                parts = line.rstrip("\n\r ").split(" ")
                if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    dim = int(parts[1])  # word2vec header: count and dimension
                    continue
                if dim is None:
                    dim = len(parts) - 1
                if len(parts) != dim + 1 or dim < 1:
                    raise VislangError(f"{path} line {n} is malformed: expected a word and {dim} numbers, found "
                                       f"{len(parts) - 1} value(s). Is the file truncated or not GloVe/word2vec text?")
                word = parts[0]
                hit = exact.get(word)
                ids = [hit] if hit is not None else [i for i in folded.get(word, ()) if i not in exact_hits]
                if ids or (extend and word not in extra and word not in folded):
                    try:
                        vec = np.asarray(parts[1:], dtype=np.float32)
                    except ValueError:
                        raise VislangError(f"{path} line {n} is malformed: a value is not a number.") from None
                    if not ids:
                        extra[word] = vec
                    for i in ids:
                        found[i] = vec
                    if hit is not None:
                        exact_hits.add(hit)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise VislangError(f"Cannot read word vectors {path}: {err}.") from None
    if dim is None:
        raise VislangError(f"{path} holds no word vectors.")
    std = float(np.std(np.stack(list(found.values())))) if found else 0.3
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, std, size=(len(vocab), dim)).astype(np.float32)
    matrix[0] = 0.0
    for i, vec in found.items():
        matrix[i] = vec
    coverage: dict[str, float | int | str] = {
        "file": path.name, "dim": dim, "vocab_found": len(found), "vocab_size": len(vocab) - 2,
        "type_coverage": round(len(found) / max(1, len(vocab) - 2), 4), "added_from_file": len(extra),
    }
    if extra:
        matrix = np.concatenate([matrix, np.stack(list(extra.values()))])
        vocab = Vocab(vocab.tokens + list(extra))
    if token_counts:
        total = sum(token_counts.values())
        hit = sum(c for t, c in token_counts.items() if vocab.index.get(t, 1) in found)
        coverage["token_coverage"] = round(hit / max(1, total), 4)
    return matrix, coverage, vocab
