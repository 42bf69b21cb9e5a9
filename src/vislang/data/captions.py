"""Caption datasets (several reference captions per image), caption text processing and the vocabulary.

Readers for the formats vislang knows, each returning a :class:`CaptionDataset`:

* the Flickr8k / Flickr30k token file (``<image>.jpg#<n><TAB><caption>``) with the official split
  files (``Flickr_8k.trainImages.txt`` ...) when they sit beside it;
* COCO caption JSON (``annotations/captions_<split><year>.json``: ``images`` + ``annotations``);
* the Karpathy split JSON (``dataset_flickr8k.json``: ``images[].split/filename/sentences``);
* a CSV of ``image,caption`` rows (optionally a ``split`` column).

Irregular lines of the Flickr token file are handled: an image name with a stray suffix
(``2258277193_586949ec62.jpg.1#0``) is mapped back to its image, and captions shorter than
``min_words`` words (the file has two one-letter captions, "A") are dropped with a count.
Everything a user can fix (a malformed line, an empty caption, an image listed but missing on
disk) raises :class:`VislangError` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vislang.data.fetch import Archive, fetch
from vislang.data.images import canonical_split
from vislang.data.registry import register_dataset
from vislang.errors import VislangError

log = logging.getLogger("vislang.data")

FLICKR8K = Archive("flickr8k", "flickr8k.tar.gz", (), "86a93e181af1998d1ab4a25f35227099389a69204944faae1bcccad903384bdd")
GLOVE_100D = Archive("glove.6B.100d.top50k", "glove.6B.100d.top50k.txt.gz", (),
                     "b55e38b4325f5c50da736aa1ef2d549f4b1e7ded082553a384dd03949031cfe3", extract=False)
NAMED_EMBEDDINGS = {"glove.6B.100d": GLOVE_100D, "glove.6B.100d.top50k": GLOVE_100D}

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # ids 0..3, in this order
_TOKEN = re.compile(r"[a-z0-9]+|'[a-z]+")  # words; "dog's" -> dog 's (as the PTB tokenizer splits it)
_STRAY_SUFFIX = re.compile(r"^(.+\.(?:jpe?g|png|bmp|gif|webp))\.\d+$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# datasets


@dataclass
class CaptionSplit:
    """One split: image files and, per image, its reference captions (raw text)."""

    images: list[Path]
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.images)

    def take(self, indices: np.ndarray | list[int]) -> CaptionSplit:
        return CaptionSplit([self.images[i] for i in indices], [self.captions[i] for i in indices])


@dataclass
class CaptionDataset:
    """A named caption dataset; ``fingerprint`` changes whenever the source files change."""

    name: str
    splits: dict[str, CaptionSplit]
    fingerprint: str
    root: Path | None = None
    notes: list[str] = field(default_factory=list)  # irregularities handled while reading

    @property
    def num_captions(self) -> int:
        return sum(len(c) for s in self.splits.values() for c in s.captions)


def tokenize(text: str) -> list[str]:
    """Lower-case words with punctuation removed (``"A dog's ball."`` → ``a dog 's ball``)."""
    return _TOKEN.findall(text.lower())


def _fingerprint(*files: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _check_caption(text: str, where: str) -> str:
    text = " ".join(str(text).split())
    if not text:
        raise VislangError(f"{where}: the caption is empty. Write the caption or remove the line.")
    return text


def _assemble(name: str, by_split: dict[str, dict[str, list[str]]], resolve, *, skip_missing: bool,
              min_words: int, fingerprint: str, root: Path | None, notes: list[str]) -> CaptionDataset:
    """Turn {split: {image name: captions}} into a dataset: files checked, short captions dropped."""
    splits: dict[str, CaptionSplit] = {}
    missing: list[str] = []
    short = 0
    for split, images in by_split.items():
        files, caps = [], []
        for image, captions in images.items():
            path = resolve(image)
            if path is None:
                missing.append(image)
                if not skip_missing:
                    raise VislangError(
                        f"Image '{image}' ({split} split of {name}) is listed with captions but is not on disk "
                        f"(looked for {resolve.tried(image)}). Add the file, fix data.images_path, or set "
                        f"data.skip_missing: true to leave such images out.")
                continue
            kept = [c for c in captions if len(tokenize(c)) >= min_words]
            short += len(captions) - len(kept)
            if not kept:
                continue
            files.append(path)
            caps.append(kept)
        if files:
            splits[split] = CaptionSplit(files, caps)
    if missing:
        notes.append(f"skipped {len(missing)} image(s) listed but missing on disk, e.g. {missing[0]}")
    if short:
        notes.append(f"dropped {short} caption(s) shorter than {min_words} word(s)")
    for note in notes:
        log.warning("%s: %s", name, note)
    splits = {k: splits[k] for k in sorted(splits, key=("train", "val", "test").index)}
    if "train" not in splits:
        raise VislangError(f"{name} has no training images with captions (splits found: {', '.join(splits) or 'none'}).")
    return CaptionDataset(name, splits, fingerprint, root, notes)


class _Resolver:
    """Finds an image file among candidate folders; remembers where it looked (for error messages)."""

    def __init__(self, folders: list[Path]):
        self.folders = [f for f in dict.fromkeys(folders) if f is not None]

    def __call__(self, image: str) -> Path | None:
        for folder in self.folders:
            p = folder / image
            if p.is_file():
                return p
        return None

    def tried(self, image: str) -> str:
        return ", ".join(str(f / image) for f in self.folders[:3])


def read_flickr_tokens(token_file: Path, images_dir: Path | None = None, split_files: dict[str, Path] | None = None,
                       *, name: str = "flickr", skip_missing: bool = False, min_words: int = 2) -> CaptionDataset:
    """Read a Flickr8k/30k token file. Split files (one image name per line) are looked up beside it
    (``*train*Images.txt``, ``*dev*``/``*val*``, ``*test*``) when not given; without any, every image is
    in ``train`` (the data module carves val/test)."""
    token_file = Path(token_file)
    if not token_file.is_file():
        raise VislangError(f"Caption file {token_file} does not exist.")
    captions: dict[str, list[str]] = {}
    notes: list[str] = []
    renamed = 0
    with token_file.open(encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if "\t" not in line:
                raise VislangError(
                    f"{token_file} line {line_no} is malformed: expected '<image>#<n><TAB><caption>', got {line[:80]!r}.")
            key, text = line.split("\t", 1)
            image = key.strip().rsplit("#", 1)[0] if "#" in key else key.strip()
            if not image:
                raise VislangError(f"{token_file} line {line_no} is malformed: no image name before the tab.")
            m = _STRAY_SUFFIX.match(image)
            if m:  # "x.jpg.1#0": a stray copy suffix in the original Flickr8k file
                image, renamed = m.group(1), renamed + 1
            captions.setdefault(image, []).append(_check_caption(text, f"{token_file} line {line_no}"))
    if not captions:
        raise VislangError(f"{token_file} holds no captions.")
    if renamed:
        notes.append(f"{renamed} line(s) with a stray suffix after the image name (e.g. '.jpg.1#0') mapped to their image")
    folder = token_file.parent
    split_files = split_files if split_files is not None else _find_split_files(folder)
    by_split: dict[str, dict[str, list[str]]] = {}
    if split_files:
        for split, file in split_files.items():
            names = [n.strip() for n in Path(file).read_text().splitlines() if n.strip()]
            unknown = [n for n in names if n not in captions]
            if unknown:
                raise VislangError(f"{file} lists image '{unknown[0]}' that has no caption in {token_file} "
                                   f"({len(unknown)} such image(s)).")
            by_split[split] = {n: captions[n] for n in names}
    else:
        by_split["train"] = captions
    resolve = _Resolver([Path(images_dir) if images_dir else None, folder / "images", folder / "Images",
                         folder / "Flicker8k_Dataset", folder])
    extra = "".join(str(f) for f in (split_files or {}).values())
    return _assemble(name, by_split, resolve, skip_missing=skip_missing, min_words=min_words,
                     fingerprint=_fingerprint(token_file, *(split_files or {}).values(), extra=extra + str(images_dir)),
                     root=folder, notes=notes)


def _find_split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in sorted(folder.glob("*Images.txt")):
        low = f.name.lower()
        for word, split in (("train", "train"), ("dev", "val"), ("val", "val"), ("test", "test")):
            if word in low and split not in found:
                found[split] = f
    return found


def _load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VislangError(f"Caption file {path} does not exist.") from None
    except json.JSONDecodeError as err:
        raise VislangError(f"{path} is not valid JSON ({err}).") from None


def _coco_split(path: Path) -> tuple[str, str]:
    """('val', 'val2014') from 'captions_val2014.json'; ('train', '') when the name says nothing."""
    stem = path.stem.lower().replace("captions_", "")
    word = re.sub(r"\d+$", "", stem)
    try:
        return canonical_split(word, str(path)), stem
    except VislangError:
        return "train", ""


def read_coco_captions(path: Path, images_dir: Path | None = None, *, name: str = "coco_captions",
                       skip_missing: bool = False, min_words: int = 2) -> CaptionDataset:
    """COCO caption JSON: a file, or a folder holding ``annotations/captions_<split>.json`` files.
    Images are looked for in ``images_dir``, ``<root>/<split><year>/``, ``<root>/images/`` and ``<root>/``."""
    path = Path(path)
    files = sorted((path / "annotations").glob("captions_*.json")) or sorted(path.glob("captions_*.json")) \
        if path.is_dir() else [path]
    if not files:
        raise VislangError(f"{path} holds no annotations/captions_*.json file.")
    by_split: dict[str, dict[str, list[str]]] = {}
    folders: list[Path] = []
    for file in files:
        data = _load_json(file)
        if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
            raise VislangError(f"{file} is not a COCO caption file: it needs 'images' and 'annotations' lists.")
        split, stem = _coco_split(file) if len(files) > 1 or path.is_dir() else ("train", _coco_split(file)[1])
        names: dict[object, str] = {}
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise VislangError(f"{file}: images[{i}] needs 'id' and 'file_name'.")
            names[im["id"]] = str(im["file_name"])
        images = by_split.setdefault(split, {})
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise VislangError(f"{file}: annotations[{i}] needs 'image_id' and 'caption'.")
            if ann["image_id"] not in names:
                raise VislangError(f"{file}: annotations[{i}] refers to image_id {ann['image_id']}, which is not in 'images'.")
            text = _check_caption(ann["caption"], f"{file} annotations[{i}] (image {names[ann['image_id']]})")
            images.setdefault(names[ann["image_id"]], []).append(text)
        root = file.parent.parent if file.parent.name == "annotations" else file.parent
        folders += [root / stem if stem else None, root / "images", root]
    resolve = _Resolver([Path(images_dir) if images_dir else None, *folders])
    return _assemble(name, by_split, resolve, skip_missing=skip_missing, min_words=min_words,
                     fingerprint=_fingerprint(*files, extra=str(images_dir)), root=path, notes=[])


def read_karpathy(path: Path, images_dir: Path | None = None, *, name: str = "karpathy",
                  skip_missing: bool = False, min_words: int = 2) -> CaptionDataset:
    """Karpathy's split JSON (``images[]`` with ``filename``, optional ``filepath``, ``split``
    train/restval/val/test and ``sentences[].raw``); ``restval`` joins train."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise VislangError(f"{path} is not a Karpathy split file: it needs an 'images' list.")
    by_split: dict[str, dict[str, list[str]]] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "filename" not in im or "sentences" not in im:
            raise VislangError(f"{path}: images[{i}] needs 'filename' and 'sentences'.")
        split = "train" if im.get("split", "train") == "restval" else canonical_split(im.get("split", "train"), str(path))
        image = str(Path(im.get("filepath", "")) / im["filename"])
        texts = [_check_caption(s.get("raw") or " ".join(s.get("tokens", [])), f"{path} images[{i}] ({image})")
                 for s in im["sentences"]]
        by_split.setdefault(split, {})[image] = texts
    folder = path.parent
    resolve = _KarpathyResolver([Path(images_dir) if images_dir else None, folder / "images", folder / "Images", folder])
    return _assemble(name, by_split, resolve, skip_missing=skip_missing, min_words=min_words,
                     fingerprint=_fingerprint(path, extra=str(images_dir)), root=folder, notes=[])


class _KarpathyResolver(_Resolver):
    """Karpathy paths are ``filepath/filename``; also try the bare file name (Flickr has no filepath)."""

    def __call__(self, image: str) -> Path | None:
        return super().__call__(image) or super().__call__(Path(image).name)


def read_caption_csv(path: Path, images_dir: Path | None = None, *, name: str = "caption_csv",
                     image_column: str = "image", caption_column: str = "caption", split_column: str | None = "split",
                     skip_missing: bool = False, min_words: int = 2) -> CaptionDataset:
    """A CSV of (image, caption) rows, several rows per image; an optional split column."""
    path = Path(path)
    if not path.is_file():
        raise VislangError(f"Caption file {path} does not exist.")
    by_split: dict[str, dict[str, list[str]]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for col in (image_column, caption_column):
            if col not in header:
                raise VislangError(f"{path} has no column '{col}' (columns: {', '.join(header)}). "
                                   f"Set data.options.{'image' if col == image_column else 'caption'}_column.")
        use_split = split_column in header if split_column else False
        for row_no, row in enumerate(reader, 2):
            if None in row or any(row.get(c) is None for c in header):
                raise VislangError(f"{path} line {row_no} is malformed: it has {len([v for v in row.values() if v is not None])} "
                                   f"fields but the header has {len(header)}.")
            image = (row[image_column] or "").strip()
            if not image:
                raise VislangError(f"{path} line {row_no}: the image column is empty.")
            split = canonical_split(row[split_column], f"{path} line {row_no}") if use_split else "train"
            text = _check_caption(row[caption_column] or "", f"{path} line {row_no} (image {image})")
            by_split.setdefault(split, {}).setdefault(image, []).append(text)
    resolve = _Resolver([Path(images_dir) if images_dir else None, path.parent, path.parent / "images"])
    return _assemble(name, by_split, resolve, skip_missing=skip_missing, min_words=min_words,
                     fingerprint=_fingerprint(path, extra=str(images_dir)), root=path.parent, notes=[])


def read_captions(path: str | Path, fmt: str = "auto", images_dir: str | Path | None = None, **kwargs) -> CaptionDataset:
    """Read any supported caption file, picking the reader from ``fmt`` or from the file itself."""
    p = Path(path).expanduser()
    if not p.exists():
        raise VislangError(f"Caption file {p} does not exist.")
    if fmt == "auto":
        if p.is_dir() or p.suffix.lower() == ".json":
            fmt = "karpathy" if p.is_file() and "sentences" in p.read_text(encoding="utf-8", errors="replace")[:200000] \
                and '"annotations"' not in p.read_text(encoding="utf-8", errors="replace")[:200000] else "coco"
        elif p.suffix.lower() == ".csv":
            fmt = "csv"
        else:
            fmt = "flickr"
    images = Path(images_dir).expanduser() if images_dir else None
    readers = {"flickr": read_flickr_tokens, "coco": read_coco_captions, "karpathy": read_karpathy, "csv": read_caption_csv}
    if fmt not in readers:
        raise VislangError(f"Unknown caption format '{fmt}'; use one of auto, {', '.join(readers)}.")
    return readers[fmt](p, images, **kwargs)


# ---------------------------------------------------------------------------------------------
# registry entries (data.dataset)


@register_dataset("flickr8k", kind="caption", task="caption", source="archive")
def flickr8k(path: str | None = None, skip_missing: bool = False, min_words: int = 2) -> CaptionDataset:
    """Flickr8k: 8,091 photos with 5 captions each, the official 6,000 / 1,000 / 1,000 split."""
    if path is not None:
        raise VislangError("Dataset 'flickr8k' fetches its own files, so data.path must be unset; "
                           "for a local copy use dataset 'captions' with data.path: <token file>.")
    root = fetch(FLICKR8K) / "flickr8k"
    return read_flickr_tokens(root / "Flickr8k.token.txt", root / "images", name="flickr8k",
                              skip_missing=skip_missing, min_words=min_words)


FLICKR8K_SAMPLE_SHA256 = "06452b06997b8d87a2467d5ae9da1e59c7dfa9f83903cb7e8fb8643a65e9bb7a"  # scripts/make_caption_sample.py


@register_dataset("flickr8k_sample", kind="caption", task="caption", source="packaged")
def flickr8k_sample(path: str | None = None, skip_missing: bool = False, min_words: int = 2) -> CaptionDataset:
    """60 Flickr8k images (48 train, 6 val, 6 test) with their captions, shipped with vislang."""
    from importlib import resources

    packaged = resources.files("vislang") / "assets" / "flickr8k_sample.tar.gz"
    with resources.as_file(packaged) as file:
        url = Path(file).resolve().as_uri()
    root = fetch(Archive("flickr8k_sample", "flickr8k_sample.tar.gz", (url,), FLICKR8K_SAMPLE_SHA256), progress=False)
    root = root / "flickr8k_sample"
    return read_flickr_tokens(root / "Flickr8k.token.txt", root / "images", name="flickr8k_sample",
                              skip_missing=skip_missing, min_words=min_words)


def _path_entry(fmt: str, what: str):
    def factory(path: str | None = None, images_path: str | None = None, skip_missing: bool = False,
                min_words: int = 2, **options) -> CaptionDataset:
        if path is None:
            raise VislangError(f"This caption dataset needs data.path: {what}.")
        return read_captions(path, fmt, images_path, skip_missing=skip_missing, min_words=min_words,
                             name=Path(path).stem, **options)

    factory.__doc__ = f"Captions from data.path: {what} (images in data.images_path or beside it)."
    return factory


for _name, _fmt, _what in (
    ("captions", "auto", "a token file, COCO or Karpathy JSON, or CSV (format detected)"),
    ("flickr_tokens", "flickr", "a Flickr8k/30k token file, split files beside it"),
    ("coco_captions", "coco", "a COCO captions_*.json file, or a folder with annotations/"),
    ("karpathy_captions", "karpathy", "a Karpathy split JSON (dataset_flickr8k.json ...)"),
    ("caption_csv", "csv", "a CSV with image and caption columns (and an optional split column)"),
):
    register_dataset(_name, kind="caption", task="caption", source="path")(_path_entry(_fmt, _what))


# ---------------------------------------------------------------------------------------------
# vocabulary and word vectors


class Vocab:
    """Word ↔ id mapping with ``<pad>=0, <start>=1, <end>=2, <unk>=3`` first."""

    def __init__(self, words: list[str]):
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    pad, start, end, unk = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, captions: list[str], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Words seen at least ``min_freq`` times, the ``max_size`` most frequent (ties alphabetical)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        return cls(words)

    def encode(self, text: str, max_length: int) -> list[int]:
        """``<start> w1 .. wn <end>`` ids, truncated to ``max_length`` words."""
        ids = [self.stoi.get(w, self.unk) for w in tokenize(text)[:max_length]]
        return [self.start, *ids, self.end]

    def decode(self, ids: list[int]) -> str:
        """Words up to the first ``<end>`` (skipping ``<start>``/``<pad>``)."""
        words = []
        for i in ids:
            if i == self.end:
                break
            if i not in (self.pad, self.start):
                words.append(self.itos[i])
        return " ".join(words)


def encode_captions(vocab: Vocab, captions: list[list[str]], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """All captions of a split as a padded int64 array ``[M, max_length + 2]`` and their image index ``[M]``."""
    rows, owner = [], []
    for i, caps in enumerate(captions):
        for c in caps:
            rows.append(vocab.encode(c, max_length))
            owner.append(i)
    out = np.zeros((len(rows), max_length + 2), dtype=np.int64)
    for r, ids in enumerate(rows):
        out[r, : len(ids)] = ids
    return out, np.asarray(owner, dtype=np.int64)


def load_word_vectors(source: str, vocab: Vocab) -> tuple[np.ndarray, int]:
    """A ``[len(vocab), dim]`` matrix from GloVe-format text (``word v1 .. vd`` lines, .gz or plain):
    a named set (``glove.6B.100d``, from the dataset mirror) or a file path. Words without a vector
    get small random values (seeded). Returns the matrix and how many words were found."""
    path = fetch(NAMED_EMBEDDINGS[source]) if source in NAMED_EMBEDDINGS else Path(source).expanduser()
    if not path.is_file():
        raise VislangError(f"Word vectors {source}: no such file. Give a GloVe text file or one of "
                           f"{', '.join(NAMED_EMBEDDINGS)}.")
    opener = gzip.open if path.suffix == ".gz" else open
    matrix: np.ndarray | None = None
    found = 0
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            parts = line.rstrip().split(" ")
            if matrix is None:
                dim = len(parts) - 1
                if dim < 2:
                    raise VislangError(f"{path} line {line_no}: expected 'word v1 v2 ...', got {line[:60]!r}.")
                rng = np.random.default_rng(0)
                matrix = rng.normal(0, 0.3, (len(vocab), dim)).astype(np.float32)
                matrix[Vocab.pad] = 0
            idx = vocab.stoi.get(parts[0])
            if idx is not None and len(parts) == matrix.shape[1] + 1:
                matrix[idx] = np.asarray(parts[1:], dtype=np.float32)
                found += 1
    if matrix is None:
        raise VislangError(f"{path} holds no word vectors.")
    return matrix, found
