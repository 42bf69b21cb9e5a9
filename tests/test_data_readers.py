"""Reading the real datasets and user folders/CSVs/npz, with the errors users hit."""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislang.config import DataConfig
from vislang.data import registry
from vislang.data.datamodule import ImageDataModule
from vislang.data.fetch import Archive, file_digest
from vislang.data.registry import create_dataset
from vislang.data.store import decode_split, load_image, skipped_files
from vislang.errors import VislangError


def _module(**kwargs) -> ImageDataModule:  # noqa: ANN003
    dm = ImageDataModule(DataConfig(**kwargs), seed=0, progress=False)
    dm.setup()
    return dm


def test_cifar10_jpg_from_mirror_with_subset(mirror: Path) -> None:
    dm = _module(dataset="cifar10", subset={"train": 1000, "test": 200}, val_fraction=0.1)
    assert dm.class_names[0] == "airplane" and dm.num_classes == 10
    assert dm.split_sizes == {"train": 900, "test": 200, "val": 100}
    assert dm.class_counts["train"] == [90] * 10 and dm.class_counts["test"] == [20] * 10
    assert dm.input_shape == (3, 32, 32) and dm.images["train"].dtype.is_floating_point is False
    assert 100 < dm.mean[0] < 150 and 40 < dm.std[0] < 80


def _cifar_pickle_tarball(sample_root: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """An official-layout cifar-10-python tarball holding real sample images (6 per class train, 2 test)."""
    classes = sorted(p.name for p in (sample_root / "train").iterdir())
    rows, labels = [], []
    for split, per in (("train", 6), ("test", 2)):
        for k, name in enumerate(classes):
            for f in sorted((sample_root / split / name).iterdir())[:per]:
                rows.append(np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1).reshape(-1))
                labels.append(k)
    data, labels_arr = np.stack(rows), np.array(labels)
    batches = {f"data_batch_{i}": slice((i - 1) * 12, i * 12) for i in range(1, 6)} | {
        "test_batch": slice(60, 80)
    }
    with tarfile.open(out, "w:gz") as tf:
        files = {"batches.meta": {b"label_names": [c.encode() for c in classes]}}
        files |= {n: {b"data": data[s], b"labels": labels_arr[s].tolist()} for n, s in batches.items()}
        for name, obj in files.items():
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return data, labels_arr


def test_cifar10_python_pickles_through_file_url(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = tmp_path / "cifar-10-python.tar.gz"
    data, labels = _cifar_pickle_tarball(sample_root, tarball)
    archive = Archive("cifar10-python", "cifar-10-python.tar.gz", (tarball.as_uri(),), file_digest(tarball))
    monkeypatch.setattr(registry, "CIFAR10_PYTHON", archive)
    monkeypatch.delenv("VISLANG_MIRROR", raising=False)  # auto → python when no mirror holds the jpgs
    dataset = create_dataset("cifar10")
    assert dataset.classes == sorted(p.name for p in (sample_root / "train").iterdir())
    assert len(dataset.splits["train"]) == 60 and len(dataset.splits["test"]) == 20
    images, got = decode_split(dataset.splits["train"], fingerprint=dataset.fingerprint, progress=False)
    assert images.shape == (60, 3, 32, 32)
    np.testing.assert_array_equal(images.reshape(60, -1), data[:60])
    np.testing.assert_array_equal(got, labels[:60])


def test_tinyimagenet30_classes_names_and_test_split(mirror: Path) -> None:
    dataset = create_dataset("tinyimagenet30")
    assert len(dataset.classes) == 30 and dataset.classes[0].startswith("n0")
    assert "trilobite" in dataset.class_names and "n01768244" not in dataset.class_names
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 15000, "test": 1500}
    assert np.bincount(dataset.splits["test"].labels).tolist() == [50] * 30
    dm = _module(dataset="tinyimagenet30", subset={"train": 300, "test": 60})
    assert dm.input_shape == (3, 64, 64) and dm.split_sizes == {"train": 270, "test": 60, "val": 30}


def test_pneumoniamnist_npz_splits_one_channel(mirror: Path) -> None:
    dm = _module(dataset="pneumoniamnist", channels=1, subset={"train": 400})
    assert dm.class_names == ["normal", "pneumonia"]
    assert dm.split_sizes == {"train": 400, "val": 524, "test": 624}  # the file has its own val split
    assert dm.input_shape == (1, 28, 28) and len(dm.mean) == 1
    assert dm.class_counts["train"] == [40, 360]  # stratified: the 10% minority class keeps its share


def _real_image(sample_root: Path) -> Image.Image:
    return Image.open(sorted((sample_root / "train" / "cat").iterdir())[0]).convert("RGB")


