"""Standalone CIFAR-10 trial of ``fastnet`` on the CPU (plain PyTorch, no vislang trainer).

Decodes the JPEG archive once into a uint8 tensor (cached as a .pt file), augments whole batches
(random flip + random translate by up to ``--translate`` pixels, reflect padding), trains with
SGD-nesterov, label smoothing, a linear warm-up/decay schedule, bf16 autocast and channels_last,
and reports test accuracy (plain and with flip test-time augmentation) and time::

    python benchmarks/fastnet_trial.py --epochs 5 --widths 64 256 256
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from vislang.models import create_model

ARCHIVE = Path("/work/shared/data/cifar10-jpg.tar.gz")
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1) * 255


def load_cifar(cache: Path) -> dict[str, Tensor]:
    """{train,test}_{images,labels}: uint8 [N, 3, 32, 32] and int64 [N], decoded once and cached."""
    if cache.exists():
        return torch.load(cache)
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    names: dict[str, list[str]] = {"train": [], "test": []}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and member.name.endswith(".jpg") and len(parts) == 4:
                split, cls = parts[1], parts[2]
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                images[split].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                names[split].append(cls)
    classes = sorted(set(names["train"]))
    out = {}
    for split in ("train", "test"):
        out[f"{split}_images"] = torch.from_numpy(np.stack(images[split])).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_labels"] = torch.tensor([classes.index(c) for c in names[split]])
    torch.save(out, cache)
    return out


def normalize(images: Tensor) -> Tensor:
    """uint8 [N, 3, H, W] → float, per-channel standardised (contiguous NCHW)."""
    return (images.float() - MEAN) / STD


def augment(images: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Random horizontal flip and translation by up to ``pad`` pixels (reflect padding) of a batch.

    Both are one ``gather`` per axis over the whole batch; returns a channels_last tensor.
    """
    n, c, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None], torch.arange(w - 1, -1, -1), torch.arange(w))  # [n, w]
    if pad:
        images = nn.functional.pad(images, (pad,) * 4, mode="reflect")
        shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
        rows = shifts[0][:, None] + torch.arange(h)
        cols = cols + shifts[1][:, None]
        images = images.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    out = images.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    return out.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, tta: bool, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = normalize(images[i:i + batch]).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x).float()
            if tta:
                logits = logits + model(x.flip(3)).float()
        correct += (logits.argmax(1) == labels[i:i + batch]).sum().item()
    model.train()
    return correct / len(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.4, help="peak learning rate (mean loss)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.2)
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of steps warming up linearly")
    p.add_argument("--translate", type=int, default=2)
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256, 256])
    p.add_argument("--stem-width", type=int, default=24)
    p.add_argument("--no-whiten", action="store_true")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--train-subset", type=int, default=0, help="use only this many train images (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=0, help="print the loss every N steps (0: per epoch)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/vl_models/cifar10_u8.pt"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.perf_counter()
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    data = load_cifar(args.cache)
    train_x, train_y = data["train_images"], data["train_labels"]
    if args.train_subset:
        keep = torch.randperm(len(train_x), generator=gen)[:args.train_subset]  # the archive is class-sorted
        train_x, train_y = train_x[keep], train_y[keep]
    train_norm = normalize(train_x)  # decoded and normalised once (~600 MB fp32)
    print(f"data ready in {time.perf_counter() - t0:.1f}s: train {tuple(train_x.shape)}, test "
          f"{tuple(data['test_images'].shape)}; threads={torch.get_num_threads()}", flush=True)

    model = create_model("fastnet", num_classes=10, widths=args.widths, stem_width=args.stem_width)
    if not args.no_whiten:
        model.init_whitening(train_norm[torch.randperm(len(train_norm), generator=gen)[:5000]])
    model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train_norm) // args.batch
    total = int(args.epochs * steps_per_epoch)
    warm = max(1, int(args.warmup * total))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                          weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / (total - warm)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    autocast = nullcontext() if args.no_bf16 else torch.autocast("cpu", dtype=torch.bfloat16)
    print(f"{sum(q.numel() for q in model.parameters()) / 1e6:.2f}M params; {total} steps of {args.batch}",
          flush=True)

    step, t_train = 0, time.perf_counter()
    while step < total:
        perm = torch.randperm(len(train_norm), generator=gen)
        t_epoch, losses, correct = time.perf_counter(), [], 0
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[i * args.batch:(i + 1) * args.batch]
            x, y = augment(train_norm[idx], args.translate, gen), train_y[idx]
            with autocast:
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if args.log_every and step % args.log_every == 0:
                print(f"  step {step}/{total}  loss {loss.item():.3f}  {time.perf_counter() - t_epoch:.0f}s", flush=True)
            correct += (logits.argmax(1) == y).sum().item()
        seen = len(losses) * args.batch
        print(f"epoch {step / steps_per_epoch:5.2f}  loss {np.mean(losses):.3f}  train acc {correct / seen:.3f}  "
              f"{time.perf_counter() - t_epoch:6.1f}s  ({seen / (time.perf_counter() - t_epoch):.0f} img/s)",
              flush=True)
    train_s = time.perf_counter() - t_train
    acc = evaluate(model, data["test_images"], data["test_labels"], tta=False)
    acc_tta = evaluate(model, data["test_images"], data["test_labels"], tta=True)
    print(f"RESULT epochs={args.epochs} widths={args.widths} batch={args.batch} lr={args.lr}: test acc "
          f"{acc:.4f}, with flip TTA {acc_tta:.4f}; train {train_s:.0f}s, "
          f"total {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
