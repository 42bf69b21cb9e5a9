"""Pixel attributions of an image classifier with Captum, and the two sanity checks that keep them honest.

``attribute(model, x, target, method)`` returns one map per image ``[B, H, W]``:

- ``saliency``: absolute input gradient, max over channels (Simonyan et al. 2014);
- ``integrated_gradients``: IG from a black (all-zero, i.e. mean-valued after normalisation) baseline,
  summed over channels (Sundararajan et al. 2017);
- ``gradcam``: Grad-CAM on the model's declared ``gradcam_layer`` (or any given layer), ReLU'd and
  upsampled to the input size (Selvaraju et al. 2017).

Sanity checks (Adebayo et al. 2018; Sundararajan et al. 2017): :func:`model_randomisation_correlation`
and :func:`ig_completeness_error`.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from scipy.stats import spearmanr
from torch import nn

from vislang.errors import VislangError

ATTRIBUTION_METHODS = ("saliency", "integrated_gradients", "gradcam")


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The model's declared Grad-CAM layer (models/image.py), or a clear error for models without one."""
    layer = getattr(model, "gradcam_layer", None)
    if layer is None:
        raise VislangError(f"{type(model).__name__} has no convolutional layer for Grad-CAM (an MLP?); "
                           "use --method saliency or integrated_gradients.")
    return layer


def attribute(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int, method: str,
              layer: nn.Module | None = None, ig_steps: int = 64) -> torch.Tensor:
    """Attribution maps ``[B, H, W]`` (float32, CPU) of ``target`` logits for a prepared batch ``x``."""
    model.eval()
    x = x.detach().float().contiguous().requires_grad_()
    if method == "saliency":
        attr = Saliency(model).attribute(x, target=target, abs=True)
        return attr.amax(1).detach()
    if method == "integrated_gradients":
        ig = IntegratedGradients(model)
        attr = ig.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=ig_steps,
                            internal_batch_size=max(len(x), 64))
        return attr.sum(1).detach()
    if method == "gradcam":
        cam = LayerGradCam(model, layer or gradcam_layer(model))
        attr = cam.attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")[:, 0].detach()
    raise VislangError(f"Unknown attribution method '{method}'; choose one of {', '.join(ATTRIBUTION_METHODS)}.")


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with every parameter re-initialised (Adebayo's full model randomisation)."""
    clone = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in clone.modules():
        if hasattr(module, "reset_parameters") and module is not clone:
            module.reset_parameters()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return clone.eval()


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation between matching maps of two ``[B, H, W]`` batches (one per image).

    A constant map (e.g. an all-zero Grad-CAM) ranks nothing: its correlation counts as 0."""
    out = []
    for u, v in zip(a, b):
        u, v = u.flatten().numpy(), v.flatten().numpy()
        out.append(0.0 if u.min() == u.max() or v.min() == v.max() else float(spearmanr(u, v)[0]))
    return np.array(out)


def model_randomisation_correlation(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str,
                                    seed: int = 0, ig_steps: int = 64) -> np.ndarray:
    """Per-image Spearman correlation between the explanations of ``model`` and of a randomised copy.

    An explanation that depends on what the model learned gives a low correlation; one that only
    reflects the input (an edge detector) stays high (Adebayo et al. 2018, "Sanity Checks for
    Saliency Maps"). For Grad-CAM the randomised copy's own declared layer is used.
    """
    random_model = randomised_copy(model, seed)
    trained = attribute(model, x, target, method, ig_steps=ig_steps)
    randomised = attribute(random_model, x, target, method, ig_steps=ig_steps)
    return rank_correlation(trained, randomised)


def ig_completeness_error(model: nn.Module, x: torch.Tensor, target: torch.Tensor, n_steps: int = 256) -> np.ndarray:
    """Relative completeness error of integrated gradients per image:
    ``|sum(attributions) - (f(x) - f(baseline))| / |f(x) - f(baseline)|`` with a zero baseline."""
    model.eval()
    x = x.float().contiguous()
    baseline = torch.zeros_like(x)
    attr = IntegratedGradients(model).attribute(x, baselines=baseline, target=target, n_steps=n_steps,
                                                internal_batch_size=256)
    with torch.no_grad():
        idx = torch.as_tensor(target).reshape(-1, 1).expand(len(x), 1)
        diff = (model(x).float().gather(1, idx) - model(baseline).float().gather(1, idx))[:, 0]
    total = attr.flatten(1).sum(1)
    return ((total - diff).abs() / diff.abs().clamp_min(1e-8)).detach().numpy()
