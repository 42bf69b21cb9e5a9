"""Maximally activating images over the 10,000 CIFAR-10 test images, for every channel of a layer.

Target: <= 60 s on a 2-core CPU for the ``cifar10_cnn`` recipe model, with memory bounded by k (the
running top-k is channels x k), not by the dataset. The model only needs to be trained briefly for
timing: by default one epoch on 5,000 training images (or pass ``--run`` with a trained run).

    python benchmarks/max_activations.py                # trains briefly, then times each conv stage
    python benchmarks/max_activations.py --run runs/cifar10_cnn --layer body.8

Prints: images/s, wall and CPU seconds of the one pass per layer (on a shared machine, CPU seconds / threads
is what the pass costs on an idle one), the top-k memory, the process's peak RSS
growth during the pass, and the time of the full ``vislang explain --method max_activating``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VISLANG_MIRROR", str(ROOT.parent / "shared" / "data"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_briefly(output_dir: Path) -> Path:
    from vislang.config import load_config
    from vislang.run import train

    cfg = load_config(ROOT / "configs" / "cifar10_cnn.yaml",
                      [f"output_dir={output_dir}", "train.epochs=1", "data.subset={train: 5000}",
                       "eval.split=val", "eval.tta_flip=false"])  # timing needs a trained model, not its test score
    t0 = time.perf_counter()
    run = train(cfg, quiet=True)
    print(f"trained {run} (1 epoch, 5,000 images) in {time.perf_counter() - t0:.0f} s")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a trained cifar10_cnn run (default: train one briefly)")
    ap.add_argument("--layer", action="append", help="layer(s) to time (default: the last conv of each stage)")
    ap.add_argument("--k", type=int, default=9)
    args = ap.parse_args()

    import torch

    from vislang.explain import activations as act
    from vislang.explain.image import ImageExplainer, explain_run
    from vislang.run import cpu_has_native_bf16

    run = args.run or train_briefly(Path(tempfile.mkdtemp(prefix="maxact-")))
    ex = ImageExplainer(run, split="test")
    n = len(ex.dm.images["test"])
    convs = [name for name, m in ex.model.named_modules() if type(m).__name__ == "ConvBNAct"]
    names = args.layer or [convs[i] for i in range(1, len(convs), 2)] or convs
    print(f"model {ex.cfg.model.name} {ex.cfg.model.kwargs().get('channels')}, {n:,} test images, k={args.k}, "
          f"{torch.get_num_threads()} threads, bf16 autocast: {cpu_has_native_bf16()}")
    print(f"{'layer':<10} {'channels':>8} {'map':>7} {'seconds':>8} {'CPU s':>7} {'images/s':>9} {'top-k MB':>9} "
          f"{'peak RSS +MB':>13}")
    for name in names:
        layers = {name: act.resolve_layer(ex.model, name)}
        before = peak_rss_mb()
        t0, c0 = time.perf_counter(), time.process_time()
        top = act.max_activating(ex.model, ex.dm.dataloader("test"), ex.prepare, layers, k=args.k, total=n,
                                 autocast=cpu_has_native_bf16(), progress=False)[name]
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        mem = sum(t.numel() * t.element_size() for t in (top.values, top.index, top.pos)) / 2**20
        c = top.values.shape[0]
        print(f"{name:<10} {c:>8} {'x'.join(map(str, top.spatial)):>7} {secs:>8.1f} {cpu:>7.1f} {n / secs:>9.0f} {mem:>9.3f} "
              f"{peak_rss_mb() - before:>13.0f}")
    deepest = names[-1]
    t0 = time.perf_counter()
    explain_run(run, methods=["max_activating"], layers=[deepest], split="test", top_k=args.k, progress=False)
    print(f"vislang explain --method max_activating --layer {deepest} --split test (pass, receptive field, "
          f"figure, json): {time.perf_counter() - t0:.1f} s → {run / 'explain'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
