"""The dataset registry: ``name → factory(path, **options) → ImageDataset``.

A new dataset is one decorated function::

    @register_dataset("my_set", kind="image", source="archive")
    def my_set(path: str | None = None) -> ImageDataset:
        return read_image_folder(fetch(MY_ARCHIVE) / "my_set", name="my_set", fingerprint=MY_ARCHIVE.digest)

Factories receive ``data.path`` (None when unset) and the keyword options of ``data.options``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from vislang.data.fetch import Archive, fetch, mirror_file
from vislang.data.images import (
    ImageDataset,
    read_cifar_python,
    read_image_csv,
    read_image_folder,
    read_npz,
    read_tinyimagenet,
)
from vislang.errors import VislangError
from vislang.registry import Registry

DATASETS = Registry("dataset")


def register_dataset(
    name: str, **meta: Any
) -> Callable[[Callable[..., ImageDataset]], Callable[..., ImageDataset]]:
    """Decorator registering a dataset factory under ``name`` (``meta``: kind, source, description)."""
    return DATASETS.register(name, **meta)


def create_dataset(name: str, **kwargs: Any) -> ImageDataset:
    """Build the registered dataset ``name``; unknown names and options raise a clear error."""
    return DATASETS.create(name, **kwargs)


def list_datasets(**meta: Any) -> list[str]:
    """Registered dataset names (optionally only those whose metadata matches ``meta``)."""
    return DATASETS.names(**meta)


# ---------------------------------------------------------------------------------------------
# archives: checksums of the mirror's files are those in ../shared/data/SHA256SUMS

CIFAR10_PYTHON = Archive(
    "cifar10-python",
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
)
CIFAR10_JPG = Archive(
    "cifar10-jpg",
    "cifar10-jpg.tar.gz",
    (),
    "ec4ba006d56d87f1d4a5e04cdaa80dedf95acb93cb1787611ad74081fc914731",
)
TINYIMAGENET30 = Archive(
    "tinyimagenet30",
    "tinyimagenet30.tar.gz",
    (),
    "86bdffce7faee944535f472c42df6ef4614e856a57142e7441ccd652fe4a9e27",
)
# The mirror's pneumoniamnist.npz (train 3,882) is not byte-identical to MedMNIST's (train 4,708),
# so each has its own checksum; MedMNIST publishes only an md5 for its file.
PNEUMONIAMNIST_MIRROR = Archive(
    "pneumoniamnist",
    "pneumoniamnist.npz",
    (),
    "a554d2332488d3ddc075125e66a1af77ec379fd2bafc09108ab95a37e2bd9c26",
    extract=False,
)
PNEUMONIAMNIST_MEDMNIST = Archive(
    "pneumoniamnist-medmnist",
    "pneumoniamnist.npz",
    ("https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1",),
    "",
    extract=False,
    md5="28209eda62fecd6e6a2d98b1501bb15f",
)
CIFAR10_SAMPLE_SHA256 = (
    "ed627bff60aeec9172dcefd80cdd7e36cba093de02dd65dfe3a56ac1c04b54d5"  # scripts/make_cifar10_sample.py
)


def cifar10_sample_archive() -> Archive:
    """The packaged 5,000 + 1,000 image CIFAR-10 sample, fetched through a ``file://`` URL."""
    packaged = resources.files("vislang") / "assets" / "cifar10_sample.tar.gz"
    with resources.as_file(packaged) as path:
        url = Path(path).resolve().as_uri()
    return Archive("cifar10_sample", "cifar10_sample.tar.gz", (url,), CIFAR10_SAMPLE_SHA256)


def _no_path(name: str, path: str | None) -> None:
    if path is not None:
        raise VislangError(
            f"Dataset '{name}' fetches its own files, so data.path must be unset (got {path!r}). "
            f"To read a local copy use dataset image_folder, image_csv or npz with data.path."
        )


