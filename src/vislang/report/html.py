"""``run_dir/report.html``: one self-contained page per run, for every task, read from the run directory.

Sections (each only when the run has something for it): overview, data summary (class counts, and
counts before/after label mapping when the task records them), learning curves, metrics, per-class
table, confusion matrices, ROC / precision-recall curves, explanations (``explain/*.png`` and the
HTML pages text runs write there, embedded as ``srcdoc``), caption galleries and attention maps,
other plots, and the config. Images are base64-embedded: no external URL, the file opens offline.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from vislang.io import atomic_write_text

log = logging.getLogger("vislang.report")

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".gif": "image/gif"}
IMAGE_EXT = tuple(MIME)
COUNT_TITLES = {"class_counts": "class counts per split", "label_counts_raw": "label counts before label_map",
                "label_counts": "label counts after label_map"}


@dataclass
class Section:
    id: str
    title: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def _read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def image_block(paths: list[Path], heading: str = "", width: int | None = None) -> dict[str, Any] | None:
    images = [{"name": p.name, "mime": MIME[p.suffix.lower()], "width": width,
               "data": base64.b64encode(p.read_bytes()).decode("ascii")}
              for p in paths if p.is_file() and p.stat().st_size > 0]
    return {"kind": "images", "heading": heading, "images": images} if images else None


def _table(header: list[str], rows: list[list[Any]], heading: str = "") -> dict[str, Any] | None:
    if not rows:
        return None
    return {"kind": "table", "heading": heading, "header": header, "rows": [[_fmt(c) for c in r] for r in rows]}


def _add(section: Section, *blocks: dict[str, Any] | None) -> None:
    section.blocks += [b for b in blocks if b]


# -------------------------------------------------------------------------------------- sections


def _overview(run_dir: Path, cfg: dict[str, Any], run: dict[str, Any], metrics: dict[str, Any]) -> Section:
    s = Section("overview", "Overview")
    model = cfg.get("model", {}) or {}
    facts = [("task", cfg.get("task")), ("model", model.get("name")), ("status", run.get("status")),
             ("parameters", run.get("params")), ("epochs", run.get("epochs_done")),
             ("training time (s)", run.get("train_time_s")), ("device", run.get("accelerator")),
             ("precision", run.get("precision")), ("CPU threads", run.get("cpu_threads")),
             ("started", run.get("started")), ("finished", run.get("finished")), ("seed", cfg.get("seed"))]
    _add(s, _table(["", "value"], [[k, v] for k, v in facts if v is not None]))
    return s


def _count_tables(key: str, value: Any, names: list[str]) -> list[dict[str, Any] | None]:
    """A table for a ``{split: [count per class]}`` or ``{split: {label: count}}`` entry of data.json."""
    if not isinstance(value, dict) or not value:
        return []
    splits = list(value)
    first = value[splits[0]]
    title = COUNT_TITLES.get(key, key.replace("_", " "))
    if isinstance(first, list) and all(isinstance(v, list) for v in value.values()):
        n = max(len(v) for v in value.values())
        labels = names if len(names) == n else [str(i) for i in range(n)]
        rows = [[labels[i], *[v[i] if i < len(v) else "" for v in value.values()]] for i in range(n)]
        rows.append(["total", *[sum(v) for v in value.values()]])
        return [_table(["class", *splits], rows, title)]
    if all(isinstance(v, dict) for v in value.values()):
        labels = list(dict.fromkeys(lbl for v in value.values() for lbl in v))
        rows = [[lbl, *[value[sp].get(lbl, 0) for sp in splits]] for lbl in labels]
        return [_table(["label", *splits], rows, title)]
    if all(isinstance(v, (int, float)) for v in value.values()):
        return [_table(["label", "count"], [[k, v] for k, v in value.items()], title)]
    return []


def _data(info: dict[str, Any]) -> Section:
    s = Section("data", "Data")
    names = info.get("class_names") or info.get("classes") or []
    facts = []
    for key, value in info.items():
        if "count" in key or key in ("classes", "class_names", "split_sizes", "mean", "std"):
            continue
        if isinstance(value, (str, int, float, bool)) or (isinstance(value, list) and len(value) <= 8
                                                          and all(not isinstance(v, (dict, list)) for v in value)):
            facts.append([key.replace("_", " "), value if not isinstance(value, list) else " x ".join(map(str, value))])
        elif isinstance(value, dict) and value and all(isinstance(v, (str, int, float)) for v in value.values()) \
                and len(value) <= 12:
            facts.append([key.replace("_", " "), ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())])
    sizes = info.get("split_sizes") or {}
    if sizes:
        facts.insert(0, ["split sizes", ", ".join(f"{k} {v:,}" for k, v in sizes.items())])
    if names:
        facts.insert(0, ["classes", f"{len(names)}"])
    _add(s, _table(["", "value"], facts))
    for key, value in info.items():
        if "count" in key:
            _add(s, *_count_tables(key, value, names))
    return s


def _split_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in metrics.items() if k != "summary" and isinstance(v, dict)}


def _metrics(metrics: dict[str, Any]) -> Section:
    s = Section("metrics", "Metrics")
    splits = _split_metrics(metrics)
    keys = list(dict.fromkeys(k for m in splits.values() for k, v in m.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)))
    _add(s, _table(["metric", *splits], [[k, *[m.get(k) for m in splits.values()]] for k in keys]))
    return s


def _per_class(metrics: dict[str, Any]) -> Section:
    s = Section("per-class", "Per-class results")
    for split, m in _split_metrics(metrics).items():
        rows = m.get("per_class")
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            header = list(rows[0])
            _add(s, _table(header, [[r.get(h) for h in header] for r in rows], f"{split}"))
    return s


def _images_section(sid: str, title: str, groups: list[tuple[str, list[Path]]], width: int | None = None) -> Section:
    s = Section(sid, title)
    for heading, paths in groups:
        _add(s, image_block(paths, heading, width))
    return s


def _explanations(explain_dir: Path, used: set[Path]) -> Section:
    s = Section("explanations", "Explanations")
    files = sorted(explain_dir.glob("*")) if explain_dir.is_dir() else []
    kinds = [("Attributions (saliency, integrated gradients, Grad-CAM)", "attribution"),
             ("Layer activations", "activations"), ("Maximally activating images", "max_activating"),
             ("Errors", "errors"), ("Attention", "attention")]
    for heading, prefix in kinds:
        paths = [p for p in files if p.suffix.lower() in IMAGE_EXT and p.name.startswith(prefix) and p not in used]
        used.update(paths)
        _add(s, image_block(paths, heading))
    rest = [p for p in files if p.suffix.lower() in IMAGE_EXT and p not in used]
    used.update(rest)
    _add(s, image_block(rest, "Other explanations" if s.blocks else ""))
    for page in (p for p in files if p.suffix.lower() in (".html", ".htm")):
        _add(s, {"kind": "html", "name": page.name, "html": _inline_page(page)})
    return s


def _inline_page(page: Path) -> str:
    """An explanation page as iframe ``srcdoc``, its local images inlined so the report stays self-contained."""
    html = page.read_text(errors="replace")

    def inline(m: re.Match[str]) -> str:
        target = (page.parent / m.group(2)).resolve()
        if target.suffix.lower() in MIME and target.is_file():
            data = base64.b64encode(target.read_bytes()).decode("ascii")
            return f'{m.group(1)}"data:{MIME[target.suffix.lower()]};base64,{data}"'
        return m.group(0)

    return re.sub(r'(src=)"(?!data:|https?:)([^"]+)"', inline, html)


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.csv rows as floats (as vislang.callbacks.read_history, without importing Lightning)."""
    import csv

    if not path.is_file():
        return []
    with path.open() as fh:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(fh)]


