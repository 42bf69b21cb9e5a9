"""Text classification as a task (see :mod:`vislang.tasks` for the interface): its experiment file
(:class:`TextExperimentConfig`), data module, model building, evaluation and ``predict --text``.

Batches are ``((ids, lengths), labels)``; the shared :class:`~vislang.tasks.classification.ClassificationTask`
trains any registered text model on them. The run's ``data.json`` holds the classes, the label counts
before and after ``data.label_map``, split sizes, embedding coverage, the tokenizer settings and the
vocabulary, so ``predict`` encodes new text exactly as training did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from vislang.config import BaseExperiment, ModelConfig, Section, TrainConfig
from vislang.tasks.classification import ClassificationTask

default_monitor = "val/acc"


# ---------------------------------------------------------------------------------------------
# the experiment file


class TokenizerConfig(Section):
    """vislang's word tokenizer (models other than ``transformer``, which brings its own)."""

    lowercase: bool = Field(True, description="lower-case (accents are kept: Spanish 'año' ≠ 'ano')")
    strip_accents: bool = Field(False, description="also remove accents")
    urls: Literal["token", "keep", "drop"] = Field("token", description="token = one <url> token")
    mentions: Literal["token", "keep", "drop"] = Field("token", description="@user; token = one <user> token")
    hashtags: Literal["split", "keep", "drop"] = Field("split", description="split #JuegoDeTronos into words, or keep it whole")
    emoji: Literal["keep", "drop"] = Field("keep", description="keep = one token per emoji")
    numbers: Literal["token", "keep", "drop"] = Field("token", description="token = one <num> token")
    max_repeat: int = Field(2, ge=0, description="letters repeated more often are cut to this many (holaaaa → holaa); 0 = off")
    punctuation: bool = Field(True, description="keep punctuation marks (! ?) as tokens")


class VocabConfig(Section):
    min_freq: int = Field(1, ge=1, description="keep training tokens seen at least this often")
    max_size: int | None = Field(None, ge=1, description="keep at most this many (most frequent) tokens; null = all")


class EmbeddingsConfig(Section):
    source: str | None = Field(None, description="named word vectors fetched like datasets: glove.6B.100d.top50k")
    path: str | None = Field(None, description="or a GloVe / word2vec text file (plain or .gz); relative to the config file")
    trainable: bool = Field(True, description="fine-tune the vectors (false = static)")
    extend_vocab: bool = Field(True, description="add every word of the vector file to the vocabulary: words never seen in training keep their pretrained vector")


class TextDataConfig(Section):
    dataset: str = Field("sst2", description="registered text dataset (vislang data list): sst2, emoevent, text_file")
    path: str | None = Field(None, description="text_file: the training file (CSV, TSV or JSON lines); relative to the config file")
    val_path: str | None = Field(None, description="text_file: an optional validation file")
    test_path: str | None = Field(None, description="text_file: an optional test file")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset options, e.g. {lang: en} for emoevent")
    text_column: str | None = Field(None, description="text_file: text column (default 'text')")
    label_column: str | None = Field(None, description="text_file: label column (default 'label')")
    sep: str | None = Field(None, description="text_file: field separator; null = by extension (.tsv tab, else comma)")
    quoting: Literal["minimal", "none"] = Field("minimal", description="none = quotes are ordinary characters (tweets)")
    encoding: str = Field("utf-8", description="file encoding, e.g. latin-1")
    header: bool = Field(True, description="the first row names the columns (false: columns are '0', '1', ...)")
    drop_invalid: bool = Field(False, description="skip rows with an empty text or no label instead of stopping")
    label_map: dict[str, str] = Field(default_factory=dict, description="regroup labels ({joy: positive}); 'drop' removes a label; when set, every label must be listed")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    max_length: int = Field(128, ge=1, description="tokens kept per text (longer texts are cut)")
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="validation carved (stratified, seeded) from train when the dataset has none")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="test carved from train when the dataset has no test split")
    cv_folds: int | None = Field(None, ge=2, description="stratified seeded K-fold over train: fold cv_fold becomes validation")
    cv_fold: int | None = Field(None, ge=0, description="which fold (0-based) is validation when cv_folds is set")
    subset: dict[str, int] = Field(default_factory=dict, description="cap per split, e.g. {train: 2000}; stratified and seeded")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    bucket: bool = Field(True, description="length bucketing: training batches of texts of similar length")

    @model_validator(mode="after")
    def _fold(self) -> TextDataConfig:
        if self.cv_fold is not None and self.cv_folds is None:
            raise ValueError("data.cv_fold needs data.cv_folds")
        if self.cv_folds is not None and (self.cv_fold or 0) >= self.cv_folds:
            raise ValueError(f"data.cv_fold={self.cv_fold} must be below data.cv_folds={self.cv_folds}")
        if self.embeddings.source and self.embeddings.path:
            raise ValueError("give data.embeddings.source or data.embeddings.path, not both")
        return self