def _choice(name: str, option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise VislangError(f"Dataset '{name}': option {option}={value!r} is not one of {', '.join(choices)}.")


# ---------------------------------------------------------------------------------------------
# named datasets


@register_dataset("cifar10", kind="image", source="archive")
def cifar10(path: str | None = None, format: str = "auto") -> ImageDataset:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images, 10 classes.

    ``format``: ``python`` (official pickles, downloaded), ``jpg`` (the mirror's JPEG image
    folders), ``auto`` (jpg when ``VISLANG_MIRROR`` holds it, else python).
    """
    _no_path("cifar10", path)
    _choice("cifar10", "format", format, ("auto", "python", "jpg"))
    if format == "auto":
        format = "jpg" if mirror_file(CIFAR10_JPG.filename) else "python"
    if format == "jpg":
        root = fetch(CIFAR10_JPG) / "cifar10"
        return read_image_folder(root, name="cifar10", fingerprint=f"cifar10-jpg:{CIFAR10_JPG.digest}")
    root = fetch(CIFAR10_PYTHON) / "cifar-10-batches-py"
    return read_cifar_python(root, fingerprint=f"cifar10-python:{CIFAR10_PYTHON.digest}", name="cifar10")


@register_dataset("cifar10_sample", kind="image", source="packaged")
def cifar10_sample(path: str | None = None) -> ImageDataset:
    """A 10% CIFAR-10 sample shipped with vislang (500 train + 100 test images per class, JPEG)."""
    _no_path("cifar10_sample", path)
    archive = cifar10_sample_archive()
    return read_image_folder(
        fetch(archive) / "cifar10", name="cifar10_sample", fingerprint=f"sample:{archive.digest}"
    )


@register_dataset("tinyimagenet30", kind="image", source="archive")
def tinyimagenet30(path: str | None = None) -> ImageDataset:
    """30 Tiny ImageNet classes, 64x64 RGB: 500 train and 50 test (the original val) images per class."""
    _no_path("tinyimagenet30", path)
    root = fetch(TINYIMAGENET30) / "tiny-imagenet-30"
    return read_tinyimagenet(root, fingerprint=f"tin30:{TINYIMAGENET30.digest}", name="tinyimagenet30")


@register_dataset("pneumoniamnist", kind="image", source="archive")
def pneumoniamnist(path: str | None = None, source: str = "auto") -> ImageDataset:
    """PneumoniaMNIST chest X-rays, 28x28 grayscale, normal vs pneumonia, with train/val/test splits.

    ``source``: ``mirror`` (the mirror's copy), ``medmnist`` (download from Zenodo), ``auto``
    (the mirror when ``VISLANG_MIRROR`` holds pneumoniamnist.npz, else MedMNIST).
    """
    _no_path("pneumoniamnist", path)
    _choice("pneumoniamnist", "source", source, ("auto", "mirror", "medmnist"))
    if source == "auto":
        source = "mirror" if mirror_file(PNEUMONIAMNIST_MIRROR.filename) else "medmnist"
    archive = PNEUMONIAMNIST_MIRROR if source == "mirror" else PNEUMONIAMNIST_MEDMNIST
    return read_npz(
        fetch(archive), "pneumoniamnist", ["normal", "pneumonia"], fingerprint=f"npz:{archive.digest}"
    )


# ---------------------------------------------------------------------------------------------
# path-based datasets


def _need_path(name: str, path: str | None, what: str) -> Path:
    if path is None:
        raise VislangError(f"Dataset '{name}' needs data.path: {what}.")
    return Path(path).expanduser()


@register_dataset("image_folder", kind="image", source="path")
def image_folder(path: str | None = None) -> ImageDataset:
    """A folder with one sub-folder per class, or train/ val/ test/ sub-folders each holding class folders."""
    root = _need_path("image_folder", path, "a folder with one sub-folder of images per class")
    return read_image_folder(root, name=root.name or "image_folder")


@register_dataset("image_csv", kind="image", source="path")
def image_csv(
    path: str | None = None,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str | None = None,
) -> ImageDataset:
    """A CSV of image path (relative to the CSV's folder) and label, with an optional split column."""
    csv_path = _need_path("image_csv", path, "a CSV file with an image path column and a label column")
    return read_image_csv(csv_path, path_column, label_column, split_column, name=csv_path.stem)


@register_dataset("npz", kind="image", source="path")
def npz(path: str | None = None, class_names: list[str] | None = None) -> ImageDataset:
    """A MedMNIST-style .npz holding ``<split>_images`` and ``<split>_labels`` arrays."""
    file = _need_path("npz", path, "a .npz file with train_images and train_labels arrays")
    return read_npz(file, name=file.stem, class_names=class_names)


# ---------------------------------------------------------------------------------------------
# text datasets (task="text"): factories return a vislang.data.text.TextDataset of raw texts/labels

EMOEVENT = Archive("emoevent", "emoevent.tar.gz", (), "80db85cdc906538a9c43cffa474942265b2995a789e22a65548a6830aa69eb2a")
SST2 = Archive("sst2", "sst2.tar.gz", (), "3216a516db5a5054fc1b4e0afc4330667ca9dc62ea22b7668c32090c5828460c")


@register_dataset("emoevent", kind="text", task="text", source="archive")
def emoevent(path: str | None = None, lang: str = "es") -> Any:
    """EmoEvent tweets (LREC 2020), 7 emotions; ``lang`` es (train/test = the public dev file) or en.

    The Spanish copy's test file is left out of the mirror (its labels stop matching its tweets), so
    for ``es`` the dev file is the test split and validation is carved from train.
    """
    from vislang.data.text import TableFormat, TextDataset, read_text_table

    _no_path("emoevent", path)
    _choice("emoevent", "lang", lang, ("es", "en"))
    root = fetch(EMOEVENT) / "emoevent" / lang
    fmt = TableFormat(text_column="tweet", label_column="emotion", sep="\t", quoting="none")
    files = {"train": "train", "test": "dev"} if lang == "es" else {"train": "train", "val": "dev", "test": "test"}
    splits = {split: read_text_table(root / f"{stem}.tsv", fmt) for split, stem in files.items()}
    return TextDataset(f"emoevent_{lang}", splits, fingerprint=f"emoevent:{EMOEVENT.digest}:{lang}")


@register_dataset("sst2", kind="text", task="text", source="archive")
def sst2(path: str | None = None) -> Any:
    """SST-2 (Socher et al. 2013) binary sentiment: 67,349 train phrases, the 872-sentence ``dev`` and
    1,821-sentence ``test`` splits; validation is carved from train so ``dev`` stays unseen."""
    from vislang.data.text import TableFormat, TextDataset, read_text_table

    _no_path("sst2", path)
    root = fetch(SST2) / "sst2"
    names = {"0": "negative", "1": "positive"}
    splits = {}
    for split in ("train", "dev", "test"):  # the text column is 'sentence' in train, 'content' elsewhere
        fmt = TableFormat(text_column="sentence" if split == "train" else "content", label_column="label",
                          sep="\t", quoting="none")
        part = read_text_table(root / f"{split}.tsv", fmt)
        part.labels = [names.get(x, x) for x in part.labels]
        splits[split] = part
    return TextDataset("sst2", splits, fingerprint=f"sst2:{SST2.digest}")


@register_dataset("text_file", kind="text", task="text", source="path")
def text_file(path: str | None = None, table: Any = None, val_path: str | None = None,
              test_path: str | None = None) -> Any:
    """Your labelled text file(s): CSV / TSV / JSON lines; data.text_column, label_column, sep, quoting,
    encoding say how to read them; data.val_path / test_path add splits (else carved from train)."""
    from vislang.data.text import TableFormat, TextDataset, read_text_table

    file = _need_path("text_file", path, "a CSV, TSV or JSON-lines file with a text and a label column")
    fmt = table or TableFormat()
    splits = {"train": read_text_table(file, fmt)}
    for split, other in (("val", val_path), ("test", test_path)):
        if other:
            splits[split] = read_text_table(Path(other).expanduser(), fmt)
    return TextDataset(file.stem, splits, fingerprint="")


# caption datasets (task="caption"): flickr8k, captions, flickr_tokens, coco_captions, karpathy_captions,
# caption_csv; registered by their module, which needs the names defined above
from vislang.data import captions as _captions  # noqa: E402, F401
