"""Fetch: mirror → verify sha256 → extract → cache, reuse, and clear errors that leave nothing behind."""

from __future__ import annotations

import io
import multiprocessing
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from vislang.data.fetch import MARKER, Archive, cache_dir, fetch, file_digest
from vislang.data.registry import (
    PNEUMONIAMNIST_MIRROR,
    TINYIMAGENET30,
    cifar10_sample_archive,
    create_dataset,
)
from vislang.errors import VislangError


def _cache_entries(root: Path) -> list[str]:
    """What the cache holds, less the build locks (empty files that are kept, as unlinking a lock races)."""
    folder = root / "datasets"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


def test_mirror_fetch_verifies_extracts_and_reuses(
    mirror: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = fetch(TINYIMAGENET30, progress=False)
    assert folder.name == f"tinyimagenet30-{TINYIMAGENET30.sha256[:12]}"
    assert (folder / MARKER).is_file()
    assert (folder / "tiny-imagenet-30" / "wnids.txt").is_file()
    # a second fetch reuses the cache without reading the source again (the mirror is now empty)
    monkeypatch.setenv("VISLANG_MIRROR", str(tmp_path))
    assert fetch(TINYIMAGENET30, progress=False) == folder


def _fetch_in_child(go: Any, log: str) -> None:
    fetch_module = sys.modules["vislang.data.fetch"]  # (the package's ``fetch`` attribute is the function)
    extract = fetch_module._extract

    def counted(*args: Any, **kwargs: Any) -> None:
        with open(log, "a") as f:
            f.write("extract\n")
        extract(*args, **kwargs)

    fetch_module._extract = counted
    go.wait()
    folder = fetch(TINYIMAGENET30, progress=False)
    assert (folder / MARKER).is_file() and (folder / "tiny-imagenet-30" / "wnids.txt").is_file()


def test_concurrent_fetches_extract_once_and_share_the_folder(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (sweep workers, parallel jobs) fetching one dataset at the same moment: one extracts,
    the other waits and reuses it; neither replaces the folder the other is reading."""
    monkeypatch.setenv("VISLANG_CACHE", str(tmp_path / "cache"))
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    go, log = ctx.Event(), str(tmp_path / "extractions.log")
    procs = [ctx.Process(target=_fetch_in_child, args=(go, log)) for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert Path(log).read_text().split() == ["extract"]
    assert _cache_entries(tmp_path / "cache") == [f"tinyimagenet30-{TINYIMAGENET30.sha256[:12]}"]


def test_non_archive_file_is_verified_and_cached(mirror: Path) -> None:
    path = fetch(PNEUMONIAMNIST_MIRROR, progress=False)
    assert path.name == "pneumoniamnist.npz" and path.parent.parent == cache_dir() / "datasets"
    assert file_digest(path) == PNEUMONIAMNIST_MIRROR.sha256


@pytest.fixture
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache and an empty mirror folder for one test."""
    monkeypatch.setenv("VISLANG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VISLANG_MIRROR", str(tmp_path / "mirror"))
    (tmp_path / "mirror").mkdir()
    return tmp_path


def test_checksum_mismatch_is_clear_and_leaves_no_cache(private: Path, mirror: Path) -> None:
    data = bytearray((mirror / "pneumoniamnist.npz").read_bytes())
    data[1000] ^= 0xFF  # one wrong byte
    (private / "mirror" / "pneumoniamnist.npz").write_bytes(bytes(data))
    with pytest.raises(VislangError) as err:
        fetch(PNEUMONIAMNIST_MIRROR, progress=False)
    message = str(err.value)
    assert "pneumoniamnist.npz" in message and PNEUMONIAMNIST_MIRROR.sha256 in message
    assert "expected" in message and "got" in message
    assert not [n for n in _cache_entries(private / "cache") if not n.startswith(".")]
    assert _cache_entries(private / "cache") == []


def test_truncated_archive_gives_clear_error_and_no_folder(private: Path, sample_root: Path) -> None:
    packaged = Path(cifar10_sample_archive().urls[0].removeprefix("file://"))
    truncated = private / "mirror" / "cut.tar.gz"
    truncated.write_bytes(packaged.read_bytes()[: packaged.stat().st_size // 2])
    # wrong checksum (the published one): caught before extraction
    with pytest.raises(VislangError, match="Checksum mismatch"):
        fetch(Archive("cut", "cut.tar.gz", (), cifar10_sample_archive().sha256), progress=False)
    # checksum of the truncated bytes themselves: extraction fails, nothing half-extracted is kept
    with pytest.raises(VislangError, match="corrupt or truncated"):
        fetch(Archive("cut", "cut.tar.gz", (), file_digest(truncated)), progress=False)
    assert _cache_entries(private / "cache") == []


def test_archive_with_path_outside_folder_is_refused(private: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    bad = private / "mirror" / "evil.tar.gz"
    bad.write_bytes(buffer.getvalue())
    with pytest.raises(VislangError, match="outside"):
        fetch(Archive("evil", "evil.tar.gz", (), file_digest(bad)), progress=False)
    assert not (private / "cache" / "evil.txt").exists()
    assert _cache_entries(private / "cache") == []


def test_mirror_only_archive_without_mirror_says_what_to_do(
    private: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VISLANG_MIRROR")
    with pytest.raises(VislangError, match="Set VISLANG_MIRROR to a folder holding tinyimagenet30.tar.gz"):
        create_dataset("tinyimagenet30")


def test_packaged_sample_goes_through_file_url(private: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISLANG_MIRROR")
    archive = cifar10_sample_archive()
    assert archive.urls[0].startswith("file://")
    dataset = create_dataset("cifar10_sample")
    assert dataset.classes[:3] == ["airplane", "automobile", "bird"] and len(dataset.classes) == 10
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 5000, "test": 1000}
    assert (private / "cache" / "datasets" / f"cifar10_sample-{archive.sha256[:12]}" / MARKER).is_file()
    shutil.rmtree(private / "cache")
