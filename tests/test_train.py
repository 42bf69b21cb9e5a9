"""End to end on real CIFAR-10 subsets: train, reproduce, resume after SIGKILL, evaluate, predict, CLI errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vislang.cli import app

runner = CliRunner()
SMALL = """\
name: small
seed: 3
data:
  dataset: cifar10
  subset: {{train: 600, test: 200}}
  batch_size: 64
  augment: {{crop_padding: 4, flip: true}}
model:
  name: cnn
  channels: [[16], [32], [64]]
train:
  epochs: {epochs}
  lr: 0.05
  threads: 2
"""


def write_config(folder: Path, epochs: int = 2) -> Path:
    path = folder / "small.yaml"
    path.write_text(SMALL.format(epochs=epochs) + f"output_dir: {folder / 'runs'}\n")
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vislang", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train")
    result = runner.invoke(app, ["train", str(write_config(folder))])
    assert result.exit_code == 0, result.output
    return folder / "runs" / "small"


def history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_run_directory_holds_everything(trained):
    for name in ("config.yaml", "data.json", "run.json", "history.csv", "metrics.json",
                 "predictions_test.csv", "predictions_val.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "plots/loss.png", "plots/accuracy.png", "plots/confusion_test.png", "plots/roc_test.png"):
        assert (trained / name).is_file(), name
    rows = history(trained)
    assert [int(float(r["epoch"])) for r in rows] == [0, 1]
    assert {"train/loss", "val/loss", "val/acc", "images_per_s"} <= set(rows[0])
    metrics = json.loads((trained / "metrics.json").read_text())
    test = metrics["test"]
    assert test["n"] == 200 and len(test["per_class"]) == 10
    assert sum(map(sum, test["confusion_matrix"])) == 200
    assert 0.15 < test["accuracy"] <= 1.0  # 10 classes: chance is 0.10
    assert 0.5 < test["roc_auc_ovr"] <= 1.0 and "top5_accuracy" in test and "f1_macro" in test
    info = json.loads((trained / "data.json").read_text())
    assert info["input_shape"] == [3, 32, 32] and info["split_sizes"]["test"] == 200


def test_same_config_and_seed_reproduce_the_run(trained):
    """Re-creating a run from its own config.yaml gives a new run dir with the same metrics."""
    result = runner.invoke(app, ["train", str(trained / "config.yaml")])
    assert result.exit_code == 0, result.output
    again = trained.with_name("small-2")
    assert (trained / "metrics.json").is_file() and again.is_dir()
    first, second = (json.loads((r / "metrics.json").read_text())["test"] for r in (trained, again))
    assert first["accuracy"] == second["accuracy"] and first["confusion_matrix"] == second["confusion_matrix"]
    assert [r["train/loss"] for r in history(trained)] == [r["train/loss"] for r in history(again)]


def test_evaluate_and_predict(trained, tmp_path):
    result = runner.invoke(app, ["evaluate", str(trained), "--split", "val", "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    assert "val" in json.loads((trained / "metrics.json").read_text())
    # two real CIFAR-10 test images straight from the mirror archive
    mirror = Path(os.environ["VISLANG_MIRROR"])
    images = []
    with tarfile.open(mirror / "cifar10-jpg.tar.gz") as tar:
        for member in tar:
            if "/test/" in member.name and member.name.endswith(".jpg"):
                out = tmp_path / Path(member.name).name
                out.write_bytes(tar.extractfile(member).read())
                images.append(out)
                if len(images) == 2:
                    break
    result = runner.invoke(app, ["predict", str(trained), *map(str, images), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    classes = json.loads((trained / "data.json").read_text())["class_names"]
    lines = [line for line in result.output.splitlines() if "%" in line]
    assert len(lines) == 6 and all(line.split()[-1] in classes for line in lines)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(images[0].read_bytes()[:40])  # a truncated JPEG
    result = runner.invoke(app, ["predict", str(trained), str(corrupt)])
    assert result.exit_code == 1 and "corrupt.jpg" in result.output


def test_a_split_is_scored_on_the_device_the_run_trains_on(trained, monkeypatch):
    """On a GPU machine evaluation runs on the GPU (it used to score every split on the CPU: minutes for
    CIFAR-10 at 224 px). No GPU here, so "meta" stands in for the device ``train.accelerator`` resolves to."""
    import vislang.evaluate as evaluate
    import vislang.run as run_mod

    monkeypatch.setattr(run_mod, "resolve_accelerator", lambda cfg: "meta")
    assert next(run_mod.load_run(trained, device=None)[2].parameters()).device.type == "meta"
    assert next(run_mod.load_run(trained)[2].parameters()).device.type == "cpu"  # predict/explain: the CPU

    class Scored(Exception):
        pass

    def spy(task, loader):
        raise Scored(next(task.parameters()).device.type)

    monkeypatch.setattr(evaluate, "predict_split", spy)
    with pytest.raises(Scored, match="meta"):
        evaluate.evaluate_run(trained, ["val"], light=True)


def test_resume_after_sigkill_mid_epoch(tmp_path):
    config = write_config(tmp_path, epochs=4)
    proc = subprocess.Popen([sys.executable, "-m", "vislang", "train", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    run = tmp_path / "runs" / "small"
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for an event (the first checkpoint), not timing anything
    assert last.exists(), "training never wrote its first checkpoint"
    proc.send_signal(signal.SIGKILL)  # now inside epoch 1
    proc.wait()
    assert (run / "config.yaml").is_file() and (run / "history.csv").is_file()
    result = cli("train", "--resume", str(run))
    assert result.returncode == 0, result.stderr
    assert [int(float(r["epoch"])) for r in history(run)] == [0, 1, 2, 3]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert not list(run.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "train.epoch=3"], "Did you mean 'epochs'"),
        (["--set", "model.name=resnett"], "Unknown model 'resnett'"),
        (["--set", "model.widht=3"], "no option 'widht'"),
        (["--set", "data.dataset=image_folder", "--set", "data.path=/no/such/folder"], "/no/such/folder"),
        (["--set", "data.dataset=cifar100"], "Unknown dataset 'cifar100'"),
        (["--set", "model.global_pool=false", "--set", "data.augment.crop_size=24"],  # a flattening head
         "model 'cnn' cannot train on data.augment.crop_size=24 windows"),
    ],
)
def test_cli_errors_are_one_clear_message(tmp_path, extra, expected):
    result = cli("train", str(write_config(tmp_path)), *extra)
    assert result.returncode != 0
    assert expected in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs" / "small" / "checkpoints").exists()


def test_progressive_crops_train_small_then_whole_and_evaluate_whole(tmp_path, monkeypatch):
    from vislang.data.augment import BatchTransform

    seen: list[tuple[int, tuple[int, int]]] = []
    geometric = BatchTransform.geometric

    def spy(self, x):
        out = geometric(self, x)
        seen.append((self.epoch, tuple(out.shape[-2:])))
        return out

    monkeypatch.setattr(BatchTransform, "geometric", spy)
    result = runner.invoke(app, ["train", str(write_config(tmp_path)), "--light", "--set", "data.augment.crop_size=24",
                                 "--set", "data.augment.crop_epochs=1"])
    assert result.exit_code == 0, result.output
    assert {size for epoch, size in seen if epoch == 0} == {(24, 24)}  # crops for the first crop_epochs ...
    assert {size for epoch, size in seen if epoch == 1} == {(32, 32)}  # ... then whole images
    metrics = json.loads((tmp_path / "runs" / "small" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 200 and metrics["test"]["accuracy"] > 0.2  # scored on whole 32x32 images


def test_resume_without_checkpoint_is_explained(tmp_path):
    run = tmp_path / "runs" / "empty"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "empty"}))
    result = cli("train", "--resume", str(run))
    assert result.returncode == 1 and "last.ckpt" in result.stderr and "Traceback" not in result.stderr


def test_ddp_on_two_cpu_processes_writes_one_run(tmp_path):
    """--devices 2: Lightning re-launches the command for rank 1; both ranks must share one run dir."""
    result = cli("train", str(write_config(tmp_path, epochs=1)), "--devices", "2", "--set", "train.threads=1")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["small"]
    run = tmp_path / "runs" / "small"
    assert json.loads((run / "run.json").read_text())["devices"] == 2
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == 200
    assert "error" not in result.stderr.lower()


def test_a_run_starts_from_an_earlier_runs_weights(trained, tmp_path):
    import torch

    def weights(run: Path, checkpoint: str = "last") -> dict:
        return torch.load(run / "checkpoints" / f"{checkpoint}.ckpt", map_location="cpu",
                          weights_only=False)["state_dict"]

    source = weights(trained, "best")  # what init_from=<run dir> starts from (best need not be the last epoch)
    # a learning rate of ~0 leaves what was copied in place: every tensor equals the earlier run's
    path = write_config(tmp_path, epochs=1)
    result = runner.invoke(app, ["train", str(path), "--light", "--set", "name=warm", "--set", f"model.init_from={trained}",
                                 "--set", "train.lr=1e-12", "--set", "train.weight_decay=0"])
    assert result.exit_code == 0, result.output
    warm = weights(tmp_path / "runs" / "warm")
    convs = [k for k in source if k.endswith("weight") and source[k].dim() == 4]
    assert convs and all(torch.allclose(warm[k], source[k], atol=1e-6) for k in convs)
    status = json.loads((tmp_path / "runs" / "warm" / "run.json").read_text())
    assert status["init_from"]["fresh"] == [] and status["init_from"]["checkpoint"].endswith("best.ckpt")
    # a wider last stage: its conv and the classifier cannot be copied, keep their fresh weights, and are listed
    result = runner.invoke(app, ["train", str(path), "--light", "--set", "name=wider", "--set", f"model.init_from={trained}",
                                 "--set", "model.channels=[[16],[32],[96]]", "--set", "train.lr=1e-12"])
    assert result.exit_code == 0, result.output
    init = json.loads((tmp_path / "runs" / "wider" / "run.json").read_text())["init_from"]
    assert init["fresh"] and init["loaded"] >= 2
    wider = weights(tmp_path / "runs" / "wider")
    assert torch.allclose(wider[convs[0]], source[convs[0]], atol=1e-6)  # the first conv still came across
    assert all(wider[k].shape != source[k].shape for k in init["fresh"] if k in source)
    # nothing to start from, or nothing that fits: one clear message each
    mlp = tmp_path / "mlp.yaml"
    mlp.write_text(path.read_text().replace("  name: cnn\n  channels: [[16], [32], [64]]", "  name: mlp\n  hidden: [32]"))
    for config, value, expected in ((path, tmp_path / "nowhere", "does not exist"), (mlp, trained, "no tensor")):
        result = runner.invoke(app, ["train", str(config), "--set", f"model.init_from={value}"])
        assert result.exit_code == 1 and expected in result.output and "Traceback" not in result.output


ALLOC_LOOP = """
import resource, torch
from torch import nn
from vislang.system import tune_malloc
state = tune_malloc()
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Dropout(0.25),
                      nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(state, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator only")
def test_training_processes_keep_freed_tensor_memory_instead_of_faulting_it_in_every_step(trained):
    # a run records what it did to the allocator; its results do not depend on it (reproducibility tests)
    assert json.loads((trained / "run.json").read_text())["malloc"] in ("tuned", "unavailable")

    def faults(**env: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", ALLOC_LOOP], env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=120, check=True).stdout.split()
        return out[0], int(out[1])

    default_state, default_faults = faults(VISLANG_MALLOC="default")
    tuned_state, tuned_faults = faults()
    assert default_state == "default"
    if tuned_state == "unavailable":
        pytest.skip("not glibc")
    # ten SGD steps of an MLP like cifar10_mlp's: glibc's default settings unmap freed activations and
    # gradients and fault them in again every step (6,000-12,000 page faults a step here); tuned, it reuses its heap (0 here, at most a few hundred)
    assert tuned_state == "tuned"
    assert tuned_faults * 4 < default_faults, (tuned_faults, default_faults)


def test_epoch_loss_is_the_batch_weighted_mean_of_the_step_losses(tmp_path, monkeypatch):
    """history.csv's train/loss is the mean over the epoch's images: a short last batch weighs less."""
    from vislang.tasks.classification import ClassificationTask

    steps: list[tuple[int, float, int]] = []
    training_step = ClassificationTask.training_step

    def spy(self, batch, batch_idx):
        loss = training_step(self, batch, batch_idx)
        steps.append((self.current_epoch, float(loss), len(batch[1])))
        return loss

    monkeypatch.setattr(ClassificationTask, "training_step", spy)
    result = runner.invoke(app, ["train", str(write_config(tmp_path)), "--light", "--set", "data.batch_size=80"])
    assert result.exit_code == 0, result.output
    rows = history(tmp_path / "runs" / "small")
    for epoch, row in enumerate(rows):
        mine = [(loss, n) for e, loss, n in steps if e == epoch]
        assert sorted({n for _, n in mine}) == [60, 80]  # 540 training images: 6 full batches and one of 60
        expected = sum(loss * n for loss, n in mine) / sum(n for _, n in mine)
        assert float(row["train/loss"]) == pytest.approx(expected, abs=2e-6)
