"""Shared fixtures: the offline data mirror, MNIST prepared once, small configs, CLI and W&B helpers.

The data mirror is ``$BIOCREDIT_DATA_MIRROR`` or, as on CI (which clones the repository with ``shared/``
beside it), ``<repo>/../shared/data``. Tests that need MNIST (or CIFAR-10) are skipped, with the reason, when it
is absent; with ``BIOCREDIT_REQUIRE_DATA=1`` (set by ``.ci/run``) a missing dataset stops the session instead, so
CI cannot pass with the data-driven tests (the workflow runs among them) skipped.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
REPO_CONFIG = REPO / "config.yaml"
MIRROR = Path(os.environ.get("BIOCREDIT_DATA_MIRROR") or REPO.parent / "shared" / "data")
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Columns of metrics.csv that measure wall time (they differ between otherwise identical runs).
WALL_TIME_COLUMNS = ("epoch_seconds", "eval_seconds")
# The tiny size used by the training tests (numbers meaningless, behaviour real).
SMALL_SCALE = {"epochs": 2, "seeds": 1, "train_subset": 500, "test_subset": 200}


def mirror_has_mnist() -> bool:
    return all((MIRROR / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES)


def mirror_has_cifar10() -> bool:
    return (MIRROR / "cifar-10-batches-py" / "data_batch_1").is_file()


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("BIOCREDIT_REQUIRE_DATA") == "1":
        missing = [name for name, ok in (("MNIST", mirror_has_mnist()), ("CIFAR-10", mirror_has_cifar10())) if not ok]
        if missing:
            pytest.exit(f"BIOCREDIT_REQUIRE_DATA=1 but the data mirror {MIRROR} lacks {' and '.join(missing)}: "
                        "set BIOCREDIT_DATA_MIRROR to a folder that has them (or unset BIOCREDIT_REQUIRE_DATA to "
                        "skip the tests that need them)", returncode=4)


def mnist_experiment(cfg: dict | None = None) -> str:
    """The first experiment of the repository's config.yaml that trains on MNIST."""
    cfg = cfg or yaml.safe_load(REPO_CONFIG.read_text())
    for name, exp in cfg["experiments"].items():
        if exp["dataset"] == "mnist":
            return name
    pytest.skip("config.yaml has no MNIST experiment", allow_module_level=True)


def method_with_rule(cfg: dict, experiment: str, rule: str) -> str:
    """The name of the experiment's first method that uses ``rule``."""
    for name, method in cfg["experiments"][experiment]["methods"].items():
        if method["rule"] == rule:
            return name
    pytest.skip(f"experiment {experiment} has no method with rule {rule}", allow_module_level=True)


def read_metrics(path: Path, drop: tuple[str, ...] = WALL_TIME_COLUMNS) -> list[dict[str, str]]:
    """metrics.csv as its raw text cells (no float parsing), without the wall-time columns."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def write_config(cfg: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def one_line(text: str) -> str:
    """The single line of a message; fails if there is none or more than one."""
    stripped = text.strip()
    assert stripped, "expected a one-line message, got nothing"
    assert "\n" not in stripped, f"expected ONE line, got:\n{text}"
    return stripped


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m biocredit ARGS`` in a fresh interpreter, as Snakemake and users call it."""
    return subprocess.run([sys.executable, "-m", "biocredit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not mirror_has_mnist():
        pytest.skip(f"offline data mirror with MNIST not found at {MIRROR} (set BIOCREDIT_DATA_MIRROR)")
    return MIRROR


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """A data folder with MNIST copied from the mirror and verified, once per test session."""
    from biocredit import data

    root = tmp_path_factory.mktemp("data")
    data.prepare("mnist", root, mirror, download=False)
    return root


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for CLI / Snakemake subprocesses: W&B offline, the data mirror, a private HOME for W&B."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", BIOCREDIT_DATA_MIRROR=str(MIRROR), WANDB_CONFIG_DIR=str(tmp_path / ".wandb"))
    return env


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """In-process runs log to W&B in offline mode; the W&B service is torn down afterwards."""
    from biocredit import tracking

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    for key in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # set by tracking (setdefault): restored after the test
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".wandb"))
    monkeypatch.setenv("BIOCREDIT_DATA_MIRROR", str(MIRROR))
    yield
    tracking.shutdown()


@pytest.fixture
def small_config(tmp_path: Path, mnist_dir: Path) -> Iterator[dict[str, Any]]:
    """The repository's config.yaml, validated, at scale smoke with tiny subsets, data and results in tmp.

    One CPU thread: tiny nets gain nothing from more, and a busy machine (CI, parallel jobs) slows
    multi-threaded runs badly. The trainer sets torch's thread count for the process, so it is restored after.
    """
    import torch

    from biocredit.config import load_config

    exp = mnist_experiment()
    overrides: dict[str, Any] = {
        "scale": "smoke",
        "device": "cpu",
        "threads": 1,
        "data.dir": str(mnist_dir),
        "data.download": False,
        "results_dir": str(tmp_path / "results"),
        "wandb.mode": "offline",
        **{f"experiments.{exp}.scales.smoke.{k}": v for k, v in SMALL_SCALE.items()},
    }
    threads = torch.get_num_threads()
    yield load_config(REPO_CONFIG, overrides)
    torch.set_num_threads(threads)


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[..., Path]:
    """``config_file(cfg, name='config.yaml')`` writes a config dict to a YAML file in tmp_path."""

    def make(cfg: dict, name: str = "config.yaml") -> Path:
        return write_config(cfg, tmp_path / name)

    return make


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for tiny nets (no OpenMP spin-waits on a busy machine), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kill_after_first_checkpoint(args: list[str], checkpoint: Path, log: Path, env: dict, cwd: Path,
                                timeout: float) -> None:
    """Start ``python -m biocredit *args``, SIGKILL it as soon as ``checkpoint`` records a finished epoch."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "biocredit", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline, epoch = time.monotonic() + timeout, 0
            while epoch < 1:
                assert proc.poll() is None, f"the job ended before it could be killed:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no checkpoint after {timeout:.0f} s:\n{log.read_text()}"
                if checkpoint.exists():
                    epoch = torch.load(checkpoint, weights_only=False)["epoch"]
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
