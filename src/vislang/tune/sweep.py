"""``vislang sweep CONFIG``: hyperparameter search with Optuna over any key of the experiment file.

The experiment's ``sweep:`` section declares it::

    sweep:
      metric: val/acc            # objective: a per-epoch validation metric (history.csv) or a metrics.json
                                 #   summary key such as test/accuracy; default: the task's monitor
      direction: maximize        # default from the metric (losses and errors are minimised)
      n_trials: 20
      sampler: tpe               # tpe | random | grid (grid: every param a choice or an int range)
      pruning: true              # stop bad trials early from their per-epoch validation metric
      pruner: median             # median | halving (asynchronous successive halving) | hyperband
      space:
        train.lr: {type: loguniform, low: 0.001, high: 0.3}
        model.dropout: {type: uniform, low: 0.0, high: 0.5}
        train.epochs: {type: int, low: 5, high: 20, step: 5}
        train.optimizer: [sgd, adam]          # a bare list is a choice

Each trial is a normal run in ``<output_dir>/<name>_sweep/trials/trial_<n>``. The study lives in
SQLite (``<name>_sweep/study.db``) unless ``--storage`` gives another SQLAlchemy URL, so an interrupted
sweep started again continues: finished trials are kept and a trial whose process died is retried
with the same parameters. Several processes (``--worker``) can share one study; for SQLite a file
lock makes "count the trials, start one" atomic, so workers never run more than ``n_trials``.
The result: ``best_config.yaml`` (a ready recipe) and ``sweep_report.html``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import optuna
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vislang.errors import VislangError
from vislang.io import atomic_write_json

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SweepParam(BaseModel):
    """One dimension of the search space."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: list[Any] | None = None

    def check(self, key: str) -> None:
        if self.type == "choice":
            if not self.values:
                raise ValueError(f"{key}: a choice needs a non-empty 'values' list")
            return
        if self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{key}: {self.type} needs low <= high")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"{key}: loguniform needs low > 0")

    def grid(self, key: str) -> list[Any]:
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise VislangError(f"sweep.space.{key}: the grid sampler needs a choice (values: [...]) or an int range, "
                           f"not {self.type}.")

    def probe_values(self) -> list[Any]:
        """Values that exercise the config validation: each choice, or both ends of a range."""
        if self.type == "choice":
            return list(self.values or [])
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]


class SweepSpec(BaseModel):
    """The ``sweep:`` section of an experiment file."""

    model_config = ConfigDict(extra="forbid")
    metric: str | None = Field(None, description="objective; default: the task's checkpoint monitor")
    direction: Literal["maximize", "minimize"] | None = None
    n_trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruning: bool = True
    pruner: Literal["median", "halving", "hyperband"] = "median"
    prune_startup_trials: int = Field(5, ge=0, description="median: trials that are never pruned")
    prune_warmup_epochs: int = Field(1, ge=0, description="median: epochs a trial trains before it may be pruned")
    study_name: str | None = None
    space: dict[str, SweepParam]

    @field_validator("space", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"type": "choice", "values": p} if isinstance(p, list) else p for k, p in v.items()}
        return v


def parse_spec(cfg: Any, source: str = "<config>") -> SweepSpec:
    if not cfg.sweep:
        raise VislangError(f"{source} has no 'sweep:' section; add one with a search space (see vislang sweep --help).")
    try:
        spec = SweepSpec.model_validate(cfg.sweep)
        if not spec.space:
            raise ValueError("space is empty: name at least one config key to search")
        for key, p in spec.space.items():
            p.check(key)
    except (ValidationError, ValueError) as err:
        raise VislangError(f"Invalid sweep section in {source}: {err}") from None
    return spec


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    from vislang.config import apply_override

    apply_override(raw, f"{key}={json.dumps(value)}")  # JSON is YAML: the value keeps its type


def trial_config(base: dict[str, Any], params: dict[str, Any], name: str, output_dir: Path | str,
                 source: str = "<sweep>") -> Any:
    """The validated experiment of one trial (base config with ``params`` set, no sweep section)."""
    from vislang.config import build_config
    from vislang.tasks import task_spec

    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_key(raw, key, value)
    raw.update(name=name, output_dir=str(output_dir), sweep=None)
    cfg = build_config(raw, source)
    task_spec(cfg.task).check_config(cfg)  # model keys are free-form: checked against the model factory
    return cfg


