"""Figures of a captioning run: per-word attention maps of attention decoders, the gallery of test
images with generated vs reference captions (best, median and worst by CIDEr-D), and the loss and
caption-metric curves. All are PNG files (``plots/`` during evaluation, ``explain/`` for
``vislang explain``), picked up by the HTML report.

``plots/gallery_{best,median,worst}.png`` · ``plots/attention_<image>.png`` ·
``plots/loss.png`` · ``plots/caption_metrics.png``
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vislang.errors import VislangError  # noqa: E402
from vislang.io import atomic_save  # noqa: E402
from vislang.report.plots import epoch_axis  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return path


def _show(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def gallery(rows: list[dict[str, Any]], out_dir: Path, per_panel: int = 6) -> list[Path]:
    """``gallery_best/median/worst.png``: images with the generated caption (and its CIDEr-D) above
    two of their references, chosen by per-image CIDEr-D."""
    if not rows or per_panel < 1:
        return []
    order = sorted(range(len(rows)), key=lambda i: rows[i]["scores"]["cider"])
    mid = max(0, len(order) // 2 - per_panel // 2)
    picks = {"best": order[::-1][:per_panel], "median": order[mid:mid + per_panel], "worst": order[:per_panel]}
    paths = []
    for name, idx in picks.items():
        cols = min(3, len(idx))
        nrows = -(-len(idx) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 5.2 * nrows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, i in zip(axes.flat, idx):
            r = rows[i]
            try:
                ax.imshow(_show(r["image"]))
            except OSError:
                pass
            refs = "\n".join(textwrap.fill("ref: " + c, 48) for c in r["references"][:2])
            gen = textwrap.fill(f"gen: {r['generated']}", 48)
            ax.set_title(f"{gen}\nCIDEr-D {r['scores']['cider']:.2f}", fontsize=9, loc="left", color="#1a4e8a")
            ax.text(0, -0.02, refs, transform=ax.transAxes, va="top", fontsize=8, color="#444")
        fig.suptitle(f"{name} captions by CIDEr-D", fontsize=12)
        paths.append(_save(fig, Path(out_dir) / f"gallery_{name}.png"))
    return paths


def caption_curves(history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``loss.png`` (train / val cross-entropy) and ``caption_metrics.png`` (val BLEU-4, CIDEr-D, SCST reward)."""
    if not history:
        return []
    epochs = [int(h["epoch"]) + 1 for h in history]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("train/loss", "-o"), ("val/loss", "-s")):
        pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, ms=3, label=key)
    epoch_axis(ax)
    ax.set_ylabel("loss (SCST epochs: policy loss)")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, Path(out_dir) / "loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("val/bleu4", "-o"), ("val/cider", "-s"), ("train/reward", "-^")):
        pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, ms=3, label=key)
    epoch_axis(ax)
    ax.set_ylabel("score (greedy captions of the val split)")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, Path(out_dir) / "caption_metrics.png"))
    return paths


def attention_maps(task: Any, images: list[Path], info: dict[str, Any], out_dir: Path, beam: int = 3,
                   prefix: str = "attention") -> list[Path]:
    """For each image: its beam-search caption, and for every word the decoder's attention over the
    encoder grid, upsampled onto the image (``<prefix>_<image stem>.png``)."""
    from vislang.data.store import load_image
    from vislang.models.decoding import START, decode

    if not task.model.has_attention:
        raise VislangError(f"Decoder '{task.cfg.model.name}' has no attention over the image; "
                           "attention maps need show_attend_tell or transformer.")
    _, h, w = info["input_shape"]
    positions = info["encoder"]["grid_shape"][0]
    side = int(round(positions ** 0.5))
    device = next(task.parameters()).device
    paths = []
    for path in images:
        try:
            arr = load_image(Path(path), size=(h, w), channels=3)
        except Exception as err:  # noqa: BLE001 - any decoder failure means the file is not an image
            raise VislangError(f"Cannot read image {path}: {type(err).__name__}: {err}") from None
        x = torch.from_numpy(arr[None]).to(device)
        with torch.no_grad():
            ids = decode(task.model, x, beam_size=beam, max_length=task.cfg.data.max_length)[0]
            words = [task.vocab.itos[i] for i in ids.tolist() if i not in (0,)]
            words = words[: words.index("<end>") + 1] if "<end>" in words else words
            prefix_ids = (torch.tensor([[START] + [task.vocab.stoi[t] for t in words[:-1]]], device=device)
                          if words else None)
            att = task.model.attention(x, prefix_ids) if prefix_ids is not None else None
        if att is None or side * side != positions:
            continue
        att = att[0].float().cpu().view(-1, side, side)
        up = torch.nn.functional.interpolate(att[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        n = len(words) + 1
        cols = min(6, n)
        nrows = -(-n // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.4 * nrows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        img = arr.transpose(1, 2, 0)
        axes.flat[0].imshow(img)
        axes.flat[0].set_title("image", fontsize=9)
        for k, word in enumerate(words):
            ax = axes.flat[k + 1]
            ax.imshow(img)
            a = up[k].numpy()
            ax.imshow(a / max(a.max(), 1e-9), cmap="jet", alpha=0.5)
            ax.set_title(word, fontsize=10)
        fig.suptitle(" ".join(w for w in words if w != "<end>"), fontsize=10)
        paths.append(_save(fig, Path(out_dir) / f"{prefix}_{Path(path).stem}.png"))
    return paths


def explain_run(run_dir: Path, *, inputs: list[Path] | None = None, split: str | None = None, top_k: int = 4,
                out_dir: Path | None = None, checkpoint: str = "best", **_: Any) -> list[Path]:
    """``vislang explain RUN [IMAGE...]``: per-word attention maps into ``RUN/explain/`` for the given
    images, or for the ``top_k`` first images of the evaluation split."""
    from vislang.run import load_run

    run_dir = Path(run_dir)
    cfg, info, task = load_run(run_dir, checkpoint)
    images = [Path(p) for p in inputs or []]
    for p in images:
        if not p.is_file():
            raise VislangError(f"Image {p} does not exist.")
    listed = run_dir / "captions.jsonl"
    if not images and listed.is_file() and split in (None, cfg.eval.split):
        import json

        rows = [json.loads(line) for line in listed.read_text().splitlines()[:top_k]]
        images = [Path(r["image"]) for r in rows if Path(r["image"]).is_file()]
    if not images:
        from vislang.data.caption_datamodule import CaptionDataModule
        from vislang.tasks.captioning import vocab_of

        dm = CaptionDataModule(cfg, cfg.seed, progress=False, vocab=vocab_of(info))
        dm.setup("test")
        split = split or cfg.eval.split
        if split not in dm.image_files:
            raise VislangError(f"Split '{split}' does not exist; this dataset has {', '.join(dm.image_files)}.")
        images = dm.image_files[split][:top_k]
    return attention_maps(task, images, info, Path(out_dir) if out_dir else run_dir / "explain",
                          beam=cfg.eval.beam)
