"""Build the text quickstart sample ``src/vislang/assets/sst2_sample_{train,test}.tsv`` from the mirror's
``sst2.tar.gz``: 800 real labelled SST-2 sentences, half positive, half negative.

Train: 600 training phrases of at least 6 tokens (whole-sentence-like, not the treebank's short
fragments); test: 200 sentences of the SST-2 test split. Picked with a fixed seed, written sorted by
their row in the source file, so the output is byte-for-byte reproducible.

    python scripts/make_text_sample.py [--mirror ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUOTA = {"train": 600, "test": 200}
NAMES = {"0": "negative", "1": "positive"}


def read_split(archive: Path, split: str) -> list[tuple[str, str]]:
    """(label name, text) rows of one split of sst2.tar.gz."""
    with tarfile.open(archive) as tf:
        data = tf.extractfile(f"sst2/{split}.tsv").read().decode("utf-8")
    rows = list(csv.reader(io.StringIO(data), delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None))[1:]
    return [(NAMES[label], text) for label, text in rows]


def pick(rows: list[tuple[str, str]], n: int, seed: int, min_tokens: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    kept = []
    for label in ("negative", "positive"):
        idx = [i for i, (lab, text) in enumerate(rows) if lab == label and len(text.split()) >= min_tokens]
        kept += rng.sample(idx, n // 2)
    return [rows[i] for i in sorted(kept)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    archive = args.mirror / "sst2.tar.gz"
    for split, n in QUOTA.items():
        rows = pick(read_split(archive, split), n, seed=0, min_tokens=6 if split == "train" else 1)
        out = ROOT / "src" / "vislang" / "assets" / f"sst2_sample_{split}.tsv"
        with out.open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar=None,
                           lineterminator="\n")
            w.writerow(["label", "text"])
            w.writerows(rows)
        print(f"{out}: {len(rows)} sentences")


if __name__ == "__main__":
    main()
