"""Shared fixtures: every test uses a private vislang cache and, when present, the local dataset mirror."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def vislang_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """VISLANG_CACHE → a session temp folder; VISLANG_MIRROR → ../shared/data when it exists."""
    saved = {k: os.environ.get(k) for k in ("VISLANG_CACHE", "VISLANG_MIRROR")}
    os.environ["VISLANG_CACHE"] = str(tmp_path_factory.mktemp("vislang-cache"))
    if MIRROR.is_dir():
        os.environ["VISLANG_MIRROR"] = str(MIRROR)
    else:
        os.environ.pop("VISLANG_MIRROR", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def mirror() -> Path:
    """The local dataset mirror (../shared/data); tests needing it are skipped when it is missing."""
    if not MIRROR.is_dir():
        pytest.skip(f"dataset mirror {MIRROR} not found (tests on real archives need ../shared/data)")
    return MIRROR


@pytest.fixture(scope="session")
def sample_root(vislang_env: None) -> Path:
    """The packaged CIFAR-10 sample, extracted: cifar10/{train,test}/<class>/*.jpg (no mirror needed)."""
    from vislang.data.fetch import fetch
    from vislang.data.registry import cifar10_sample_archive

    return fetch(cifar10_sample_archive(), progress=False) / "cifar10"


@pytest.fixture(scope="session")
def small_image_run(vislang_env: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart experiment made small (800 sample images, CNN 16-32, 2 epochs), trained once per
    session for the explain, report and compare tests. Tests must not modify it (copy it first)."""
    from importlib import resources

    from vislang.config import load_config
    from vislang.run import train

    out = tmp_path_factory.mktemp("small_image_run")
    with resources.as_file(resources.files("vislang") / "assets" / "quickstart_image.yaml") as path:
        cfg = load_config(path, [f"output_dir={out}", "seed=1", "train.epochs=2", "train.threads=2",
                                 "data.subset={train: 800, test: 200}", "model.channels=[[16], [32]]"])
    return train(cfg, quiet=True)
