"""Atomic file writes: a reader (or a crash) never sees a half-written run file.

Each writer writes to a temporary file in the same folder, flushes it to disk, then renames
it over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save(path: str | Path, save: Callable[[IO[bytes]], None]) -> None:
    """Call ``save(fh)`` on a binary temp file, then move it into place (e.g. torch.save, fig.savefig)."""
    with atomic_open(path, "wb") as fh:
        save(fh)


def build_folder(target: str | Path, build: Callable[[Path], None], *, marker: str, stamp: str = "ok\n") -> None:
    """Build the cache folder ``target`` once, atomically and once across processes.

    ``build(tmp)`` fills a temporary folder beside ``target``; ``marker`` (a file written last, holding
    ``stamp``) says the folder is whole, then it is renamed into place. A failure leaves nothing behind.
    Sweep workers, k-fold runs and parallel jobs may ask for the same folder at once: an inter-process
    lock (a ``.lock`` file beside ``target``, kept: unlinking a lock races) lets the first build it while
    the others wait and then find it whole. Without it a late process could replace a folder another one
    is already reading. A folder without its marker is a crashed build's leftover and is replaced.
    """
    from filelock import FileLock

    target = Path(target)
    if (target / marker).is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / marker).is_file():  # a concurrent build finished while we waited
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            (tmp / marker).write_text(stamp)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