def validate_space(cfg: Any, spec: SweepSpec, source: str) -> None:
    """Every key of the space must exist in the config model and accept the values it will get."""
    base = cfg.to_dict()
    for key, p in spec.space.items():
        if key.split(".")[0] in ("name", "output_dir", "sweep", "task"):
            raise VislangError(f"sweep.space.{key}: '{key.split('.')[0]}' cannot be swept.")
        for value in p.probe_values():
            try:
                trial_config(base, {key: value}, "probe", "probe", source)
            except VislangError as err:
                raise VislangError(f"sweep.space key '{key}' (value {value!r}) is not valid for this experiment:\n"
                                   f"{err}") from None


def config_digest(base: dict[str, Any], spec: SweepSpec) -> str:
    """Identifies the experiment a study belongs to (a worker with another config is refused)."""
    payload = {k: v for k, v in base.items() if k not in ("sweep", "output_dir")}
    payload["space"] = {k: p.model_dump() for k, p in spec.space.items()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PruningCallback(L.Callback):
    """Reports the monitored validation metric to the trial after every validation and stops the run
    when the pruner says so (the same thing optuna-integration's Lightning callback does)."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        epochs_done = trainer.current_epoch + 1  # the step Optuna sees: epochs trained so far
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=epochs_done)
        if epochs_done < (trainer.max_epochs or 0) and self.trial.should_prune():  # never after the last epoch
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned after epoch {epochs_done}")


def objective_value(run_dir: Path, metric: str, direction: str) -> float:
    """The trial's value: the best per-epoch value of ``metric`` (history.csv), or its metrics.json summary value."""
    from vislang.callbacks import read_history

    history = read_history(run_dir / "history.csv")
    values = [row[metric] for row in history if row.get(metric) is not None]
    if values:
        return max(values) if direction == "maximize" else min(values)
    summary = json.loads((run_dir / "metrics.json").read_text()).get("summary", {})
    if metric in summary:
        return float(summary[metric])
    known = sorted({k for row in history for k in row} | set(summary))
    raise VislangError(f"sweep.metric '{metric}' is neither logged per epoch nor in metrics.json; "
                       f"available: {', '.join(known)}.")


# ------------------------------------------------------------------------------------------ study


def sweep_dir(cfg: Any) -> Path:
    return Path(cfg.output_dir) / f"{cfg.name}_sweep"


def _storage(url: str) -> optuna.storages.BaseStorage:
    kwargs = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus its ``study.stop()`` once the grid is exhausted: trials here run through
    ask/tell (outside ``study.optimize``, where stop() is an error) and the sweep's own budget, capped at
    the grid size, already ends the study."""

    def after_trial(self, study: optuna.Study, trial: Any, state: TrialState, values: Any) -> None:
        return None


def _sampler(spec: SweepSpec, seed: int | None) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        return _GridSampler({k: p.grid(k) for k, p in spec.space.items()}, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if not spec.pruning:
        return optuna.pruners.NopPruner()
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=spec.prune_startup_trials,
                                       n_warmup_steps=spec.prune_warmup_epochs)


def _suggest(trial: optuna.Trial, key: str, p: SweepParam) -> Any:
    if p.type == "choice":
        return trial.suggest_categorical(key, p.values)
    if p.type == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    if p.type == "loguniform":
        return trial.suggest_float(key, p.low, p.high, log=True)
    return trial.suggest_float(key, p.low, p.high, step=p.step)


def _sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


@dataclass
class SweepResult:
    study: optuna.Study
    directory: Path
    best_config: Path | None
    report: Path | None
    wall_time_s: float


class Sweep:
    """One process's part in a study: start trials until the study has ``n_trials`` of them."""

    def __init__(self, cfg: Any, spec: SweepSpec, *, storage: str | None, worker: bool, source: str) -> None:
        self.cfg, self.spec, self.source = cfg, spec, source
        from vislang.tasks import task_spec

        self.metric = spec.metric or task_spec(cfg.task).default_monitor
        from vislang.tasks.classification import metric_mode

        self.direction = spec.direction or ("minimize" if metric_mode(self.metric) == "min" else "maximize")
        self.dir = sweep_dir(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = storage or f"sqlite:///{(self.dir / 'study.db').resolve()}"
        self.base = cfg.to_dict()
        self.name = spec.study_name or cfg.name
        self.n_trials = spec.n_trials
        if spec.sampler == "grid":
            self.n_trials = min(self.n_trials, math.prod(len(p.grid(k)) for k, p in spec.space.items()))
        lock = _sqlite_path(self.url)
        from filelock import FileLock

        self.lock = FileLock(str(lock) + ".lock") if lock else nullcontext()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.study = self._open(worker)

    def _open(self, worker: bool) -> optuna.Study:
        storage = _storage(self.url)
        digest = config_digest(self.base, self.spec)
        self.seed = None if worker else self.cfg.seed  # workers draw different random streams
        sampler, pruner = _sampler(self.spec, self.seed), _pruner(self.spec)
        if worker:
            try:
                study = optuna.load_study(study_name=self.name, storage=storage, sampler=sampler, pruner=pruner)
            except KeyError:
                raise VislangError(f"No study '{self.name}' in {self.url}; start it first with "
                                   f"vislang sweep {self.source} --storage {self.url} (without --worker).") from None
        else:
            study = optuna.create_study(study_name=self.name, storage=storage, sampler=sampler, pruner=pruner,
                                        direction=self.direction, load_if_exists=True)
        known = study.user_attrs.get("config_digest")
        if known is None:
            study.set_user_attr("config_digest", digest)
            study.set_user_attr("metric", self.metric)
        elif known != digest:
            raise VislangError(f"Study '{self.name}' in {self.url} was made from a different experiment or search "
                               "space; give another sweep.study_name (or --storage) for this one.")
        return study

    def counts(self) -> tuple[int, int]:
        trials = self.study.get_trials(deepcopy=False)
        return (sum(t.state in FINISHED for t in trials), sum(t.state == TrialState.RUNNING for t in trials))

    def _retry_dead(self) -> None:
        """Trials left RUNNING by a process of this host that no longer exists: fail them and queue
        their parameters again, so a killed sweep loses nothing when started again."""
        host = socket.gethostname()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(t.user_attrs.get("worker", ""))
            o_host, _, pid = owner.rpartition(":")
            if o_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})

    def next_trial(self) -> optuna.Trial | None:
        """Atomically (file lock, for SQLite) check the budget and start a trial; None when none is left."""
        with self.lock:
            self._retry_dead()
            done, running = self.counts()
            if done + running >= self.n_trials:
                return None
            if self.seed is not None and self.spec.sampler != "grid":
                # seeded by the trial's number: a resumed sweep samples what an uninterrupted one would have
                number = len(self.study.get_trials(deepcopy=False))
                self.study.sampler = _sampler(self.spec, self.seed * 1_000_003 + number)
            trial = self.study.ask()
            trial.set_user_attr("worker", self.owner)
        return trial

    def run_trial(self, trial: optuna.Trial) -> None:
        from vislang.run import train

        params = {k: _suggest(trial, k, p) for k, p in self.spec.space.items()}
        cfg = trial_config(self.base, params, f"trial_{trial.number:03d}", self.dir / "trials", self.source)
        run_dir = Path(cfg.output_dir) / cfg.name
        trial.set_user_attr("run_dir", str(run_dir))
        try:  # the callback also records every trial's curve (with pruning off, its pruner never prunes)
            run_dir = train(cfg, quiet=True, callbacks=[PruningCallback(trial, self.metric)], light=True)
            value = objective_value(run_dir, self.metric, self.direction)
        except optuna.TrialPruned:
            _mark_run(run_dir, "pruned")
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        except Exception:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        except BaseException:  # interrupted: fail it and queue the same parameters for the next start
            self.study.tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            raise
        self.study.tell(trial, value)

    def run(self, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        done, _ = self.counts()
        bar = tqdm(total=self.n_trials, initial=min(done, self.n_trials), desc=f"sweep {self.name}", unit="trial",
                   disable=not progress, dynamic_ncols=True)
        while (trial := self.next_trial()) is not None:
            self.run_trial(trial)
            done, _ = self.counts()
            bar.n = min(done, self.n_trials)
            best = _best(self.study)
            bar.set_postfix_str(f"best {self.metric}={best.value:.4f}" if best else "")
            bar.refresh()
        bar.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_run(run_dir: Path, status: str) -> None:
    path = run_dir / "run.json"
    if path.is_file():
        info = json.loads(path.read_text())
        info["status"] = status
        atomic_write_json(path, info)


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def run_sweep(cfg: Any, *, storage: str | None = None, worker: bool = False, n_trials: int | None = None,
              source: str = "<config>", progress: bool = True) -> SweepResult:
    """Run (or join, or resume) the sweep of ``cfg``; write the best recipe and the sweep report."""
    spec = parse_spec(cfg, source)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says what matters
    if n_trials is not None:
        spec.n_trials = n_trials
    validate_space(cfg, spec, source)
    t0 = time.perf_counter()
    sweep = Sweep(cfg, spec, storage=storage, worker=worker, source=source)
    sweep.run(progress)
    wall = time.perf_counter() - t0
    from vislang.tune.sweep_report import write_best_config, write_sweep_report

    best = write_best_config(sweep)
    report = write_sweep_report(sweep)
    return SweepResult(sweep.study, sweep.dir, best, report, wall)
