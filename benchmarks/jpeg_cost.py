"""What the mirror's JPEG re-encoding of CIFAR-10 costs in accuracy, measured on data where both sides exist.

The shared CIFAR-10 (``cifar10-jpg.tar.gz``) is a JPEG re-encoding of the 32x32 originals: quality 75
with 4:2:0 chroma, i.e. PIL's tables at ``quality=75``, colour at half resolution. The original
pickles are not here, so the cost cannot be measured on CIFAR-10 itself. This script measures it on
the nearest thing that has both: Tiny ImageNet-30 brought to 32x32,

* **clean**: each 64x64 image reduced 2x with a box filter (the average of each 2x2 block, which also
  averages away most of its own 8x8 JPEG blocking) and kept losslessly (PNG);
* **jpeg**: those same 32x32 pixels re-encoded exactly as the mirror's CIFAR-10 was (quality 75, 4:2:0;
  the script checks the quantisation tables against a CIFAR-10 file when the mirror has one),

then trains ``configs/cifar10_fast.yaml`` (the airbench94 recipe; whitening stem computed from the
data) from scratch on each, same seed, and scores each on its own kind of test images (the 1,500
labelled validation images), as CIFAR-10 here is scored on JPEG test images. Run::

    python benchmarks/jpeg_cost.py [--epochs 12] [--seeds 0,1]

About 3.5 minutes per run on 2 cores. Measured here (2026-11-24, 2-core AMD EPYC, 12 epochs): see the
README's CIFAR-10 section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("VISLANG_MIRROR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

ROOT = Path(__file__).resolve().parents[1]
JPEG = {"quality": 75, "subsampling": 2}  # 2 = 4:2:0


def build(out: Path) -> int:
    """Write ``out/{clean,jpeg}/{train,test}/<class>/<n>.{png,jpg}``; returns the number of images."""
    from PIL import Image

    from vislang.data.registry import create_dataset

    ds = create_dataset("tinyimagenet30")
    n = 0
    for name in ("train", "test"):  # the registry serves Tiny ImageNet's labelled val images as test
        part = ds.splits[name]
        for i, (path, label) in enumerate(zip(part.items, part.labels, strict=True)):
            with Image.open(path) as im:
                small = im.convert("RGB").resize((32, 32), Image.BOX)
            for kind in ("clean", "jpeg"):
                folder = out / kind / name / ds.classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                if kind == "clean":
                    small.save(folder / f"{i}.png")
                else:
                    small.save(folder / f"{i}.jpg", **JPEG)
            n += 1
    return n


def same_tables_as_cifar(sample: Path) -> bool | None:
    """Whether a JPEG written here has the quantisation tables and chroma subsampling of the mirror's
    CIFAR-10 (None when the CIFAR-10 archive cannot be read)."""
    from PIL import Image, JpegImagePlugin

    from vislang.data.registry import create_dataset

    try:
        cifar = create_dataset("cifar10", format="jpg").splits["test"].items[0]
    except Exception:  # noqa: BLE001 - the comparison is informative only
        return None
    with Image.open(cifar) as a, Image.open(sample) as b:
        return a.quantization == b.quantization and JpegImagePlugin.get_sampling(a) == JpegImagePlugin.get_sampling(b)


def accuracy(data: Path, seed: int, epochs: int, out: Path) -> float:
    from vislang.config import load_config
    from vislang.run import train

    cfg = load_config(ROOT / "configs" / "cifar10_fast.yaml")
    cfg.name, cfg.output_dir, cfg.seed = f"{data.name}_seed{seed}", str(out), seed
    cfg.data.dataset, cfg.data.path = "image_folder", str(data)
    cfg.train.epochs = epochs
    run = train(cfg, quiet=True, light=True)
    return json.loads((run / "metrics.json").read_text())["test"]["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", default="0,1", help="comma-separated")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="vislang-jpeg-") as tmp:
        n = build(Path(tmp))
        sample = next((Path(tmp) / "jpeg" / "train").rglob("*.jpg"))
        print(f"{n} Tiny ImageNet-30 images at 32x32 (15,000 train / 1,500 test, 30 classes); "
              f"JPEG tables identical to the mirror's CIFAR-10: {same_tables_as_cifar(sample)}")
        rows = []
        for seed in seeds:
            clean = accuracy(Path(tmp) / "clean", seed, args.epochs, Path(tmp) / "runs")
            jpeg = accuracy(Path(tmp) / "jpeg", seed, args.epochs, Path(tmp) / "runs")
            rows.append((seed, clean, jpeg))
            print(f"  seed {seed}: clean {clean:.2%}  jpeg {jpeg:.2%}", flush=True)
    print(f"\ncifar10_fast.yaml, {args.epochs} epochs, test accuracy")
    print(f"{'seed':>5} {'clean':>8} {'jpeg q75':>9} {'cost':>7}")
    for seed, clean, jpeg in rows:
        print(f"{seed:5d} {clean:8.2%} {jpeg:9.2%} {(clean - jpeg) * 100:6.2f}pt")
    costs = [(c - j) * 100 for _, c, j in rows]
    print(f"{'mean':>5} {statistics.mean(r[1] for r in rows):8.2%} {statistics.mean(r[2] for r in rows):9.2%} "
          f"{statistics.mean(costs):6.2f}pt")


if __name__ == "__main__":
    main()
