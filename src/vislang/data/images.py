"""Image datasets as lists of files or uint8 arrays, and the readers for the formats vislang knows.

A reader returns an :class:`ImageDataset`: class ids, readable class names, and per split an
:class:`ImageSplit` holding either file paths (decoded later, once, by :mod:`vislang.data.store`)
or a uint8 array (npz, CIFAR pickles). Labels are int64 indices into ``classes``.
Every problem a user can fix raises :class:`VislangError` naming the file, row or class.
"""

from __future__ import annotations

import csv
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vislang.errors import VislangError, did_you_mean

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}  # fmt: skip


@dataclass
class ImageSplit:
    """One split: ``items`` are file paths or a uint8 array [N,H,W] / [N,H,W,C]; ``labels`` int64 [N]."""

    items: list[Path] | np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.items) != len(self.labels):
            raise ValueError(f"{len(self.items)} items but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_array(self) -> bool:
        return isinstance(self.items, np.ndarray)

    def take(self, indices: np.ndarray) -> ImageSplit:
        """The split restricted to ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        items = self.items[indices] if self.is_array else [self.items[i] for i in indices]
        return ImageSplit(items, self.labels[indices])


@dataclass
class ImageDataset:
    """A named dataset: ``classes`` (ids such as folder names or wnids), ``class_names`` (readable),
    ``splits`` and a ``fingerprint`` that changes whenever the source data changes."""

    name: str
    classes: list[str]
    class_names: list[str]
    splits: dict[str, ImageSplit]
    fingerprint: str
    root: Path | None = None
    info: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def canonical_split(name: str, where: str) -> str:
    """Map 'valid', 'validation', 'dev' ... to train/val/test; error naming ``where`` otherwise."""
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise VislangError(
            f"Unknown split '{name}' in {where}.{did_you_mean(key, SPLIT_ALIASES)} "
            f"Use one of: {', '.join(SPLITS)} (also accepted: {', '.join(sorted(set(SPLIT_ALIASES) - set(SPLITS)))})."
        )
    return SPLIT_ALIASES[key]


def sorted_classes(labels: set[str]) -> list[str]:
    """Classes in a stable order: numerically when every label is an integer, else alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def check_splits(splits: dict[str, ImageSplit], classes: list[str], where: str) -> None:
    """Every split non-empty, a train split present, and no val/test label that train lacks."""
    if "train" not in splits:
        raise VislangError(
            f"{where} has no training split. Add training images (a train/ folder or split 'train')."
        )
    for split_name, split in splits.items():
        if len(split) == 0:
            raise VislangError(f"Split '{split_name}' of {where} holds no images.")
    seen = set(np.unique(splits["train"].labels).tolist())
    for split_name, split in splits.items():
        missing = sorted(set(np.unique(split.labels).tolist()) - seen)
        if missing:
            names = ", ".join(f"'{classes[i]}'" for i in missing[:5])
            raise VislangError(
                f"Class {names} appears in the {split_name} split of {where} but has no training images. "
                f"Add training images for it or remove it from {split_name}."
            )


def files_fingerprint(files: list[Path], root: Path, extra: str = "") -> str:
    """Hash of relative paths, sizes and modification times: changes when any file changes."""
    h = hashlib.sha256(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden files skipped), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath, f)
            for f in filenames
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        ]
    return sorted(found)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image_folder(
    root: str | Path, name: str = "image_folder", fingerprint: str | None = None
) -> ImageDataset:
    """Read ``root/<class>/*`` (one split: train) or ``root/{train,val,test}/<class>/*``.

    Class ids are the folder names of the train split, sorted. A class folder with no images,
    or a val/test class that train lacks, is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise VislangError(
            f"Image folder {root} does not exist. Set data.path to a folder with one sub-folder per class "
            f"(or train/ val/ test/ sub-folders each holding class folders)."
        )
    children = _class_folders(root)
    split_layout = any(c.name.lower() in SPLIT_ALIASES for c in children)
    if split_layout:
        split_dirs = {canonical_split(c.name, f"{root} (sub-folder {c.name}/)"): c for c in children}
    else:
        split_dirs = {"train": root}
    if "train" not in split_dirs:
        raise VislangError(
            f"{root} has {', '.join(c.name for c in children)}/ but no train/ folder. Add train/."
        )
    classes = [c.name for c in _class_folders(split_dirs["train"])]
    if not classes:
        raise VislangError(
            f"No class folders in {split_dirs['train']}. Put the images of each class in its own sub-folder."
        )
    index = {c: i for i, c in enumerate(classes)}
    splits, all_files = {}, []
    for split_name, split_dir in split_dirs.items():
        items, labels = [], []
        for class_dir in _class_folders(split_dir):
            files = list_images(class_dir)
            if not files:
                raise VislangError(
                    f"Class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}). "
                    f"Add images or remove the folder."
                )
            if class_dir.name not in index:
                raise VislangError(
                    f"Class '{class_dir.name}' ({class_dir}) appears in the {split_name} split but has no "
                    f"training images in {split_dirs['train']}. Add training images for it or remove it."
                )
            items += files
            labels += [index[class_dir.name]] * len(files)
        if not items:
            raise VislangError(
                f"No images found in {split_dir}. Each class sub-folder should hold image files."
            )
        splits[split_name] = ImageSplit(items, np.array(labels, dtype=np.int64))
        all_files += items
    if fingerprint is None:
        fingerprint = files_fingerprint(all_files, root, extra="image_folder")
    splits = {s: splits[s] for s in SPLITS if s in splits}
    check_splits(splits, classes, str(root))
    return ImageDataset(name, classes, list(classes), splits, fingerprint, root=root)


def read_image_csv(
    csv_path: str | Path,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str | None = None,
    name: str = "image_csv",
) -> ImageDataset:
    """Read a CSV of image path + label (+ optional split); paths are relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise VislangError(
            f"CSV file {csv_path} does not exist. Set data.path to a CSV of image paths and labels."
        )
    base = csv_path.parent
    rows: list[tuple[Path, str, str]] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for column in (path_column, label_column, split_column):
            if column is not None and column not in header:
                raise VislangError(
                    f"{csv_path} has no column '{column}'.{did_you_mean(column, header)} Its header row is: "
                    f"{', '.join(header) or '(empty)'}. Set data.options.path_column / label_column / split_column."
                )
        for row_no, row in enumerate(reader, start=2):  # row 1 is the header
            if None in row or any(row.get(c) is None for c in header):  # extra cells / missing cells
                raise VislangError(
                    f"{csv_path} row {row_no} does not have {len(header)} cells like its header row "
                    f"({', '.join(header)}). Fix the row (quote cells holding commas)."
                )
            file_cell, label = (row[path_column] or "").strip(), (row[label_column] or "").strip()
            if not file_cell or not label:
                raise VislangError(
                    f"{csv_path} row {row_no}: empty '{path_column if not file_cell else label_column}' cell."
                )
            split = (
                canonical_split(row[split_column], f"{csv_path} row {row_no}") if split_column else "train"
            )
            image = (base / file_cell).resolve()
            if not image.is_file():
                raise VislangError(
                    f"{csv_path} row {row_no}: image {image} does not exist (paths are relative to the CSV's folder)."
                )
            rows.append((image, label, split))
    if not rows:
        raise VislangError(
            f"{csv_path} holds no data rows. Add one row per image: {path_column},{label_column}."
        )
    train_labels = {label for _, label, split in rows if split == "train"}
    classes = sorted_classes(train_labels) if train_labels else []
    index = {c: i for i, c in enumerate(classes)}
    grouped: dict[str, tuple[list[Path], list[int]]] = {}
    for row_no, (image, label, split) in enumerate(rows, start=2):
        if label not in index:
            if not classes:
                break  # reported by check_splits: no training split
            raise VislangError(
                f"{csv_path} row {row_no}: label '{label}' in the {split} split has no training rows. "
                f"Add training rows for it or remove the row."
            )
        items, labels = grouped.setdefault(split, ([], []))
        items.append(image)
        labels.append(index[label])
    splits = {s: ImageSplit(items, np.array(labels)) for s, (items, labels) in grouped.items()}
    check_splits(splits, classes, str(csv_path))
    fingerprint = files_fingerprint([csv_path] + sorted({r[0] for r in rows}), Path("/"), extra="image_csv")
    return ImageDataset(name, classes, list(classes), splits, fingerprint, root=base)


