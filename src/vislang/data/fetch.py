"""Fetch a dataset file once: download it (or read it from a local mirror), verify its checksum,
extract it into the cache, and hand back the extracted folder.

Layout of the cache (``$VISLANG_CACHE``, default ``~/.cache/vislang``)::

    datasets/<name>-<sha256[:12]>/          extracted archive (or the verified single file)
    datasets/<name>-<sha256[:12]>/.complete written last: its presence means the folder is whole
    downloads/                              partial downloads (removed on failure)

Extraction goes to a temporary folder beside the target that is renamed into place at the end,
so an interrupted or failed fetch never leaves a half-extracted dataset behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vislang.errors import VislangError
from vislang.io import build_folder

MARKER = ".complete"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One downloadable dataset file.

    ``urls`` are tried in order after the mirror folder; ``()`` means the file is only available
    from a mirror. ``md5`` is used only when the publisher gives no sha256 (leave ``sha256`` empty).
    ``extract=False`` for files used as they are (``.npz``).
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str
    extract: bool = True
    md5: str = ""

    @property
    def digest(self) -> str:
        return self.sha256 or self.md5

    @property
    def algorithm(self) -> str:
        return "sha256" if self.sha256 else "md5"


def cache_dir() -> Path:
    """Root of vislang's cache: ``$VISLANG_CACHE`` or ``~/.cache/vislang``."""
    return Path(os.environ.get("VISLANG_CACHE") or Path.home() / ".cache" / "vislang").expanduser()


def mirror_dir() -> Path | None:
    """Folder holding dataset files under their archive names (``$VISLANG_MIRROR``), or None."""
    value = os.environ.get("VISLANG_MIRROR")
    return Path(value).expanduser() if value else None


def mirror_file(filename: str) -> Path | None:
    """The mirror's copy of ``filename`` when a mirror is set and holds it."""
    mirror = mirror_dir()
    if mirror is not None and (mirror / filename).is_file():
        return mirror / filename
    return None


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def fetch(archive: Archive, progress: bool = True) -> Path:
    """Make ``archive`` available in the cache and return its extracted folder (or verified file).

    Reads the file from ``$VISLANG_MIRROR`` when it is there, else downloads it from
    ``archive.urls`` (``file://`` URLs work). The checksum is verified before anything is
    extracted; a finished cache folder is reused without touching the source again.
    """
    target = cache_dir() / "datasets" / f"{archive.name}-{archive.digest[:12]}"

    def build(folder: Path) -> None:
        with _source_file(archive, progress) as source:
            _verify(archive, source)
            if archive.extract:
                _extract(source, folder, archive, progress)
            else:
                shutil.copyfile(source, folder / archive.filename)

    build_folder(target, build, marker=MARKER, stamp=f"{archive.algorithm} {archive.digest}\n")
    return target / archive.filename if not archive.extract else target


@contextmanager
def _source_file(archive: Archive, progress: bool) -> Iterator[Path]:
    """The mirror's file, or a temporary download that is deleted afterwards."""
    local = mirror_file(archive.filename)
    if local is not None:
        yield local
        return
    mirror = mirror_dir()
    if not archive.urls:
        where = (
            f"VISLANG_MIRROR={mirror} holds no {archive.filename}" if mirror else "VISLANG_MIRROR is not set"
        )
        raise VislangError(
            f"Dataset '{archive.name}' has no public download URL and {where}. "
            f"Set VISLANG_MIRROR to a folder holding {archive.filename}."
        )
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.filename}.", suffix=".part", dir=downloads)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        errors = []
        for url in archive.urls:
            try:
                _download(url, tmp, archive.filename, progress)
                break
            except (urllib.error.URLError, OSError, ValueError) as err:
                errors.append(f"{url}: {getattr(err, 'reason', err)}")
        else:
            raise VislangError(
                f"Could not download {archive.filename} for dataset '{archive.name}' "
                f"({'; '.join(errors)}). Check the network, or put {archive.filename} in a folder "
                f"and set VISLANG_MIRROR to it."
            )
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _download(url: str, dest: Path, label: str, progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "vislang"})
    with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with _progress(progress) as bar:
            task = bar.add_task(f"download {label}", total=total)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.advance(task, len(chunk))


def _verify(archive: Archive, path: Path) -> None:
    actual = file_digest(path, archive.algorithm)
    if actual != archive.digest:
        raise VislangError(
            f"Checksum mismatch for {path} (dataset '{archive.name}'): expected {archive.algorithm} "
            f"{archive.digest}, got {actual}. The file is corrupt, truncated or a different version: "
            f"delete it and download it again (or replace the mirror's copy)."
        )


class _CountingReader:
    """File wrapper that advances a progress bar as the compressed archive is read."""

    def __init__(self, fh, bar: Progress, task) -> None:  # noqa: ANN001 - private helper
        self._fh, self._bar, self._task = fh, bar, task

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._bar.advance(self._task, len(data))
        return data


def _extract(source: Path, dest: Path, archive: Archive, progress: bool) -> None:
    name = archive.filename.lower()
    try:
        if name.endswith(".zip"):
            _extract_zip(source, dest)
        elif name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            with _progress(progress) as bar, open(source, "rb") as raw:
                task = bar.add_task(f"extract {archive.filename}", total=source.stat().st_size)
                # stream mode ("r|*") reads the archive once, front to back
                with tarfile.open(fileobj=_CountingReader(raw, bar, task), mode="r|*") as tf:
                    tf.extractall(dest, filter="data")  # "data" refuses absolute paths, .. and links out
        else:
            raise VislangError(
                f"Do not know how to extract {archive.filename} (dataset '{archive.name}'): "
                f"expected .tar.gz, .tgz, .tar or .zip."
            )
    except tarfile.FilterError as err:
        raise VislangError(
            f"Refusing to extract {source} (dataset '{archive.name}'): {err}. The archive holds a path "
            f"outside its folder; get the file from a trusted source."
        ) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise VislangError(
            f"Could not extract {source} (dataset '{archive.name}'): {err}. The archive is corrupt or "
            f"truncated: delete it and download it again."
        ) from None


def _extract_zip(source: Path, dest: Path) -> None:
    root = dest.resolve()
    with zipfile.ZipFile(source) as zf:
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):
                raise tarfile.FilterError(f"{info.filename!r} would be extracted outside {root}")
        zf.extractall(root)
