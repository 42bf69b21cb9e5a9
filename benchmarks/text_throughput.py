"""Training throughput (sentences/s) of vislang's TextCNN and BiLSTM versus a plain PyTorch loop.

Both paths train the same architecture (same sizes, Adam, fp32, same batch size, same threads) on the
same SST-2 training phrases tokenized by vislang:

- **vislang**: ``vislang train`` itself (Lightning, length-bucketed batches padded only to their own
  longest text; the LSTM runs on packed sequences), sentences/s read from the run's history.csv;
- **plain**: what a notebook does: every text padded to the dataset's longest, a shuffled
  ``DataLoader(TensorDataset)``, ``nn.LSTM`` over the padded tensor (last time step of each direction)
  or a Kim CNN with max over all positions, a hand-written loop.

Each path runs ``--epochs`` epochs and reports its best epoch (the machine is shared; see README).

    python benchmarks/text_throughput.py [--sentences 20000] [--epochs 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "textcnn": {"name": "textcnn", "embed_dim": 100, "widths": [3, 4, 5], "maps": 100, "dropout": 0.5},
    "bilstm": {"name": "lstm", "embed_dim": 100, "hidden_size": 128, "bidirectional": True, "pooling": "last"},
}


class PlainCNN(nn.Module):
    def __init__(self, vocab: int, dim: int = 100, maps: int = 100, widths=(3, 4, 5), classes: int = 2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, maps, w) for w in widths)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(maps * len(widths), classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids).transpose(1, 2)
        return self.fc(self.drop(torch.cat([torch.relu(c(x)).amax(-1) for c in self.convs], 1)))


class PlainBiLSTM(nn.Module):
    def __init__(self, vocab: int, dim: int = 100, hidden: int = 128, classes: int = 2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.drop_in = nn.Dropout(0.2)
        self.rnn = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(self.drop_in(self.emb(ids)))
        return self.fc(self.drop(torch.cat([h[-2], h[-1]], 1)))


def config(model: str, n: int, epochs: int, batch_size: int, out: Path):
    from vislang.config import build_config

    return build_config({
        "name": f"bench_{model}", "task": "text_classification", "seed": 0, "output_dir": str(out),
        "data": {"dataset": "sst2", "subset": {"train": n}, "val_fraction": 0.02, "batch_size": batch_size},
        "model": MODELS[model], "train": {"epochs": epochs, "lr": 1e-3, "precision": "32"},
        "eval": {"split": "dev", "explain": 0},
    })


def vislang_rate(cfg) -> float:
    from vislang.run import train

    run = train(cfg, quiet=True)
    with (run / "history.csv").open() as fh:
        return max(float(r["images_per_s"]) for r in csv.DictReader(fh))


def plain_rate(model_name: str, dm, epochs: int, batch_size: int) -> float:
    store = dm.stores["train"]
    ids, _ = store.gather(torch.arange(len(store)))  # every text padded to the longest
    data = TensorDataset(ids, dm.labels["train"])
    torch.manual_seed(0)
    vocab = len(dm.encoder.vocab)
    model = PlainCNN(vocab) if model_name == "textcnn" else PlainBiLSTM(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best = 0.0
    for _ in range(epochs):
        loader = DataLoader(data, batch_size=batch_size, shuffle=True)
        t0, seen = time.perf_counter(), 0
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            seen += len(y)
        best = max(best, seen / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=20000, help="SST-2 training phrases used")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    os.environ.setdefault("VISLANG_MIRROR", str(ROOT.parent / "shared" / "data"))
    from vislang.tasks.text import make_datamodule

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            cfg = config(name, args.sentences, args.epochs, args.batch_size, Path(tmp))
            dm = make_datamodule(cfg)
            dm.setup("fit")
            lengths = dm.stores["train"].lengths.float()
            fill = lengths.mean() / lengths.max()
            v = vislang_rate(cfg)
            p = plain_rate(name, dm, args.epochs, args.batch_size)
            rows.append((name, v, p, float(fill)))
            print(f"{name}: vislang {v:,.0f} sentences/s, plain {p:,.0f} sentences/s, {v / p:.2f}x "
                  f"(mean length / max length = {fill:.2f})", flush=True)
    print(f"\nSST-2 training, {args.sentences:,} phrases, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"fp32, best of {args.epochs} epochs")
    print("| model | vislang (bucketed, packed) | plain (padded to max) | speed-up |")
    print("| --- | --- | --- | --- |")
    for name, v, p, _ in rows:
        print(f"| {name} | {v:,.0f} | {p:,.0f} | {v / p:.2f}x |")


if __name__ == "__main__":
    main()