def _as_uint8(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating) and images.size and images.min() >= 0 and images.max() <= 1:
        return np.round(images * 255).astype(np.uint8)
    if np.issubdtype(images.dtype, np.integer) and images.size and images.min() >= 0 and images.max() <= 255:
        return images.astype(np.uint8)
    raise VislangError(
        f"{where} has dtype {images.dtype} with values outside 0..255 (or 0..1 for floats). Store uint8 images."
    )


def read_npz(
    path: str | Path,
    name: str = "npz",
    class_names: list[str] | None = None,
    fingerprint: str | None = None,
) -> ImageDataset:
    """Read a MedMNIST-style ``.npz``: ``<split>_images`` [N,H,W(,C)] and ``<split>_labels`` [N] or [N,1]."""
    path = Path(path)
    if not path.is_file():
        raise VislangError(
            f"npz file {path} does not exist. Set data.path to a .npz with train_images/train_labels arrays."
        )
    try:
        data = np.load(path, allow_pickle=False)
        keys = list(data.keys())
    except (OSError, ValueError) as err:
        raise VislangError(f"Could not read {path} as a .npz file ({err}).") from None
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in keys:
        if not key.endswith("_images"):
            continue
        split = canonical_split(key[: -len("_images")], f"{path} (array '{key}')")
        prefix = key[: -len("_images")]
        if f"{prefix}_labels" not in keys:
            raise VislangError(
                f"{path} has '{key}' but no '{prefix}_labels' array. Arrays: {', '.join(keys)}."
            )
        images, labels = data[key], data[f"{prefix}_labels"]
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
            raise VislangError(
                f"{path} '{key}' has shape {images.shape}; expected [N,H,W] or [N,H,W,C] with C in 1, 3, 4."
            )
        if labels.ndim > 1 and labels.shape[1:] != (1,):
            raise VislangError(
                f"{path} '{prefix}_labels' has shape {labels.shape}: multi-label arrays are not supported."
            )
        labels = labels.reshape(-1)
        if len(labels) != len(images):
            raise VislangError(
                f"{path}: '{key}' holds {len(images)} images but '{prefix}_labels' {len(labels)} labels."
            )
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
            raise VislangError(
                f"{path} '{prefix}_labels' must hold non-negative integer class ids (dtype {labels.dtype})."
            )
        raw[split] = (_as_uint8(images, f"{path} '{key}'"), labels.astype(np.int64))
    if not raw:
        raise VislangError(
            f"{path} holds no '<split>_images' arrays (found: {', '.join(keys)}). Expected train_images, train_labels, ..."
        )
    num = int(max(int(lab.max()) for _, lab in raw.values() if lab.size)) + 1
    classes = [str(i) for i in range(num)]
    if class_names is not None and len(class_names) < num:
        raise VislangError(f"{path} has label {num - 1} but only {len(class_names)} class names were given.")
    names = list(class_names[:num]) if class_names else list(classes)
    splits = {s: ImageSplit(images, labels) for s, (images, labels) in raw.items()}
    check_splits(splits, names, str(path))
    if fingerprint is None:
        fingerprint = files_fingerprint([path], path.parent, extra="npz")
    return ImageDataset(name, classes, names, splits, fingerprint, root=path.parent)