class TextTrainConfig(TrainConfig):
    """Training defaults that suit text models (Adam, no channels_last)."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "onecycle", "cosine", "step", "plateau"] = "cosine"
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field("32", description="32 suits recurrent models on CPUs; bf16-mixed speeds the transformer on bf16 CPUs/GPUs")
    channels_last: bool = False
    class_weights: Literal["none", "balanced"] = Field("none", description="balanced = loss weights inversely proportional to train class counts")


class TextModelConfig(ModelConfig):
    name: str = Field("textcnn", description="lstm, gru, attention, textcnn or transformer (vislang models list --task text)")


class TextEvalConfig(Section):
    split: str = Field("test", description="split evaluated at the end of training")
    top_k: int = Field(5, ge=1)
    checkpoint: Literal["best", "last"] = "best"
    explain: int = Field(24, ge=0, description="texts of the eval split explained in explain/words.html (half correct, half wrong); 0 = off")
    ig_steps: int = Field(32, ge=4, description="integrated-gradients steps per explained text")


class TextExperimentConfig(BaseExperiment):
    """A text-classification experiment."""

    task: Literal["text_classification"] = "text_classification"
    data: TextDataConfig = Field(default_factory=TextDataConfig)
    model: TextModelConfig = Field(default_factory=TextModelConfig)
    train: TextTrainConfig = Field(default_factory=TextTrainConfig)
    eval: TextEvalConfig = Field(default_factory=TextEvalConfig)


# ---------------------------------------------------------------------------------------------
# the task interface

INJECTED = ("num_classes", "vocab_size")


def _entry(cfg: TextExperimentConfig) -> Any:
    from vislang.errors import VislangError
    from vislang.models import MODELS

    entry = MODELS.get(cfg.model.name)
    if entry.meta.get("task") != "text":
        raise VislangError(f"Model '{cfg.model.name}' is not a text model (it is for {entry.meta.get('task')}); text models: "
                           f"{', '.join(MODELS.names(task='text'))}.")
    return entry


def hf_source(cfg: TextExperimentConfig) -> str | None:
    """The pretrained tokenizer a model brings (transformer), or None for vislang's word tokenizer."""
    fn = getattr(_entry(cfg).factory, "hf_source", None)
    return fn(cfg.model.kwargs()) if fn else None


def check_config(cfg: TextExperimentConfig) -> None:
    """Fail fast (before any text is read) on an unknown or non-text model, or a bad option."""
    from vislang.errors import VislangError

    entry = _entry(cfg)
    kwargs = cfg.model.kwargs()
    for key in INJECTED:
        if key in kwargs:
            raise VislangError(f"model.{key} comes from the data; remove it from the config.")
    entry.check_kwargs(kwargs, "Model")


def make_datamodule(cfg: TextExperimentConfig) -> Any:
    from vislang.data.text_datamodule import TextDataModule

    return TextDataModule(cfg.data, cfg.seed, hf_source=hf_source(cfg))


def data_info(dm: Any) -> dict[str, Any]:
    """Facts a trained model needs (data.json): classes, label counts before/after label_map, split sizes,
    text lengths, embedding coverage, tokenizer settings and, last, the vocabulary."""
    enc = dm.encoder
    info: dict[str, Any] = {
        "dataset": dm.cfg.dataset,
        "classes": list(dm.classes),
        "class_names": list(dm.class_names),
        "split_sizes": {k: int(v) for k, v in dm.split_sizes.items()},
        "class_counts": {k: [int(c) for c in v] for k, v in dm.class_counts.items()},
        "label_counts_raw": dm.label_counts["raw"],
        "label_counts": dm.label_counts["mapped"],
        "label_map": dict(dm.cfg.label_map),
        "lengths": dm.length_stats(),
        "embeddings": dm.coverage,
        "tokenizer": enc.to_info(),
        "vocab_size": enc.to_info()["vocab_size"],
    }
    if getattr(enc, "vocab", None) is not None:
        info["vocab"] = list(enc.vocab.tokens)
    return info


def summary(info: dict[str, Any]) -> str:
    sizes = ", ".join(f"{k} {v:,}" for k, v in info["split_sizes"].items())
    cov = info.get("embeddings")
    vec = f", vectors cover {cov['type_coverage']:.1%} of the vocabulary" if cov else ""
    return f"{len(info['classes'])} classes, texts {sizes}, vocabulary {info['vocab_size']:,}{vec}"


