"""Text data on the real EmoEvent / SST-2 / GloVe files: readers, label maps, tokenizer, vocabulary,
word vectors, data module (bucketing, CV folds) and every bad-input error."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest
import torch

from vislang.data.registry import create_dataset
from vislang.data.text import TableFormat, Tokenizer, Vocab, load_word_vectors, read_text_table
from vislang.errors import VislangError
from vislang.tasks.text import TextDataConfig

POLARITY = {"joy": "positive", "anger": "negative", "sadness": "negative", "fear": "negative",
            "disgust": "negative", "others": "drop", "surprise": "drop"}


@pytest.fixture(scope="module")
def emoevent_es(vislang_env):
    from vislang.data.fetch import mirror_file

    if mirror_file("emoevent.tar.gz") is None:
        pytest.skip("the dataset mirror ../shared/data is needed")
    return create_dataset("emoevent", lang="es")


def datamodule(hf_source: str | None = None, **data):
    from vislang.data.text_datamodule import TextDataModule

    dm = TextDataModule(TextDataConfig(**data), seed=0, hf_source=hf_source, progress=False)
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------------------------------------- readers


def test_emoevent_read_with_tabs_and_no_quoting(emoevent_es):
    train = emoevent_es.splits["train"]
    assert len(train) == 5723 and len(emoevent_es.splits["test"]) == 844  # the dev file is the test split
    i = train.rows.index(9)  # a tweet that starts with quotes: kept as written, the row not merged with others
    assert train.texts[i].startswith('"""Sofia es mujer') and train.labels[i] == "others"
    assert set(train.labels) == {"anger", "disgust", "fear", "joy", "others", "sadness", "surprise"}


def test_csv_quoting_separator_and_newline_inside_text(tmp_path):
    f = tmp_path / "reviews.csv"
    f.write_text('id,review,stars\n1,"Great, really great\nfilm",pos\n2,"He said ""no""",neg\n', encoding="utf-8")
    split = read_text_table(f, TableFormat(text_column="review", label_column="stars"))
    assert split.texts == ["Great, really great\nfilm", 'He said "no"'] and split.labels == ["pos", "neg"]
    assert split.rows == [3, 4]  # the line each row ends on


def test_jsonl_reader(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "me encanta", "y": "joy"}\n\n{"text": "qué asco", "y": "disgust"}\n', encoding="utf-8")
    split = read_text_table(f, TableFormat(label_column="y"))
    assert split.texts == ["me encanta", "qué asco"] and split.rows == [1, 3]


def test_label_map_counts_before_and_after(emoevent_es):
    dm = datamodule(dataset="emoevent", label_map=POLARITY, val_fraction=0.1)
    raw = dm.label_counts["raw"]["train"]
    assert raw == {"anger": 589, "disgust": 111, "fear": 65, "joy": 1227, "others": 2800, "sadness": 693,
                   "surprise": 238}
    mapped = dm.label_counts["mapped"]
    assert dm.classes == ["negative", "positive"]
    assert mapped["train"]["positive"] + mapped["val"]["positive"] == 1227
    assert mapped["train"]["negative"] + mapped["val"]["negative"] == 589 + 111 + 65 + 693
    assert mapped["test"] == {"negative": 85 + 16 + 9 + 104, "positive": 181}


# --------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_social_media():
    tok = Tokenizer()
    text = "Ayer VÍ #JuegoDeTronos con @Pepe_12 😂😂 👍🏽 holaaaaa!!! https://t.co/UE7lC 12,5 años"
    assert tok(text) == ["ayer", "ví", "juego", "de", "tronos", "con", "<user>", "😂", "😂", "👍🏽", "holaa",
                         "!", "!", "!", "<url>", "<num>", "años"]
    keep = Tokenizer(hashtags="keep", mentions="keep", urls="drop", numbers="keep", max_repeat=0, emoji="drop",
                     punctuation=False)
    assert keep(text) == ["ayer", "ví", "#juegodetronos", "con", "@pepe_12", "holaaaaa", "12,5", "años"]
    assert Tokenizer(strip_accents=True)("Año ÁRBOL") == ["ano", "arbol"]
    assert Tokenizer()("it 's not bad , does n't") == ["it", "'s", "not", "bad", ",", "does", "n't"]


def test_vocab_min_freq_and_max_size():
    texts = [["a", "b", "a", "c"], ["a", "b", "d"]]
    assert Vocab.build(texts).tokens == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert Vocab.build(texts, min_freq=2).tokens == ["<pad>", "<unk>", "a", "b"]
    v = Vocab.build(texts, max_size=1)
    assert v.tokens == ["<pad>", "<unk>", "a"] and v.encode(["a", "zzz"]) == [2, 1]


# ----------------------------------------------------------------------------------- word vectors


def _glove(mirror: Path) -> Path:
    return mirror / "glove.6B.100d.top50k.txt.gz"


