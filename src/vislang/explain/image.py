"""``vislang explain RUN`` for image classifiers: every explanation as a PNG in ``run_dir/explain/``.

Methods (``--method``, any of; default all):

- ``saliency``, ``integrated_gradients`` (``ig``), ``gradcam``: attribution maps of the predicted class
  overlaid on the inputs → ``attributions.png``;
- ``activations``: feature maps of the chosen layers for the inputs → ``activations_<layer>.png``;
- ``max_activating``: the top-k images of the split for chosen channels of the chosen layers, shown as
  receptive-field patches → ``max_activating_<layer>.png`` (+ ``.json`` with every channel's top-k);
- ``errors``: the most confidently wrong predictions → ``errors_confident.png``, and the most confused
  class pairs with examples → ``errors_confused_pairs.png``.

Inputs are image files (``--inputs``) or, by default, one image per class from the split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vislang.errors import VislangError, did_you_mean
from vislang.explain import activations as act
from vislang.explain import figures
from vislang.explain.attributions import ATTRIBUTION_METHODS, attribute
from vislang.io import atomic_write_json

METHODS = (*ATTRIBUTION_METHODS, "activations", "max_activating", "errors")
ALIASES = {"ig": "integrated_gradients", "grad_cam": "gradcam", "grad-cam": "gradcam", "max": "max_activating",
           "maxact": "max_activating", "max-activating": "max_activating", "error": "errors", "all": "all"}


def parse_methods(methods: list[str] | None) -> list[str]:
    """Normalise ``--method`` values (comma lists and aliases allowed); default every method."""
    names = [m.strip().lower() for spec in methods or ["all"] for m in spec.split(",") if m.strip()]
    out: list[str] = []
    for name in names:
        name = ALIASES.get(name, name)
        if name == "all":
            out += [m for m in METHODS if m not in out]
        elif name in METHODS:
            out += [name] if name not in out else []
        else:
            raise VislangError(f"Unknown --method '{name}'.{did_you_mean(name, METHODS)} Methods: {', '.join(METHODS)}, all.")
    return out


def parse_channels(spec: str | list[int] | None, available: int) -> list[int] | None:
    """'0-7,12' → [0..7, 12]; None = default choice; checks the range against the layer's channels."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        chans: list[int] = []
        for part in spec.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise VislangError(f"--channels '{spec}': use numbers and ranges such as 0-7,12.")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            chans += list(range(lo, hi + 1))
    else:
        chans = [int(c) for c in spec]
    bad = [c for c in chans if not 0 <= c < available]
    if bad:
        raise VislangError(f"--channels {bad[:5]} out of range: the layer has channels 0-{available - 1}.")
    return chans


