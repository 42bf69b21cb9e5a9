"""Which words mattered: attention weights (attention models) and integrated-gradients token attributions
(Captum's LayerIntegratedGradients over the embedding layer, every text model), written as an HTML
page with each word shaded by its weight, correct and wrong predictions side by side.

The integrated-gradients baseline is the all-padding text of the same length (embedding 0 for the word
models; [PAD] between [CLS] and [SEP] for the transformer), so a token's attribution is its share of
``logit(text) - logit(baseline)`` for the explained class (completeness, Sundararajan et al. 2017).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from torch import nn

from vislang.errors import VislangError
from vislang.io import atomic_write_text

METHODS = ("attention", "ig")


def token_attributions(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor,
                       special: torch.Tensor | None = None, pad_id: int = 0, steps: int = 32,
                       return_delta: bool = False) -> Any:
    """Integrated-gradients attribution of each token ``[B, T]`` (0 at padding) towards ``target``.

    With ``return_delta`` also the completeness error per text: sum of attributions minus
    ``f(text) - f(baseline)`` (small when ``steps`` is large enough).
    """
    model.eval()
    special = torch.zeros_like(ids, dtype=torch.bool) if special is None else special
    baseline = torch.where(special, ids, torch.full_like(ids, pad_id))
    lig = LayerIntegratedGradients(lambda i, n: model(i, n).float(), model.embedding_layer())
    attr, delta = lig.attribute(ids, baselines=baseline, target=target, additional_forward_args=(lengths,),
                                n_steps=steps, internal_batch_size=max(1, 256 // max(1, len(ids))) * len(ids),
                                return_convergence_delta=True)
    scores = attr.sum(-1).detach()
    scores = scores * (torch.arange(ids.shape[1])[None, :] < lengths[:, None])
    return (scores, delta.detach()) if return_delta else scores


def _words(enc: Any, ids: list[int], values: list[float], special: list[bool],
           shown: list[str] | None = None) -> list[tuple[str, float]]:
    """(word, value) pairs without special tokens; word pieces (##x) are joined and their values summed.
    ``shown``: the tokens as written (out-of-vocabulary words instead of <unk>), when aligned with ``ids``."""
    out: list[tuple[str, float]] = []
    tokens = shown if shown is not None and len(shown) == len(ids) else enc.tokens(ids)
    for tok, v, s in zip(tokens, values, special):
        if s:
            continue
        if tok.startswith("##") and out:
            out[-1] = (out[-1][0] + tok[2:], out[-1][1] + v)
        else:
            out.append((tok, v))
    return out


def explain_batch(model: nn.Module, enc: Any, ids: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor,
                  ig_steps: int = 32, methods: tuple[str, ...] = METHODS,
                  texts: list[str] | None = None) -> list[dict[str, Any]]:
    """Per text: ``attention`` (word, weight) pairs or None, and ``ig`` (word, attribution) pairs;
    ``texts`` (the raw texts) lets out-of-vocabulary words show as written."""
    special = enc.special_mask(ids)
    att = None
    if "attention" in methods:
        with torch.no_grad():
            _, att = model.forward_with_attention(ids, lengths)
    ig = token_attributions(model, ids, lengths, target, special, enc.pad_id, ig_steps) if "ig" in methods else None
    out = []
    for i in range(len(ids)):
        n = int(lengths[i])
        row, sp = ids[i, :n].tolist(), special[i, :n].tolist()
        shown = enc.display(texts[i]) if texts is not None else None
        out.append({
            "attention": _words(enc, row, att[i, :n].tolist(), sp, shown) if att is not None else None,
            "ig": _words(enc, row, ig[i, :n].tolist(), sp, shown) if ig is not None else [],
        })
    return out


# ---------------------------------------------------------------------------------------------
# the HTML page

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:1.5em}
.item{border:1px solid #ddd;border-radius:6px;padding:.6em;margin-bottom:.8em}
.meta{font-size:.85em;color:#555;margin-bottom:.3em}.line{line-height:1.9}
.w{padding:.1em .15em;border-radius:3px}.k{font-size:.75em;color:#888;margin-right:.4em}"""


def _shade(words: list[tuple[str, float]], signed: bool) -> str:
    peak = max((abs(v) for _, v in words), default=0.0) or 1.0
    spans = []
    for w, v in words:
        a = min(1.0, abs(v) / peak) * 0.85
        color = f"rgba(220,50,40,{a:.2f})" if v >= 0 or not signed else f"rgba(40,90,220,{a:.2f})"
        if not signed:
            color = f"rgba(40,160,70,{a:.2f})"
        spans.append(f'<span class="w" style="background:{color}" title="{v:+.4f}">{html.escape(w)}</span>')
    return " ".join(spans)


def _item(r: dict[str, Any]) -> str:
    lines = [f'<div class="meta">true <b>{html.escape(r["true"])}</b> · predicted <b>{html.escape(r["pred"])}</b> '
             f'({r["prob"]:.1%})</div>']
    if r["attention"] is not None:
        lines.append(f'<div class="line"><span class="k">attention</span>{_shade(r["attention"], False)}</div>')
    if r["ig"]:
        lines.append(f'<div class="line"><span class="k">IG</span>{_shade(r["ig"], True)}</div>')
    return '<div class="item">' + "".join(lines) + "</div>"


def render_page(title: str, correct: list[dict[str, Any]], wrong: list[dict[str, Any]]) -> str:
    """The explanation page: correct predictions on the left, wrong ones on the right."""
    legend = ("Integrated gradients towards the predicted class: <span style='background:rgba(220,50,40,.6)'>for</span> "
              "/ <span style='background:rgba(40,90,220,.6)'>against</span>; attention weight: "
              "<span style='background:rgba(40,160,70,.6)'>green</span>. Hover a word for its value.")
    col = "".join
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2><p>{legend}</p><div class='cols'>"
            f"<div><h3>correct ({len(correct)})</h3>{col(_item(r) for r in correct)}</div>"
            f"<div><h3>wrong ({len(wrong)})</h3>{col(_item(r) for r in wrong)}</div></div></body></html>")