def metric_mode(metric: str) -> str:
    """'min' for losses and errors, else 'max' (the rule of vislang.tasks.classification.metric_mode)."""
    return "min" if any(w in metric for w in ("loss", "err")) else "max"


def build_sections(run_dir: Path) -> tuple[list[Section], dict[str, Any]]:
    """Every non-empty section of a run's report, and the raw config."""
    from vislang.report import plots

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    info = _read_json(run_dir / "data.json") or {}
    run = _read_json(run_dir / "run.json") or {}
    metrics = _read_json(run_dir / "metrics.json") or {}
    plot_dir = run_dir / "plots"
    if not (plot_dir / "loss.png").is_file() and (run_dir / "history.csv").is_file():
        plots.learning_curves(read_history(run_dir / "history.csv"), plot_dir)
    pngs = sorted(p for p in plot_dir.glob("*") if p.suffix.lower() in IMAGE_EXT) if plot_dir.is_dir() else []
    used: set[Path] = set()

    def take(pattern: str) -> list[Path]:
        found = [p for p in pngs if re.match(pattern, p.name) and p not in used]
        used.update(found)
        return found

    curves = take(r"(loss|accuracy|.*curve|.*history|.*_metrics|lr)\b.*")
    conf = take(r"confusion")
    roc, pr = take(r"roc"), take(r"pr_|precision_recall")
    galleries = [("Best / median / worst captions", take(r"gallery")), ("Attention maps", take(r"attention"))]
    sections = [
        _overview(run_dir, cfg, run, metrics),
        _data(info),
        _images_section("curves", "Learning curves", [("", curves)], width=620),
        _metrics(metrics),
        _per_class(metrics),
        _images_section("confusion", "Confusion matrix", [("", conf)], width=720),
        _images_section("roc", "ROC and precision-recall curves", [("ROC", roc), ("Precision-recall", pr)], width=560),
        _images_section("captions", "Captions", galleries),
        _explanations(run_dir / "explain", used),
        _images_section("other-plots", "Other plots", [("", [p for p in pngs if p not in used])]),
    ]
    if cfg:
        sections.append(Section("config", "Config", [{"kind": "pre", "text": yaml.safe_dump(cfg, sort_keys=False)}],
                                note=f"Re-create the run with: vislang train {run_dir / 'config.yaml'}"))
    return [s for s in sections if s.blocks], cfg


def render(template: str, **context: Any) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("vislang.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    return env.get_template(template).render(**context)


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``output``) from the run directory alone; returns its path."""
    from vislang import __version__
    from vislang.errors import VislangError

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise VislangError(f"{run_dir} is not a vislang run directory (it has no config.yaml).")
    sections, cfg = build_sections(run_dir)
    model = (cfg.get("model") or {}).get("name", "")
    html = render("report.html.j2", title=f"vislang run {run_dir.name}", sections=sections,
                  subtitle=f"{cfg.get('task', '')} · {model} · {run_dir.resolve()}", version=__version__,
                  run_dir=str(run_dir.resolve()), written=time.strftime("%Y-%m-%d %H:%M"))
    path = Path(output) if output else run_dir / "report.html"
    atomic_write_text(path, html)
    return path


def write_report_safely(run_dir: Path) -> Path | None:
    """:func:`write_report`, but a failure only warns (used at the end of training: the run stays intact)."""
    try:
        return write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the trained run matters more than its report
        log.warning("could not write the report of %s (%s: %s); try again with: vislang report %s",
                    run_dir, type(err).__name__, err, run_dir)
        return None