class ImageExplainer:
    """A trained run ready to explain: its model (float32, eval), eval transform, data and class names."""

    def __init__(self, run_dir: Path, split: str | None = None, checkpoint: str = "best") -> None:
        from vislang.run import load_run

        self.run_dir = Path(run_dir)
        self.cfg, self.info, self.task = load_run(self.run_dir, checkpoint)
        self.model = self.task.model.float().eval()
        self.names = list(self.info["class_names"])
        self.input_shape = tuple(self.info["input_shape"])
        self._dm: Any = None
        self.split = split

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` → the normalised float batch the model takes."""
        x = self.task.transform(images, train=False)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    @property
    def dm(self) -> Any:
        if self._dm is None:
            from vislang.tasks import task_spec

            self._dm = task_spec(self.cfg.task).make_datamodule(self.cfg)
            self._dm.setup("test")
            available = list(self._dm.split_sizes)
            if self.split is None:
                self.split = "val" if self._dm.split_sizes.get("val") else self.cfg.eval.split
            if self.split not in available:
                raise VislangError(f"Split '{self.split}' does not exist; this run's data has {', '.join(available)}.")
        return self._dm

    def layers(self, names: list[str] | None) -> dict[str, torch.nn.Module]:
        """Named layers to explain; default the model's Grad-CAM layer (or its last module)."""
        if not names:
            layer = getattr(self.model, "gradcam_layer", None)
            names = [act.layer_name_of(self.model, layer)] if layer is not None else [act.layer_names(self.model)[-1]]
        return {("gradcam_layer" if n == "gradcam" else n): act.resolve_layer(self.model, n) for n in names}

    # -- inputs -------------------------------------------------------------------------------

    def sample_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` images of the split, one per class in turn (deterministic), and their labels."""
        images, labels = self.dm.images[self.split], self.dm.labels[self.split]
        picks: list[int] = []
        per_class = [torch.nonzero(labels == c)[:, 0].tolist() for c in range(len(self.names))]
        depth = 0
        while len(picks) < min(n, len(labels)):
            row = [idx[depth] for idx in per_class if depth < len(idx)]
            if not row:
                break
            picks += row[: n - len(picks)]
            depth += 1
        idx = torch.tensor(picks, dtype=torch.long)
        return images[idx], labels[idx]

    def input_images(self, inputs: list[Path] | None, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if inputs:
            from vislang.evaluate import load_image_files

            missing = [str(p) for p in inputs if not Path(p).is_file()]
            if missing:
                raise VislangError(f"Image {missing[0]} does not exist.")
            return load_image_files(list(inputs), self.input_shape), None
        return self.sample_images(n)

    # -- explanations -------------------------------------------------------------------------

    def attributions(self, images: torch.Tensor, labels: torch.Tensor | None, methods: list[str],
                     out: Path, ig_steps: int = 64) -> Path:
        x = self.prepare(images).float()
        with torch.no_grad():
            probs = self.model(x).float().softmax(-1)
        pred = probs.argmax(1)
        maps = {m: attribute(self.model, x, pred, m, ig_steps=ig_steps) for m in methods}
        titles = []
        for i in range(len(images)):
            head = f"pred {self.names[pred[i]]} {probs[i, pred[i]]:.2f}"
            titles.append(head if labels is None else f"{self.names[labels[i]]} → {head[5:]}")
        return figures.attribution_grid(images, maps, titles, out / "attributions.png")

    def feature_maps(self, images: torch.Tensor, layers: dict[str, torch.nn.Module], out: Path) -> list[Path]:
        acts = act.activations(self.model, self.prepare(images[:6]), layers)
        paths = []
        for name, a in acts.items():
            if a.dim() != 4:
                raise VislangError(f"Layer '{name}' outputs {tuple(a.shape[1:])}, not feature maps; choose a "
                                   "convolutional layer for --method activations.")
            paths.append(figures.feature_maps(images[:6], a, out / f"activations_{_safe(name)}.png", name))
        return paths

    def max_activating(self, layers: dict[str, torch.nn.Module], channels: str | list[int] | None, k: int,
                       out: Path, progress: bool = True) -> list[Path]:
        from vislang.run import cpu_has_native_bf16

        dm = self.dm
        images = dm.images[self.split]
        tops = act.max_activating(self.model, dm.dataloader(self.split), self.prepare, layers, k=k,
                                  total=len(images), autocast=cpu_has_native_bf16(), progress=progress)
        paths = []
        for name, top in tops.items():
            n_channels = top.values.shape[0]
            chosen = parse_channels(channels, n_channels) or list(range(min(16, n_channels)))
            rf = act.receptive_field(self.model, layers[name], self.input_shape)
            w_map = top.spatial[-1] if top.spatial else 1
            rows = []
            for c in chosen:
                patches, captions = [], []
                for value, index, pos in zip(top.values[c].tolist(), top.index[c].tolist(), top.pos[c].tolist()):
                    y0, y1, x0, x1 = rf.box(pos // w_map, pos % w_map) if top.spatial else (0, None, 0, None)
                    patches.append(figures.to_hwc(images[index][:, y0:y1, x0:x1]))
                    captions.append(f"{value:.2f}")
                rows.append((f"ch {c}", patches, captions))
            title = (f"{name}: top-{k} of {len(images):,} {self.split} images per channel "
                     f"(receptive field {rf.height}x{rf.width} px)")
            paths.append(figures.max_activating_grid(rows, out / f"max_activating_{_safe(name)}.png", title))
            atomic_write_json(out / f"max_activating_{_safe(name)}.json", {
                "layer": name, "split": self.split, "k": k, "receptive_field": [rf.height, rf.width],
                "channels": {c: {"index": top.index[c].tolist(), "value": [round(v, 5) for v in top.values[c].tolist()]}
                             for c in range(n_channels)}})
        return paths

    def errors(self, out: Path, n_confident: int = 24, n_pairs: int = 6, per_pair: int = 6) -> list[Path]:
        """Most confidently wrong predictions, and the most confused class pairs with examples."""
        from sklearn.metrics import confusion_matrix

        from vislang.evaluate import predict_split

        probs, targets = predict_split(self.task, self.dm.dataloader(self.split))
        images = self.dm.images[self.split]
        pred, conf = probs.argmax(1), probs.max(1)
        wrong = np.flatnonzero(pred != targets)
        if len(wrong) == 0:
            return []
        order = wrong[np.argsort(-conf[wrong])][:n_confident]
        titles = [f"{self.names[targets[i]]} → {self.names[pred[i]]}\n{conf[i]:.2f}" for i in order]
        paths = [figures.image_gallery([images[i] for i in order], titles, out / "errors_confident.png",
                                       f"most confidently wrong on {self.split} ({len(wrong):,} errors "
                                       f"of {len(targets):,})")]
        cm = confusion_matrix(targets, pred, labels=np.arange(len(self.names)))
        np.fill_diagonal(cm, 0)
        flat = np.argsort(-cm, axis=None)[:n_pairs]
        pairs = []
        for t, p in zip(*np.unravel_index(flat, cm.shape)):
            if cm[t, p] == 0:
                break
            idx = np.flatnonzero((targets == t) & (pred == p))
            idx = idx[np.argsort(-conf[idx])][:per_pair]
            pairs.append((f"{self.names[t]} → {self.names[p]}\n({cm[t, p]} images)", [images[i] for i in idx],
                          [f"{conf[i]:.2f}" for i in idx]))
        paths.append(figures.pairs_gallery(pairs, out / "errors_confused_pairs.png",
                                           f"most confused class pairs on {self.split} (true → predicted)"))
        return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def explain_run(run_dir: Path, *, inputs: list[Path] | None = None, methods: list[str] | None = None,
                layers: list[str] | None = None, channels: str | list[int] | None = None, split: str | None = None,
                top_k: int = 9, n_images: int = 8, out_dir: Path | None = None, checkpoint: str = "best",
                ig_steps: int = 64, progress: bool = True) -> list[Path]:
    """Write the requested explanations of an image-classifier run; returns the files written."""
    chosen = parse_methods(methods)
    ex = ImageExplainer(Path(run_dir), split, checkpoint)
    out = Path(out_dir) if out_dir else ex.run_dir / "explain"
    out.mkdir(parents=True, exist_ok=True)
    named_layers = ex.layers(layers)  # validates --layer before any work
    if top_k < 1:
        raise VislangError("--top-k must be at least 1.")
    written: list[Path] = []
    attr_methods = [m for m in chosen if m in ATTRIBUTION_METHODS]
    if "gradcam" in attr_methods and getattr(ex.model, "gradcam_layer", None) is None:
        if methods:  # asked for explicitly
            raise VislangError(f"{ex.cfg.model.name} has no convolutional layer for Grad-CAM; use saliency or ig.")
        attr_methods.remove("gradcam")
    if attr_methods or "activations" in chosen:
        images, labels = ex.input_images(inputs, n_images)
        if attr_methods:
            written.append(ex.attributions(images, labels, attr_methods, out, ig_steps))
        if "activations" in chosen:
            written += ex.feature_maps(images, named_layers, out)
    if "max_activating" in chosen:
        written += ex.max_activating(named_layers, channels, top_k, out, progress=progress)
    if "errors" in chosen:
        written += ex.errors(out)
    return written
