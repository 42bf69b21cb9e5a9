"""Build ``src/vislang/assets/cifar10_sample.tar.gz`` from the mirror's ``cifar10-jpg.tar.gz``.

The sample keeps the first 500 train and 100 test images of each class (by file name) in the same
``cifar10/{train,test}/<class>/NNNN.jpg`` layout. The output is byte-for-byte reproducible: members
are sorted and written with fixed owner, mode and time, and the gzip header carries no time or name.

    python scripts/make_cifar10_sample.py [--mirror ../shared/data] [--out src/vislang/assets/cifar10_sample.tar.gz]

Paste the printed sha256 into ``CIFAR10_SAMPLE_SHA256`` in ``src/vislang/data/registry.py``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

QUOTA = {"train": 500, "test": 100}
ROOT = Path(__file__).resolve().parents[1]


def select(source: Path) -> dict[str, bytes]:
    """Member name → bytes of the images kept from the full archive."""
    by_class: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    with tarfile.open(source, "r|gz") as tf:
        for member in tf:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[0] == "cifar10" and parts[1] in QUOTA:
                by_class.setdefault((parts[1], parts[2]), []).append(
                    (member.name, tf.extractfile(member).read())
                )
    kept = {}
    for (split, _), files in sorted(by_class.items()):
        kept.update(sorted(files)[: QUOTA[split]])
    return kept


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.mode = 0o755 if directory else 0o644
    return info


def write(files: dict[str, bytes], out: Path) -> str:
    """Write a reproducible tar.gz; return its sha256."""
    dirs = sorted({"/".join(n.split("/")[:k]) for n in files for k in range(1, 4)})
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for d in dirs:
                tf.addfile(_info(d, directory=True))
            for name in sorted(files):
                tf.addfile(_info(name, len(files[name])), io.BytesIO(files[name]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mirror", type=Path, default=Path(os.environ.get("VISLANG_MIRROR", ROOT.parent / "shared" / "data"))
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "src" / "vislang" / "assets" / "cifar10_sample.tar.gz"
    )
    args = parser.parse_args()
    files = select(args.mirror / "cifar10-jpg.tar.gz")
    sha = write(files, args.out)
    print(f"{args.out}: {len(files)} images, {args.out.stat().st_size / 1e6:.2f} MB, sha256 {sha}")


if __name__ == "__main__":
    main()
