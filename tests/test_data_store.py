"""The decoded uint8 store: reused by later runs, rebuilt when the source changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from vislang.data import store
from vislang.data.registry import create_dataset
from vislang.data.store import channel_stats, decode_split


def _folder(root: Path, sample_root: Path) -> Path:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for f in sorted((sample_root / "train" / cls).iterdir())[:5]:
            shutil.copy(f, root / cls / f.name)
    return root


def test_store_is_reused_and_rebuilt_when_a_source_file_changes(
    sample_root: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    root = _folder(tmp_path / "imgs", sample_root)
    dataset = create_dataset("image_folder", path=str(root))
    first, _ = decode_split(
        dataset.splits["train"], fingerprint=dataset.fingerprint, name="t", progress=False
    )
    calls = []
    monkeypatch.setattr(store, "_decode_chunk", lambda *a: calls.append(a) or [])
    again, _ = decode_split(
        dataset.splits["train"], fingerprint=dataset.fingerprint, name="t", progress=False
    )
    assert calls == [] and again.filename == first.filename  # reused, nothing decoded
    monkeypatch.undo()

    changed = sorted((root / "dog").iterdir())[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(changed, "JPEG", quality=95)
    os.utime(changed, ns=(1, 1))  # even an old mtime: the size/mtime pair differs
    dataset2 = create_dataset("image_folder", path=str(root))
    assert dataset2.fingerprint != dataset.fingerprint
    rebuilt, _ = decode_split(
        dataset2.splits["train"], fingerprint=dataset2.fingerprint, name="t", progress=False
    )
    assert rebuilt.filename != first.filename
    index = dataset2.splits["train"].items.index(changed)
    assert rebuilt[index, 0].mean() > 240 and rebuilt[index, 2].mean() < 15
    assert not np.array_equal(rebuilt[index], first[index])


def test_store_is_written_atomically_and_stats_cached(sample_root: Path, tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", sample_root)
    dataset = create_dataset("image_folder", path=str(root))
    images, labels = decode_split(
        dataset.splits["train"], fingerprint=dataset.fingerprint, name="s", progress=False
    )
    folder = Path(images.filename)
    assert folder.parent.name.startswith("s-") and (folder.parent / ".complete").is_file()
    assert not [p for p in folder.parent.parent.iterdir() if p.name.startswith(".") and p.is_dir()]  # no temp folder
    assert images.dtype == np.uint8 and labels.dtype == np.int64 and labels.tolist() == [0] * 5 + [1] * 5
    mean, std = channel_stats(images)
    expected = np.asarray(images, dtype=np.float64)
    np.testing.assert_allclose(mean, expected.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, expected.std(axis=(0, 2, 3)), rtol=1e-6)
    assert (folder.parent / "stats.json").is_file() and channel_stats(images) == (mean, std)


def test_parallel_decode_matches_serial(sample_root: Path, monkeypatch) -> None:  # noqa: ANN001
    dataset = create_dataset("cifar10_sample")
    split = dataset.splits["test"].take(np.arange(0, 1000, 2))  # 500 images
    serial, _ = decode_split(split, fingerprint="serial", name="p", progress=False, workers=1)
    monkeypatch.setattr(store, "PARALLEL_MIN", 100)
    parallel, _ = decode_split(split, fingerprint="parallel", name="p", progress=False, workers=2)
    np.testing.assert_array_equal(serial, parallel)