def test_image_folder_converts_grayscale_rgba_palette_16bit(sample_root: Path, tmp_path: Path) -> None:
    rgb = _real_image(sample_root)
    gray = rgb.convert("L")
    root = tmp_path / "folder"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    gray.save(root / "a" / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)  # fully transparent → black
    rgba.save(root / "a" / "rgba.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "b" / "palette.png")
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(root / "b" / "deep.png")  # 16-bit
    dataset = create_dataset("image_folder", path=str(root))
    assert dataset.classes == ["a", "b"]
    images, labels = decode_split(
        dataset.splits["train"], channels=3, fingerprint=dataset.fingerprint, progress=False
    )
    by_name = {p.name: images[i] for i, p in enumerate(dataset.splits["train"].items)}
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(by_name["gray.png"][0], np.asarray(gray))
    assert (by_name["rgba.png"] == 0).all()
    np.testing.assert_array_equal(by_name["deep.png"][1], np.asarray(gray))  # 65535 → 255, per channel
    assert np.abs(by_name["palette.png"].astype(int) - np.asarray(rgb).transpose(2, 0, 1)).mean() < 12
    assert load_image(root / "b" / "deep.png", 16, 1).shape == (1, 16, 16)


def test_image_csv_with_split_column_and_errors(sample_root: Path, tmp_path: Path) -> None:
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rows = ["file,label,split"]
    for cls in ("cat", "dog"):
        for i, f in enumerate(sorted((sample_root / "train" / cls).iterdir())[:4]):
            shutil.copy(f, img_dir / f"{cls}{i}.jpg")
            rows.append(f"imgs/{cls}{i}.jpg,{cls},{'test' if i == 3 else 'train'}")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    dataset = create_dataset("image_csv", path=str(csv_file), path_column="file", split_column="split")
    assert (
        dataset.classes == ["cat", "dog"]
        and len(dataset.splits["train"]) == 6
        and len(dataset.splits["test"]) == 2
    )
    with pytest.raises(VislangError, match="no column 'path'.*header row is: file, label, split"):
        create_dataset("image_csv", path=str(csv_file))
    csv_file.write_text("\n".join(rows[:3] + ["imgs/cat0.jpg,cat"] + rows[3:]) + "\n")
    with pytest.raises(VislangError, match="row 4"):
        create_dataset("image_csv", path=str(csv_file), path_column="file", split_column="split")
    csv_file.write_text("\n".join(rows + ["imgs/cat0.jpg,cat,holdout"]) + "\n")
    with pytest.raises(VislangError, match="Unknown split 'holdout'.*row 10"):
        create_dataset("image_csv", path=str(csv_file), path_column="file", split_column="split")


def test_npz_path_dataset_rgb_to_gray(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    file = tmp_path / "toy.npz"
    np.savez(file, train_images=rng.integers(0, 256, (8, 5, 6, 3), dtype=np.uint8), train_labels=np.arange(8) % 2,
             test_images=rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8), test_labels=np.arange(4) % 2)  # fmt: skip
    dataset = create_dataset("npz", path=str(file))
    images, _ = decode_split(
        dataset.splits["train"], channels=1, fingerprint=dataset.fingerprint, progress=False
    )
    expected = np.asarray(Image.fromarray(np.load(file)["train_images"][3]).convert("L"))
    assert images.shape == (8, 1, 5, 6)
    assert np.abs(images[3, 0].astype(int) - expected).max() <= 1


def _folder(tmp_path: Path, sample_root: Path, layout: dict[str, int]) -> Path:
    """Folder split/class → that many real images."""
    for rel, n in layout.items():
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        cls = rel.rsplit("/", 1)[-1] if rel.rsplit("/", 1)[-1] in ("cat", "dog") else "cat"
        for f in sorted((sample_root / "train" / cls).iterdir())[:n]:
            shutil.copy(f, tmp_path / rel / f.name)
    return tmp_path


def test_folder_errors_name_the_folder_or_class(sample_root: Path, tmp_path: Path) -> None:
    with pytest.raises(VislangError, match="does not exist"):
        create_dataset("image_folder", path=str(tmp_path / "nope"))
    empty = _folder(tmp_path / "e", sample_root, {"cat": 3, "dog": 0})
    with pytest.raises(VislangError, match=f"Class folder {empty / 'dog'} holds no images"):
        create_dataset("image_folder", path=str(empty))
    test_only = _folder(tmp_path / "t", sample_root, {"train/cat": 3, "test/cat": 1, "test/dog": 1})
    with pytest.raises(VislangError, match="Class 'dog'.*test split.*no training images"):
        create_dataset("image_folder", path=str(test_only))
    bad_split = _folder(tmp_path / "s", sample_root, {"train/cat": 2, "holdout/cat": 1})
    with pytest.raises(VislangError, match="Unknown split 'holdout'"):
        create_dataset("image_folder", path=str(bad_split))
    with pytest.raises(VislangError, match="needs data.path"):
        create_dataset("image_folder")


def test_mixed_sizes_need_image_size(sample_root: Path, tmp_path: Path) -> None:
    root = _folder(tmp_path / "m", sample_root, {"cat": 3, "dog": 3})
    big = sorted((root / "dog").iterdir())[0]
    Image.open(big).resize((48, 40)).save(big)
    dataset = create_dataset("image_folder", path=str(root))
    with pytest.raises(VislangError, match="differ in size.*data.image_size"):
        decode_split(dataset.splits["train"], fingerprint=dataset.fingerprint, progress=False)
    images, _ = decode_split(
        dataset.splits["train"], size=32, fingerprint=dataset.fingerprint, progress=False
    )
    assert images.shape == (6, 3, 32, 32)


def test_corrupt_jpeg_error_and_skip(sample_root: Path, tmp_path: Path) -> None:
    root = _folder(tmp_path / "c", sample_root, {"cat": 4, "dog": 4})
    broken = sorted((root / "dog").iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated JPEG
    with pytest.raises(VislangError, match=f"Cannot read image {broken}.*skip_corrupt"):
        _module(dataset="image_folder", path=str(root))
    dm = _module(dataset="image_folder", path=str(root), skip_corrupt=True, val_fraction=0.0)
    assert dm.split_sizes == {"train": 7} and dm.class_counts["train"] == [4, 3]
    assert dm.skipped == {"train": [str(broken)]}
    images, _ = decode_split(create_dataset("image_folder", path=str(root)).splits["train"], skip_corrupt=True,
                             fingerprint=create_dataset("image_folder", path=str(root)).fingerprint, progress=False)  # fmt: skip
    assert skipped_files(images) == [str(broken)]
