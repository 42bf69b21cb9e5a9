"""The model registry: ``@register_model(name, task=...)`` on a factory, ``create_model(name, **cfg)``.

A factory's keyword arguments are the model's config; unknown keys raise a
:class:`~vislang.errors.VislangError` naming the key and the closest valid one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from vislang.registry import Registry

MODELS = Registry("model")


def register_model(name: str, task: str = "image") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` for ``task`` ('image', 'text', 'caption')."""
    return MODELS.register(name, task=task)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with config ``kwargs`` (e.g. ``num_classes=10``)."""
    return MODELS.create(name, **kwargs)


def list_models(task: str | None = None) -> list[str]:
    """Names of the registered models, all of them or those for one ``task``."""
    return MODELS.names() if task is None else MODELS.names(task=task)