def build_task(cfg: TextExperimentConfig, info: dict[str, Any]) -> ClassificationTask:
    """The task (model + loss) for a config and a run's ``data.json`` facts."""
    from vislang.errors import VislangError
    from vislang.models import create_model

    # Embedding rows of rare words get no gradient for many steps, so Adam's moments decay into
    # denormal floats, which x86 CPUs handle ~100x slower: SST-2 training fell from 2,000 to 30
    # sentences/s by epoch 3. Flushing denormals to zero changes no result that matters.
    torch.set_flush_denormal(True)
    kwargs = cfg.model.kwargs()
    cov = info.get("embeddings")
    if cov:
        if "embed_dim" in kwargs and int(kwargs["embed_dim"]) != cov["dim"]:
            raise VislangError(f"model.embed_dim={kwargs['embed_dim']} but the word vectors have {cov['dim']} "
                               "dimensions; remove model.embed_dim.")
        if "embed_dim" in _entry(cfg).parameters():
            kwargs["embed_dim"] = cov["dim"]
    model = create_model(cfg.model.name, num_classes=len(info["classes"]), vocab_size=info["vocab_size"], **kwargs)
    if cov and not cfg.data.embeddings.trainable and hasattr(model, "freeze_embeddings"):
        model.freeze_embeddings()
    weights = None
    if cfg.train.class_weights == "balanced":
        counts = torch.tensor(info["class_counts"]["train"], dtype=torch.float).clamp(min=1)
        weights = counts.sum() / (len(counts) * counts)
    return ClassificationTask(model, cfg, len(info["classes"]), transform=None, class_weights=weights)


def prepare(task: ClassificationTask, dm: Any) -> None:
    """Copy the pretrained word vectors (if any) into the new model's embedding."""
    if dm.vectors is not None and hasattr(task.model, "set_pretrained"):
        task.model.set_pretrained(torch.from_numpy(dm.vectors))


def evaluate_run(run_dir: Path, splits: list[str] | None = None, checkpoint: str = "best",
                 dm: Any = None, light: bool = False) -> dict[str, Any]:
    """Metrics, predictions (with the texts) and plots per split, then explain/words.html for eval.split
    (``light``: metrics and predictions only)."""
    from vislang.evaluate import evaluate_run as _evaluate
    from vislang.explain.text import write_explanations
    from vislang.run import load_run

    run_dir = Path(run_dir)
    loaded = load_run(run_dir, checkpoint, device=None)  # scored on the GPU where there is one
    cfg, _, task = loaded
    if dm is None:
        dm = make_datamodule(cfg)
        dm.setup("test")
    outputs: dict[str, Any] = {}
    metrics = _evaluate(run_dir, splits, checkpoint=checkpoint, dm=dm, light=light, loaded=loaded, outputs=outputs)
    split = (splits or [cfg.eval.split])[-1]
    if cfg.eval.explain and split in dm.split_sizes and not light:
        write_explanations(run_dir, task, dm, split, n=cfg.eval.explain, ig_steps=cfg.eval.ig_steps,
                           predictions=outputs.get(split))
    return metrics


def predict_texts(run_dir: Path, texts: list[str], top_k: int = 5, top_words: int = 5,
                  ig_steps: int = 32) -> list[dict[str, Any]]:
    """Per text: the top-k (class, probability) and the words that mattered most for the top class
    (attention weights for attention models, else integrated-gradients attributions)."""
    from vislang.data.text_datamodule import TokenStore, encoder_from_info
    from vislang.explain.text import explain_batch
    from vislang.run import load_run

    _, info, task = load_run(Path(run_dir), None)  # the checkpoint the run's metrics are for
    enc = encoder_from_info(info)
    ids, lengths = TokenStore(enc.encode(texts), enc.pad_id).gather(torch.arange(len(texts)))
    with torch.no_grad():
        probs = task.model(ids, lengths).float().softmax(-1)
    expl = explain_batch(task.model, enc, ids, lengths, probs.argmax(-1), ig_steps=ig_steps, texts=texts)
    names = info["class_names"]
    out = []
    for i, p in enumerate(probs):
        top = p.topk(min(top_k, len(names)))
        words = expl[i]["attention"] or expl[i]["ig"]
        ranked = sorted(words, key=lambda tw: -abs(tw[1]))[:top_words]
        out.append({"text": texts[i], "top": [(names[j], float(v)) for v, j in zip(top.values, top.indices)],
                    "words": ranked, "by": "attention" if expl[i]["attention"] else "integrated gradients"})
    return out


def predict_cli(run_dir: Path, inputs: list[Path], *, texts: list[str], top_k: int, beam: int, console: Any) -> None:
    """``vislang predict RUN --text "..."`` (repeatable) or files of one text per line."""
    from rich.markup import escape

    from vislang.errors import VislangError

    texts = list(texts)
    for path in inputs:
        if not Path(path).is_file():
            raise VislangError(f"Text file {path} does not exist (give texts with --text \"...\" or files of one text per line).")
        texts += [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise VislangError('Give texts to classify: vislang predict RUN --text "a sentence" (repeatable), or a file of lines.')
    for i, t in enumerate(texts):
        if not t.strip():
            raise VislangError(f"Text {i + 1} is empty.")
    for r in predict_texts(run_dir, texts, top_k=top_k):
        console.print(f"[bold]{escape(r['text'])}[/]", soft_wrap=True)
        for name, p in r["top"]:
            console.print(f"  {p:7.2%}  {escape(name)}")
        words = ", ".join(f"{escape(w)} ({v:+.2f})" for w, v in r["words"])
        console.print(f"  words ({r['by']}): {words}", soft_wrap=True)
