"""One generic registry, used for datasets, models and (later) explainers, in the style of timm.

A factory is registered with a decorator; its keyword arguments are its config::

    @register_model("resnet", task="image")
    def resnet(num_classes: int, in_channels: int = 3, depth: int = 18, ...) -> nn.Module: ...

    create_model("resnet", num_classes=10, depth=34)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vislang.errors import VislangError, did_you_mean


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.factory) or "").split("\n\n")[0].replace("\n", " ")

    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.factory).parameters)

    def check_kwargs(self, kwargs: dict[str, Any], what: str) -> None:
        """Raise a clear error for keyword arguments the factory does not take."""
        params = self.parameters()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        for key in kwargs:
            if key not in params:
                raise VislangError(
                    f"{what} '{self.name}' has no option '{key}'.{did_you_mean(key, params)} "
                    f"Valid options: {', '.join(sorted(params))}."
                )


class Registry:
    """Maps names to factories. ``kind`` is used in error messages ('model', 'dataset')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, factory, meta)
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            known = sorted(self._entries)
            raise VislangError(
                f"Unknown {self.kind} '{name}'.{did_you_mean(name, known)} "
                f"Known {self.kind}s: {', '.join(known)}."
            )
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        entry = self.get(name)
        entry.check_kwargs(kwargs, self.kind.capitalize())
        return entry.factory(**kwargs)

    def names(self, **meta: Any) -> list[str]:
        """Registered names whose metadata matches every ``meta`` item given."""
        return sorted(
            n for n, e in self._entries.items() if all(e.meta.get(k) == v for k, v in meta.items())
        )

    def entries(self, **meta: Any) -> list[Entry]:
        return [self._entries[n] for n in self.names(**meta)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
