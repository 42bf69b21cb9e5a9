"""CPU training-step throughput of the image models at 32x32 (images/s).

Times forward + backward + SGD step on tensors already in memory, after warm-up, for each model
preset, in fp32 and bf16 autocast, contiguous and channels_last::

    python benchmarks/model_speed.py --threads 2 --batch 512
    python benchmarks/model_speed.py --models fastnet airbench94 --modes fp32-cl bf16-cl

The numbers are the median over ``--steps`` timed steps. On a shared machine they are noisy:
re-run and compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from vislang.models import create_model

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {}),
    "cnn": ("cnn", {}),
    "vgg11": ("vgg", {"layout": "vgg11"}),
    "vgg16": ("vgg", {"layout": "vgg16"}),
    "resnet18": ("resnet", {"depth": 18}),
    "resnet18-half": ("resnet", {"depth": 18, "widths": [32, 64, 128, 256]}),
    "fastnet": ("fastnet", {}),
    "fastnet-narrow": ("fastnet", {"widths": [32, 64, 128]}),
    "fastnet-wide": ("fastnet", {"widths": [96, 192, 384]}),
    "fastnet-32-128-256": ("fastnet", {"widths": [32, 128, 256]}),
    "fastnet-s32": ("fastnet", {"stem_width": 32}),
    "fastnet-1conv": ("fastnet", {"convs_per_stage": 1, "widths": [64, 256, 512]}),
    "airbench94": ("fastnet", {"widths": [64, 256, 256]}),
    "resnet9": ("fastnet", {"widths": [128, 256, 512], "stem_width": 64, "stem_kernel": 3,
                            "convs_per_stage": [3, 1, 3], "residual": True, "activation": "relu",
                            "logit_scale": 0.125}),
}
MODES = ["fp32", "fp32-cl", "bf16", "bf16-cl"]


def step_times(model: nn.Module, batch: int, mode: str, steps: int, warmup: int) -> list[float]:
    """Seconds per training step (forward, backward, SGD step) for ``steps`` steps after ``warmup``."""
    channels_last = mode.endswith("-cl")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode.startswith("bf16") else nullcontext()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, batch={args.batch}, "
          f"mkldnn={torch.backends.mkldnn.is_available()}; images/s of training steps (median)")
    header = f"{'model':<20}{'params':>9}" + "".join(f"{m:>10}" for m in args.modes) + f"{'epoch(50k)':>12}"
    print(header)
    print("-" * len(header))
    for preset in args.models:
        name, cfg = PRESETS[preset]
        model = create_model(name, num_classes=10, **cfg)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rates = [args.batch / statistics.median(step_times(model, args.batch, m, args.steps, args.warmup))
                 for m in args.modes]
        print(f"{preset:<20}{params:>8.2f}M" + "".join(f"{r:>10.0f}" for r in rates)
              + f"{50_000 / max(rates):>11.0f}s", flush=True)


if __name__ == "__main__":
    main()
