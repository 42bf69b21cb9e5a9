"""Beam-search captioning speed: vislang's batched beam search vs one image at a time, same trained model.

Three ways to caption the same test images with beam size 3, all on the CPU, all from the cached
frozen-encoder features of a trained run (so only decoding is timed):

* **vislang batched**: ``vislang.models.decoding.beam_search`` over ``--batch`` images at once
  (every image's beams advance together; the decoder's key/value cache makes a step cost one word);
* **vislang, one image at a time**: the same function called with one image per call;
* **straightforward**: the textbook loop a notebook writes: for each image, keep the k best
  hypotheses in a Python list and, at every step, run the decoder on each hypothesis' whole prefix.

    python benchmarks/caption_decode.py runs/flickr8k_transformer_scst [--images 300] [--batch 100] [--beam 3]

Prints captions/s of each and the speed-ups, and how often the captions agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vislang.models.decoding import END, START, beam_search


def straightforward_beam(model, pooled: torch.Tensor, grid: torch.Tensor, k: int, max_length: int) -> list[int]:
    """One image; hypotheses in a list; every step re-runs the decoder on each full prefix."""
    beams = [([START], 0.0)]
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_length + 1):
        candidates = []
        for seq, score in beams:
            logits, _ = model((pooled, grid), torch.tensor([seq]))
            logp = logits[0, -1].float()
            logp[[0, START]] = float("-inf")
            logp = logp.log_softmax(-1)
            top = logp.topk(k)
            candidates += [(seq + [int(w)], score + float(p)) for p, w in zip(top.values, top.indices)]
        candidates.sort(key=lambda c: -c[1])
        beams = []
        for seq, score in candidates[:k]:
            (finished if seq[-1] == END else beams).append((seq, score))
        if not beams:
            break
    best = max(finished + beams, key=lambda c: c[1])[0][1:]
    return best[: best.index(END)] if END in best else best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a trained captioning run directory")
    parser.add_argument("--images", type=int, default=300, help="test images to caption")
    parser.add_argument("--batch", type=int, default=100, help="images per batched call")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--naive-images", type=int, default=60, help="images for the (slow) straightforward loop")
    args = parser.parse_args()

    from vislang.data.caption_datamodule import CaptionDataModule
    from vislang.run import load_run
    from vislang.tasks.captioning import vocab_of

    cfg, info, task = load_run(args.run)
    dm = CaptionDataModule(cfg, cfg.seed, progress=False, vocab=vocab_of(info))
    dm.setup("test")
    pooled, grid = (x[: args.images].float() for x in dm.inputs["test"])
    model, k, max_len = task.model.eval(), args.beam, cfg.eval.max_length or cfg.data.max_length
    n = len(pooled)
    torch.set_grad_enabled(False)
    print(f"{args.run}: {cfg.model.name}, {n} test images, beam {k}, max {max_len} words, "
          f"{torch.get_num_threads()} CPU threads")

    beam_search(model, (pooled[:4], grid[:4]), k, max_len)  # warm-up
    t0 = time.perf_counter()
    batched = torch.cat([torch.nn.functional.pad(s, (0, max_len + 1 - s.shape[1])) for s in (
        beam_search(model, (pooled[i:i + args.batch], grid[i:i + args.batch]), k, max_len)[0]
        for i in range(0, n, args.batch))])
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    single = [beam_search(model, (pooled[i:i + 1], grid[i:i + 1]), k, max_len)[0][0] for i in range(n)]
    t_single = time.perf_counter() - t0

    m = min(n, args.naive_images)
    t0 = time.perf_counter()
    naive = [straightforward_beam(model, pooled[i:i + 1], grid[i:i + 1], k, max_len) for i in range(m)]
    t_naive = (time.perf_counter() - t0) * n / m

    def words(row: torch.Tensor) -> list[int]:
        out = [int(w) for w in row if int(w) != 0]
        return out[: out.index(END)] if END in out else out

    same_single = sum(words(batched[i]) == words(single[i]) for i in range(n)) / n
    same_naive = sum(words(batched[i]) == naive[i] for i in range(m)) / m
    rate = {"batched": n / t_batched, "single": n / t_single, "naive": n / t_naive}
    print(f"vislang batched ({args.batch} images/call): {rate['batched']:8.1f} captions/s")
    print(f"vislang one image per call:        {rate['single']:8.1f} captions/s   "
          f"batched is {rate['batched'] / rate['single']:.1f}x faster; same captions {same_single:.0%}")
    print(f"straightforward per-image loop:    {rate['naive']:8.1f} captions/s   "
          f"batched is {rate['batched'] / rate['naive']:.1f}x faster; same captions {same_naive:.0%} "
          f"(timed on {m} images)")
    for i in range(3):
        print("  e.g.", task.vocab.decode(batched[i].tolist()))


if __name__ == "__main__":
    main()
