"""Caption data as a user meets it: the Flickr token file (irregular lines included), COCO / Karpathy /
CSV caption files, the vocabulary, and clear errors for bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from vislang.data.captions import (
    SPECIALS,
    Vocab,
    encode_captions,
    load_word_vectors,
    read_captions,
    read_flickr_tokens,
    tokenize,
)
from vislang.data.registry import create_dataset
from vislang.errors import VislangError


@pytest.fixture(scope="module")
def sample() -> Path:
    """The packaged 60-image Flickr8k sample (real photos and captions), extracted."""
    ds = create_dataset("flickr8k_sample")
    return ds.root


def _copy_images(sample: Path, dest: Path, n: int) -> list[str]:
    (dest / "images").mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (sample / "images").iterdir())[:n]
    for name in names:
        shutil.copy(sample / "images" / name, dest / "images" / name)
    return names


def test_flickr8k_official_token_file_and_splits(mirror):
    ds = create_dataset("flickr8k")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6000, "val": 1000, "test": 1000}
    assert all(len(c) == 5 for s in ds.splits.values() for c in s.captions)
    # the file's 2258277193_586949ec62.jpg.1#0 line is mapped back to its image, and said so
    assert any(".jpg.1#0" in note for note in ds.notes)


def test_token_file_irregular_lines(sample, tmp_path):
    names = _copy_images(sample, tmp_path, 3)
    lines = [f"{names[0]}#0\tA dog runs .", f"{names[0]}.1#1\tA dog runs on grass .", "",
             f"{names[1]}#0\tA", f"{names[1]}#1\tTwo children play .\r", f"{names[2]}#0\tA man rides a bike ."]
    token = tmp_path / "tokens.txt"
    token.write_text("\n".join(lines) + "\n")
    ds = read_flickr_tokens(token)
    split = ds.splits["train"]
    caps = dict(zip([p.name for p in split.images], split.captions))
    assert caps[names[0]] == ["A dog runs .", "A dog runs on grass ."]  # stray '.1' suffix mapped
    assert caps[names[1]] == ["Two children play ."]  # the one-letter caption dropped, CR stripped
    assert any("shorter than 2" in n for n in ds.notes) and any("stray suffix" in n for n in ds.notes)


def test_bad_caption_files_name_the_line(sample, tmp_path):
    names = _copy_images(sample, tmp_path, 2)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{names[0]}#0\tA dog .\n{names[1]}#0 no tab here\n")
    with pytest.raises(VislangError, match=r"line 2 is malformed"):
        read_flickr_tokens(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text(f"{names[0]}#0\tA dog runs .\n{names[1]}#0\t   \n")
    with pytest.raises(VislangError, match=r"line 2.*caption is empty"):
        read_flickr_tokens(empty)


def test_missing_image_is_named_or_skipped_with_a_count(sample, tmp_path):
    names = _copy_images(sample, tmp_path, 2)
    token = tmp_path / "tokens.txt"
    token.write_text(f"{names[0]}#0\tA dog runs in a field .\n{names[1]}#0\tA man on a bike .\n"
                     "gone_123.jpg#0\tA cat sleeps on a bed .\n")
    with pytest.raises(VislangError, match=r"gone_123\.jpg.*not on disk"):
        read_flickr_tokens(token)
    ds = read_flickr_tokens(token, skip_missing=True)
    assert len(ds.splits["train"]) == 2
    assert any("skipped 1 image(s) listed but missing" in n for n in ds.notes)


def test_coco_karpathy_and_csv_formats(sample, tmp_path):
    names = _copy_images(sample, tmp_path, 4)
    caps = {n: [f"a photo number {i} of a dog", f"another caption {i} here"] for i, n in enumerate(names)}
    coco = {"images": [{"id": 10 + i, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"id": k, "image_id": 10 + i, "caption": c}
                            for i, n in enumerate(names) for k, c in enumerate(caps[n])]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2014.json").write_text(json.dumps(coco))
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps({**coco, "images": coco["images"][:1],
                                                                                "annotations": coco["annotations"][:2]}))
    ds = read_captions(tmp_path, images_dir=tmp_path / "images")
    assert len(ds.splits["train"]) == 4 and len(ds.splits["val"]) == 1
    assert sorted(ds.splits["train"].captions[0]) == sorted(caps[ds.splits["train"].images[0].name])
    single = read_captions(tmp_path / "annotations" / "captions_train2014.json", images_dir=tmp_path / "images")
    assert len(single.splits["train"]) == 4

    karpathy = {"dataset": "flickr8k", "images": [
        {"filename": n, "split": ["train", "restval", "val", "test"][i],
         "sentences": [{"raw": c, "tokens": tokenize(c)} for c in caps[n]]} for i, n in enumerate(names)]}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(karpathy))
    ds = read_captions(tmp_path / "dataset_flickr8k.json")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 2, "val": 1, "test": 1}

    with (tmp_path / "caps.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        for n in names:
            for c in caps[n]:
                w.writerow([f"images/{n}", c])
    ds = read_captions(tmp_path / "caps.csv")
    assert len(ds.splits["train"]) == 4 and all(len(c) == 2 for c in ds.splits["train"].captions)
    (tmp_path / "bad.csv").write_text("image,caption\nimages/x.jpg\n")
    with pytest.raises(VislangError, match="line 2 is malformed"):
        read_captions(tmp_path / "bad.csv")


def test_vocabulary_min_freq_max_size_and_encoding():
    caps = ["A dog runs.", "a dog sits", "The dog's ball!", "a cat"]
    assert tokenize("The dog's ball!") == ["the", "dog", "'s", "ball"]
    v = Vocab.build(caps, min_freq=2)
    assert v.itos[:4] == list(SPECIALS) and set(v.itos[4:]) == {"a", "dog"}
    assert len(Vocab.build(caps, min_freq=1, max_size=6)) == 6  # the 2 most frequent words + 4 specials
    ids = v.encode("A dog flies", max_length=20)
    assert ids[0] == v.start and ids[-1] == v.end and v.unk in ids
    assert v.decode(ids) == "a dog <unk>"
    tokens, owner = encode_captions(v, [["a dog", "a dog a dog a dog"], ["dog"]], max_length=3)
    assert tokens.shape == (3, 5) and owner.tolist() == [0, 0, 1]
    assert tokens[1].tolist() == [v.start, v.stoi["a"], v.stoi["dog"], v.stoi["a"], v.end]  # cut at 3 words


def test_glove_vectors_from_the_mirror(mirror):
    v = Vocab.build(["a dog runs on the grass", "zzqx"], min_freq=1)
    matrix, found = load_word_vectors("glove.6B.100d", v)
    assert matrix.shape == (len(v), 100) and found == 5  # the mirror's top-50k file has no "a"; zzqx is made up
    assert abs(matrix[v.stoi["dog"]]).sum() > 0 and not matrix[v.pad].any()
