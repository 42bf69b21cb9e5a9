"""Training-step throughput of a pretrained timm backbone (fine-tuning) under the settings that matter on a GPU.

For one backbone at its input size, times forward + backward + AdamW step on a batch already on the
device, upscaled from 32x32 by vislang's batched preprocessing (as a CIFAR fine-tuning run does), for
each combination of memory format (channels_last or not), deterministic algorithms (on/off, what
``train.deterministic`` picks) and cuDNN autotuning; then prints the slowest kernels of the slowest
setting (torch.profiler), so that a slow path is named rather than guessed. Run::

    python benchmarks/backbone_speed.py --backbone tf_efficientnet_lite0 --batch 128
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from vislang.models.backbones import image_preprocessing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="top kernels of the slowest setting")
    args = ap.parse_args()

    import timm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" or device.type == "cpu" else torch.float16
    pre = image_preprocessing({"input_size": (3, args.size, args.size), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                               "interpolation": "bicubic"}).to(device)
    x8 = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def time_it(fn) -> float:
        for _ in range(args.warmup):
            fn()
        sync()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_pre = time_it(lambda: pre(x8))
    print(f"device {device}  {torch.__version__}  batch {args.batch}  {args.size}px")
    print(f"preprocess (32->{args.size} bicubic): {args.batch / t_pre:,.0f} img/s")

    results = []
    slowest = None
    for cl, det, bench in itertools.product((True, False), (True, False), (False, True)):
        torch.use_deterministic_algorithms(det, warn_only=True)
        torch.backends.cudnn.deterministic = det
        torch.backends.cudnn.benchmark = bench
        model = timm.create_model(args.backbone, pretrained=False, num_classes=10).to(device)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt, cl=cl) -> None:
            x = pre(x8)
            if not cl:
                x = x.contiguous()
            with torch.autocast(device.type, dtype=dtype):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def fwd(model=model, cl=cl) -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                x = pre(x8)
                model(x if cl else x.contiguous())

        t_train, t_fwd = time_it(step), time_it(fwd)
        results.append((cl, det, bench, args.batch / t_train, args.batch / t_fwd))
        print(f"channels_last={cl!s:5} deterministic={det!s:5} cudnn.benchmark={bench!s:5}  "
              f"train {args.batch / t_train:8,.0f} img/s   forward {args.batch / t_fwd:8,.0f} img/s", flush=True)
        if slowest is None or t_train > slowest[0]:
            slowest = (t_train, step, (cl, det, bench))

    if args.profile and slowest is not None:
        from torch.profiler import ProfilerActivity, profile

        cl, det, bench = slowest[2]
        torch.use_deterministic_algorithms(det, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = det, bench
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(2):
                slowest[1]()
            sync()
        key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(f"slowest setting: channels_last={cl} deterministic={det} cudnn.benchmark={bench}")
        print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
