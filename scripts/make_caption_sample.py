"""Build ``src/vislang/assets/flickr8k_sample.tar.gz`` from the mirror's ``flickr8k.tar.gz``.

The sample keeps the first 48 train, 6 dev and 6 test images (in the order of the official split
files), re-encoded at 160x160 (JPEG quality 80) to stay under 1 MB, with their 5 captions each, in
the Flickr8k layout: ``flickr8k_sample/{Flickr8k.token.txt, Flickr_8k.{train,dev,test}Images.txt,
images/*.jpg}``. The output is byte-for-byte reproducible (sorted members, fixed owner/mode/time,
no time or name in the gzip header).

    python scripts/make_caption_sample.py [--mirror ../shared/data] [--out src/vislang/assets/flickr8k_sample.tar.gz]

Paste the printed sha256 into ``FLICKR8K_SAMPLE_SHA256`` in ``src/vislang/data/captions.py``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

from PIL import Image

QUOTA = {"train": 48, "dev": 6, "test": 6}
SIZE, QUALITY = 160, 80
ROOT = Path(__file__).resolve().parents[1]


def select(source: Path) -> dict[str, bytes]:
    """Member name (in the sample) → bytes."""
    texts: dict[str, str] = {}
    images: dict[str, bytes] = {}
    with tarfile.open(source, "r|gz") as tf:
        for member in tf:
            name = member.name.split("/")[-1]
            if member.isfile() and (name.endswith(".txt")):
                texts[name] = tf.extractfile(member).read().decode()
            elif member.isfile() and name.endswith(".jpg"):
                images[name] = tf.extractfile(member).read()
    kept: dict[str, list[str]] = {}
    for split, n in QUOTA.items():
        kept[split] = [x for x in texts[f"Flickr_8k.{split}Images.txt"].split() if x][:n]
    wanted = {x for names in kept.values() for x in names}
    lines = [ln for ln in texts["Flickr8k.token.txt"].splitlines() if ln.split("#")[0] in wanted]
    out = {"flickr8k_sample/Flickr8k.token.txt": ("\n".join(lines) + "\n").encode()}
    for split, names in kept.items():
        out[f"flickr8k_sample/Flickr_8k.{split}Images.txt"] = ("\n".join(names) + "\n").encode()
    for name in sorted(wanted):
        with Image.open(io.BytesIO(images[name])) as im:
            buf = io.BytesIO()
            im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=QUALITY)
        out[f"flickr8k_sample/images/{name}"] = buf.getvalue()
    return out


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.mode = 0o755 if directory else 0o644
    return info


def write(files: dict[str, bytes], out: Path) -> str:
    """Write a reproducible tar.gz; return its sha256."""
    dirs = sorted({"/".join(n.split("/")[:k]) for n in files for k in range(1, n.count("/") + 1)})
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
    parser.add_argument("--mirror", type=Path,
                        default=Path(os.environ.get("VISLANG_MIRROR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "vislang" / "assets" / "flickr8k_sample.tar.gz")
    args = parser.parse_args()
    files = select(args.mirror / "flickr8k.tar.gz")
    sha = write(files, args.out)
    n = sum(1 for f in files if f.endswith(".jpg"))
    print(f"{args.out}: {n} images, {args.out.stat().st_size / 1e6:.2f} MB, sha256 {sha}")


if __name__ == "__main__":
    main()