def test_glove_coverage(mirror):
    vocab = Vocab.build([["the", "film", "Movie", "zzqxv"]])
    counts = Counter({"the": 5, "film": 2, "Movie": 1, "zzqxv": 2})
    matrix, cov, same = load_word_vectors(_glove(mirror), vocab, token_counts=counts)
    assert matrix.shape == (6, 100) and cov["dim"] == 100 and same is vocab
    assert cov["vocab_found"] == 3 and cov["type_coverage"] == 0.75  # 'Movie' found lower-cased
    assert cov["token_coverage"] == 0.8
    assert not matrix[0].any()  # padding row is zero
    with gzip.open(_glove(mirror), "rt") as fh:
        the = [float(v) for v in fh.readline().split()[1:]]
    assert matrix[vocab.index["the"]].tolist() == pytest.approx(the)
    matrix, cov, bigger = load_word_vectors(_glove(mirror), vocab, extend=True)  # + every word of the file
    assert len(bigger) == matrix.shape[0] == 6 + 50_000 - 3 and cov["added_from_file"] == 50_000 - 3
    assert bigger.tokens[:6] == vocab.tokens and matrix[bigger.index["cinema"]].any()


def test_glove_malformed_line(tmp_path, mirror):
    with gzip.open(_glove(mirror), "rt") as fh:
        lines = [next(fh) for _ in range(5)]
    lines[3] = " ".join(lines[3].split()[:40]) + "\n"  # truncated line 4
    bad = tmp_path / "vectors.txt"
    bad.write_text("".join(lines))
    with pytest.raises(VislangError, match=r"vectors.txt line 4 is malformed"):
        load_word_vectors(bad, Vocab.build([["the"]]))


# ---------------------------------------------------------------------------------- data module


def test_bucketing_and_padding(emoevent_es):
    dm = datamodule(dataset="emoevent", label_map=POLARITY, batch_size=32)
    store = dm.stores["train"]
    padded_tokens, real_tokens = 0, 0
    for (ids, lengths), y in dm.train_dataloader():
        assert ids.shape == (len(y), int(lengths.max()))
        assert (ids[torch.arange(ids.shape[1])[None, :] >= lengths[:, None]] == 0).all()
        padded_tokens += ids.numel()
        real_tokens += int(lengths.sum())
    assert real_tokens > 0.97 * int(store.lengths.sum())  # at most a tiny last batch is left out
    assert real_tokens / padded_tokens > 0.9  # buckets: batches are mostly real tokens
    (ids, lengths), y = next(iter(dm.dataloader("test")))  # evaluation keeps the file order
    assert ids[1, : lengths[1]].tolist() == dm.stores["test"].row(1) and y[1] == dm.labels["test"][1]


def test_cv_folds_are_disjoint_and_stratified(emoevent_es):
    sizes, vals = [], []
    for fold in (0, 1):
        dm = datamodule(dataset="emoevent", label_map=POLARITY, cv_folds=5, cv_fold=fold)
        vals.append(set(dm.splits["val"].rows))
        sizes.append(dm.split_sizes)
        counts = dm.label_counts["mapped"]["val"]
        assert abs(counts["positive"] / sum(counts.values()) - 1227 / 2685) < 0.01
    assert not vals[0] & vals[1]
    assert sizes[0]["val"] + sizes[0]["train"] == 2685 and sizes[0]["val"] == 537


def test_transformer_tokenizer_offline(emoevent_es, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dm = datamodule("all-MiniLM-L6-v2", dataset="emoevent", label_map=POLARITY, subset={"train": 100, "test": 20},
                    max_length=64)
    (ids, lengths), _ = next(iter(dm.dataloader("test")))
    assert ids[0, 0] == 101 and ids[0, lengths[0] - 1] == 102  # [CLS] ... [SEP]
    assert int(lengths.max()) <= 64


# ---------------------------------------------------------------------------------------- errors


def _file(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_error_empty_text(tmp_path):
    f = _file(tmp_path, "a.tsv", "text\tlabel\nqué bonito día\tjoy\n   \tsadness\n")
    with pytest.raises(VislangError, match=r"a.tsv line 3 has an empty text"):
        read_text_table(f, TableFormat())
    assert len(read_text_table(f, TableFormat(drop_invalid=True))) == 1


def test_error_missing_label(tmp_path):
    f = _file(tmp_path, "a.tsv", "text\tlabel\nqué bonito día\tjoy\nqué pena\t\n")
    with pytest.raises(VislangError, match=r"a.tsv line 3 has no label"):
        read_text_table(f, TableFormat())


def test_error_label_absent_from_label_map(tmp_path):
    f = _file(tmp_path, "a.tsv", "text\tlabel\nqué bonito día\tjoy\nqué pena\tsadness\nvaya\tsurprise\n")
    cfg = dict(dataset="text_file", path=str(f), label_map={"joy": "positive", "sadness": "negative"})
    with pytest.raises(VislangError, match=r"Label 'surprise' \(.*a.tsv line 4\) is not in data.label_map"):
        datamodule(**cfg)


def test_error_latin1_read_as_utf8(tmp_path):
    f = _file(tmp_path, "a.csv", "text,label\nqué bonito día,joy\nqué pena,sadness\n", encoding="latin-1")
    with pytest.raises(VislangError, match=r"a.csv line 2 is not valid utf-8.*data.encoding: latin-1"):
        read_text_table(f, TableFormat())
    assert read_text_table(f, TableFormat(encoding="latin-1")).texts[0] == "qué bonito día"


def test_error_unknown_column_lists_columns(emoevent_es, tmp_path):
    src = Path(emoevent_es.splits["train"].source)
    with pytest.raises(VislangError, match=r"has no column 'text'.*Did you mean 'tweet'.*id, event, tweet, offensive, emotion"):
        read_text_table(src, TableFormat(sep="\t", quoting="none", label_column="emotion"))
