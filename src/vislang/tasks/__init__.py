"""Tasks: what ``task:`` in an experiment file selects.

Each task is one module exposing the same small interface, so training (:func:`vislang.run.train`),
``load_run``, ``evaluate`` and ``predict`` are written once for all of them::

    check_config(cfg)                    fail fast on a bad model name/option, before any data work
    make_datamodule(cfg) -> dm           a LightningDataModule; after setup() it has ``split_sizes``
    data_info(dm) -> dict                facts a trained model needs (data.json); predict reads only this
    summary(info) -> str                 one line about the data for the start-of-run message
    build_task(cfg, info) -> module      the LightningModule (model + loss + metrics)
    prepare(task, dm)                    data-dependent initialisation of a new run (may do nothing)
    evaluate_run(run_dir, splits, checkpoint, dm, light=False) -> metrics dict (writes metrics.json etc.;
        light: numbers only, no plots or explanations)
    default_monitor                      the metric that picks the best checkpoint when the config has none
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vislang.errors import VislangError, did_you_mean

TASK_MODULES = {
    "image_classification": "vislang.tasks.image",
    "text_classification": "vislang.tasks.text",
    "captioning": "vislang.tasks.captioning",
}


def task_spec(task: str) -> ModuleType:
    """The module implementing ``task`` (see this package's docstring for its interface)."""
    if task not in TASK_MODULES:
        raise VislangError(f"Unknown task '{task}'.{did_you_mean(task, TASK_MODULES)} Tasks: {', '.join(TASK_MODULES)}.")
    return importlib.import_module(TASK_MODULES[task])