def _explain_rows(task: Any, enc: Any, ids: torch.Tensor, lengths: torch.Tensor, probs: torch.Tensor,
                  targets: list[int] | None, names: list[str], ig_steps: int, methods: tuple[str, ...],
                  texts: list[str], batch: int = 8) -> list[dict[str, Any]]:
    rows = []
    pred = probs.argmax(-1)
    for s in range(0, len(ids), batch):
        sl = slice(s, s + batch)
        n = int(lengths[sl].max())
        for j, e in enumerate(explain_batch(task.model, enc, ids[sl, :n], lengths[sl], pred[sl], ig_steps, methods,
                                            texts[sl])):
            i = s + j
            rows.append({**e, "pred": names[pred[i]], "prob": float(probs[i, pred[i]]),
                         "true": names[targets[i]] if targets is not None else "?",
                         "correct": targets is not None and targets[i] == int(pred[i])})
    return rows


def write_explanations(run_dir: Path, task: Any, dm: Any, split: str, n: int = 24, ig_steps: int = 32,
                       methods: tuple[str, ...] = METHODS, out_dir: Path | None = None,
                       predictions: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Explain up to ``n`` texts of ``split`` (half correct, half wrong, seeded sample) into explain/words.html.
    ``predictions``: the split's ``(probs, targets)`` when the caller has just computed them (evaluation);
    otherwise the split is predicted here."""
    from vislang.evaluate import predict_split

    if predictions is None:  # on the task's device (the GPU after training)
        predictions = predict_split(task, dm.dataloader(split))
    probs_np, targets = predictions
    task = task.cpu()  # the sample is explained on the CPU, where its token tensors are built
    pred = probs_np.argmax(1)
    rng = np.random.default_rng(dm.seed)
    right, wrong = np.flatnonzero(pred == targets), np.flatnonzero(pred != targets)
    k_wrong = min(len(wrong), n // 2)
    k_right = min(len(right), n - k_wrong)
    pick = np.concatenate([rng.permutation(right)[:k_right], rng.permutation(wrong)[:k_wrong]]).astype(int)
    ids, lengths = dm.stores[split].gather(torch.from_numpy(pick))
    rows = _explain_rows(task, dm.encoder, ids, lengths, torch.from_numpy(probs_np[pick]),
                         [int(t) for t in targets[pick]], dm.class_names, ig_steps, methods,
                         [dm.texts(split)[i] for i in pick])
    out = Path(out_dir) if out_dir else Path(run_dir) / "explain"
    title = f"{Path(run_dir).name}: which words mattered ({split} split, {len(rows)} texts)"
    path = out / "words.html"
    atomic_write_text(path, render_page(title, [r for r in rows if r["correct"]], [r for r in rows if not r["correct"]]))
    return path


def explain_run(run_dir: Path, *, inputs: list[Path] | None = None, methods: list[str] | None = None,
                split: str | None = None, top_k: int = 24, out_dir: Path | None = None, checkpoint: str = "best",
                progress: bool = True) -> list[Path]:
    """``vislang explain RUN`` for text runs: words.html for ``top_k`` texts of ``split`` (default
    eval.split), or for the lines of ``inputs`` files (no true label: shown with the prediction only)."""
    from vislang.data.text_datamodule import TokenStore, encoder_from_info
    from vislang.run import load_run
    from vislang.tasks.text import make_datamodule

    chosen = tuple(methods or METHODS)
    for m in chosen:
        if m not in METHODS:
            raise VislangError(f"Text explanations are {', '.join(METHODS)}; got '{m}'.")
    cfg, info, task = load_run(Path(run_dir), checkpoint)
    if inputs:
        texts = [ln.strip() for p in inputs for ln in Path(p).read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not texts:
            raise VislangError("The input files hold no text lines.")
        enc = encoder_from_info(info)
        ids, lengths = TokenStore(enc.encode(texts), enc.pad_id).gather(torch.arange(len(texts)))
        with torch.no_grad():
            probs = task.model(ids, lengths).float().softmax(-1)
        rows = _explain_rows(task, enc, ids, lengths, probs, None, info["class_names"], cfg.eval.ig_steps, chosen,
                             texts)
        out = Path(out_dir) if out_dir else Path(run_dir) / "explain"
        path = out / "words.html"
        atomic_write_text(path, render_page(f"{Path(run_dir).name}: which words mattered", rows, []))
        return [path]
    dm = make_datamodule(cfg)
    dm.setup("test")
    return [write_explanations(Path(run_dir), task, dm, split or cfg.eval.split, n=top_k, ig_steps=cfg.eval.ig_steps,
                               methods=chosen, out_dir=out_dir)]
