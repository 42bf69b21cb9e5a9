"""Explanations of a trained run, written as PNG/HTML files into ``run_dir/explain/``.

One module per task, each exposing the same entry point, so ``vislang explain RUN`` is written once::

    explain_run(run_dir, *, inputs, methods, layers, channels, split, top_k, out_dir) -> list[Path]

- :mod:`vislang.explain.image`: saliency, integrated gradients and Grad-CAM (Captum) overlaid on the
  input, layer activations, maximally activating dataset images (one pass, bounded-memory top-k,
  receptive-field patches) and error analysis.
- :mod:`vislang.explain.text`: word-level attributions (attention weights, integrated gradients).
- :mod:`vislang.explain.captions`: per-word attention maps of attention decoders.

The report (:mod:`vislang.report.html`) embeds whatever PNG/HTML these write, for every task.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from vislang.errors import VislangError

EXPLAINERS = {
    "image_classification": "vislang.explain.image",
    "text_classification": "vislang.explain.text",
    "captioning": "vislang.explain.captions",
}


def explain_run(run_dir: Path, **options: Any) -> list[Path]:
    """Explain the run at ``run_dir`` with its task's explainer; returns the files written.

    Options left at None take the task's default; options the task's explainer does not take (e.g.
    ``layers`` for text) are dropped when empty and rejected with a clear message when given.
    """
    from vislang.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise VislangError(f"{run_dir} is not a vislang run directory (it has no config.yaml).")
    task = load_config(run_dir / "config.yaml").task
    module_name = EXPLAINERS.get(task)
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        module = None
    fn = getattr(module, "explain_run", None)
    if fn is None:
        raise VislangError(f"Explanations for task '{task}' are not available in this version of vislang.")
    accepted = inspect.signature(fn).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    kwargs = {}
    for key, value in options.items():
        if value is None:  # not given: the task's own default applies
            continue
        if takes_all or key in accepted:
            kwargs[key] = value
        elif value not in (None, [], (), ""):
            flag = {"layers": "layer", "methods": "method"}.get(key, key).replace("_", "-")
            raise VislangError(f"--{flag} does not apply to {task} runs.")
    return fn(run_dir, **kwargs)