def read_cifar_python(folder: str | Path, fingerprint: str, name: str = "cifar10") -> ImageDataset:
    """Read the official CIFAR-10 python pickles (``data_batch_1..5``, ``test_batch``, ``batches.meta``)."""
    folder = Path(folder)

    def load(file: str) -> dict:
        p = folder / file
        if not p.is_file():
            raise VislangError(f"{p} is missing: {folder} is not an extracted cifar-10-python archive.")
        with open(p, "rb") as fh:
            # the archive's checksum was verified before extraction, so unpickling it is safe
            return pickle.load(fh, encoding="bytes")

    names = [n.decode() for n in load("batches.meta")[b"label_names"]]
    splits = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        batches = [load(f) for f in files]
        data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[b"labels"], dtype=np.int64) for b in batches])
        # rows are 3072 bytes: 1024 red, 1024 green, 1024 blue, each 32x32 row-major
        splits[split] = ImageSplit(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    check_splits(splits, names, str(folder))
    return ImageDataset(name, names, list(names), splits, fingerprint, root=folder)


def read_tinyimagenet(folder: str | Path, fingerprint: str, name: str = "tinyimagenet") -> ImageDataset:
    """Read the Tiny ImageNet layout; the labelled ``val/`` images become the test split."""
    folder = Path(folder)
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise VislangError(f"{wnids_file} is missing: {folder} is not a Tiny ImageNet folder.")
    classes = sorted(line.strip() for line in wnids_file.read_text().splitlines() if line.strip())
    words = {}
    words_file = folder / "words.txt"
    if words_file.is_file():
        for line in words_file.read_text(encoding="utf-8").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    index = {c: i for i, c in enumerate(classes)}
    items, labels = [], []
    for wnid in classes:
        files = list_images(folder / "train" / wnid / "images")
        if not files:
            raise VislangError(f"Class folder {folder / 'train' / wnid / 'images'} holds no images.")
        items += files
        labels += [index[wnid]] * len(files)
    splits = {"train": ImageSplit(items, np.array(labels))}
    annotations = folder / "val" / "val_annotations.txt"
    if annotations.is_file():
        test_items, test_labels = [], []
        for row_no, line in enumerate(annotations.read_text().splitlines(), start=1):
            cells = line.split("\t")
            if len(cells) < 2:
                raise VislangError(
                    f"{annotations} row {row_no} is malformed: expected 'file<TAB>wnid<TAB>box'."
                )
            if cells[1] not in index:
                raise VislangError(f"{annotations} row {row_no}: class '{cells[1]}' is not in {wnids_file}.")
            test_items.append(folder / "val" / "images" / cells[0])
            test_labels.append(index[cells[1]])
        splits["test"] = ImageSplit(test_items, np.array(test_labels))
    check_splits(splits, classes, str(folder))
    return ImageDataset(name, classes, [words.get(c, c) for c in classes], splits, fingerprint, root=folder)
