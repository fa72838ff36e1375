"""Tests for biocredit.data: preparation from the offline mirror, verification, loading, synthetic tasks."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from biocredit import data
from biocredit.data import DataError

_DEFAULT_MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MIRROR = Path(os.environ.get(data.MIRROR_ENV) or _DEFAULT_MIRROR)
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

needs_mnist = pytest.mark.skipif(
    not all((MIRROR / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES),
    reason=f"offline data mirror with MNIST not found at {MIRROR} (set {data.MIRROR_ENV})",
)
needs_cifar = pytest.mark.skipif(
    not (MIRROR / "cifar-10-batches-py" / "data_batch_1").is_file(),
    reason=f"offline data mirror with CIFAR-10 not found at {MIRROR} (set {data.MIRROR_ENV})",
)


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """MNIST prepared once from the mirror, shared by the tests that only read it."""
    if not all((MIRROR / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
        pytest.skip(f"offline data mirror with MNIST not found at {MIRROR} (set {data.MIRROR_ENV})")
    root = tmp_path_factory.mktemp("mnist_data")
    return root, data.prepare("mnist", root, mirror=MIRROR, download=False)


def _fake_mnist_mirror(tmp_path: Path) -> Path:
    fake = tmp_path / "fake_mirror"
    (fake / "MNIST" / "raw").mkdir(parents=True)
    for f in MNIST_FILES:
        shutil.copyfile(MIRROR / "MNIST" / "raw" / f, fake / "MNIST" / "raw" / f)
    return fake


# ------------------------------------------------------------------------------------------ MNIST / CIFAR


@needs_mnist
def test_prepare_mnist_copies_from_mirror_verifies_and_loads(mnist_dir: tuple[Path, dict]) -> None:
    root, record = mnist_dir
    assert record["dataset"] == "mnist" and record["source"] == "mirror"
    assert record["sha256"] == data.ARRAY_SHA256["mnist"]
    assert record["shapes"]["train_images"] == [60000, 28, 28]
    on_disk = json.loads((root / "MNIST" / "verified.json").read_text())
    assert on_disk == record
    for f in MNIST_FILES:
        copied = root / "MNIST" / "raw" / f
        assert copied.stat().st_size == (MIRROR / "MNIST" / "raw" / f).stat().st_size
        assert stat.S_IMODE(copied.stat().st_mode) & stat.S_IWUSR, "copy kept the mirror's read-only mode"

    x, y = data.load_arrays("mnist", root, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8 and x.flags.writeable
    assert y.shape == (60000,) and y.dtype == np.int64
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    xt, yt = data.load_arrays("mnist", root, "test")
    assert xt.shape == (10000, 28, 28) and xt.dtype == np.uint8
    assert yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@needs_mnist
def test_second_prepare_trusts_verified_json_without_rehashing(
    mnist_dir: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, record = mnist_dir

    def no_hashing(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare re-decoded or re-hashed files that were already verified")

    monkeypatch.setattr(data, "_verify", no_hashing)
    monkeypatch.setattr(data, "_sha256_array", no_hashing)
    assert data.prepare("mnist", root, mirror=None, download=False) == record


@needs_mnist
def test_prepare_reverifies_files_already_present_when_they_changed(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        shutil.copyfile(MIRROR / "MNIST" / "raw" / f, raw / f)
    record = data.prepare("mnist", tmp_path, mirror=None, download=False)
    assert record["source"] == "present"
    # touching a file (new mtime) invalidates verified.json: it is re-verified, still good
    st = (raw / MNIST_FILES[3]).stat()
    os.utime(raw / MNIST_FILES[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = data.prepare("mnist", tmp_path, mirror=None, download=False)
    assert again["files"]["raw/" + MNIST_FILES[3]]["mtime_ns"] == st.st_mtime_ns + 10**9


@needs_cifar
def test_prepare_cifar10_copies_from_mirror_verifies_and_loads(tmp_path: Path) -> None:
    record = data.prepare("cifar10", tmp_path, mirror=MIRROR, download=False)
    assert record["source"] == "mirror" and record["sha256"] == data.ARRAY_SHA256["cifar10"]
    folder = tmp_path / "cifar-10-batches-py"
    assert (folder / "verified.json").is_file()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        assert stat.S_IMODE((folder / name).stat().st_mode) & stat.S_IWUSR
    x, y = data.load_arrays("cifar10", tmp_path, "train")
    assert x.shape == (50000, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert x[0, 0, 0, :5].tolist() == [59, 43, 50, 68, 98]  # first R values of train image 0 (SOURCES.md)
    xt, yt = data.load_arrays("cifar10", tmp_path, "test")
    assert xt.shape == (10000, 3, 32, 32) and yt[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


# ------------------------------------------------------------------------------------------ failures


@needs_mnist
def test_mirror_with_a_changed_label_is_rejected_naming_the_file(tmp_path: Path) -> None:
    fake = _fake_mnist_mirror(tmp_path)
    bad = fake / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(bad.read_bytes()))
    raw[8 + 5] = (raw[8 + 5] + 1) % 10  # label of test example 5, after the 8-byte idx1 header
    bad.write_bytes(gzip.compress(bytes(raw)))

    with pytest.raises(DataError) as exc:
        data.prepare("mnist", tmp_path / "data", mirror=fake, download=False)
    msg = _one_line(exc)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "sha256" in msg
    assert data.ARRAY_SHA256["mnist"]["test_labels"] in msg
    assert not (tmp_path / "data" / "MNIST" / "verified.json").exists()


@needs_mnist
def test_truncated_gz_file_is_rejected_with_one_line(tmp_path: Path) -> None:
    fake = _fake_mnist_mirror(tmp_path)
    bad = fake / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])

    with pytest.raises(DataError) as exc:
        data.prepare("mnist", tmp_path / "data", mirror=fake, download=False)
    msg = _one_line(exc)
    assert "train-labels-idx1-ubyte.gz" in msg and "truncated" in msg


@needs_mnist
def test_idx_payload_shorter_than_header_says_is_rejected(tmp_path: Path) -> None:
    fake = _fake_mnist_mirror(tmp_path)
    bad = fake / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-100]))  # valid gzip, short payload

    with pytest.raises(DataError) as exc:
        data.prepare("mnist", tmp_path / "data", mirror=fake, download=False)
    msg = _one_line(exc)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "truncated" in msg


def test_missing_dataset_without_mirror_or_download_names_files_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        data.prepare("mnist", tmp_path, mirror=None, download=False)
    msg = _one_line(exc)
    for f in MNIST_FILES:
        assert f in msg
    assert data.MIRROR_ENV in msg and "data.mirror" in msg and "download" in msg


def test_missing_files_in_an_empty_mirror_are_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        data.prepare("cifar10", tmp_path / "data", mirror=tmp_path / "empty", download=False)
    msg = _one_line(exc)
    assert "data_batch_1" in msg and "batches.meta" in msg and data.MIRROR_ENV in msg


def test_a_data_folder_that_cannot_be_made_is_one_line_naming_it_before_any_copy(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DataError) as exc:  # before: a FileNotFoundError traceback from the copy (or the download)
        data.prepare("mnist", blocker / "data", mirror=tmp_path / "mirror", download=True)
    msg = _one_line(exc)
    assert msg.startswith(f"mnist: cannot make the data folder {blocker / 'data' / 'MNIST'}") and "data.dir" in msg


def test_unknown_dataset_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        data.prepare("imagenet", tmp_path, download=False)
    assert "mnist" in _one_line(exc)


def test_load_arrays_before_prepare_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        data.load_arrays("mnist", tmp_path, "train")
    msg = _one_line(exc)
    assert "prepare-data mnist" in msg and "verified.json" in msg


@needs_mnist
def test_load_arrays_rejects_unknown_split(mnist_dir: tuple[Path, dict]) -> None:
    with pytest.raises(DataError):
        data.load_arrays("mnist", mnist_dir[0], "validation")


# ------------------------------------------------------------------------------------------ mirror resolution


def test_resolve_mirror_env_var_wins_over_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "from_env"))
    assert data.resolve_mirror(tmp_path / "from_config") == tmp_path / "from_env"
    assert data.resolve_mirror(None) == tmp_path / "from_env"


def test_resolve_mirror_empty_env_falls_back_to_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(data.MIRROR_ENV, "")
    assert data.resolve_mirror(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert data.resolve_mirror(None) is None
    monkeypatch.delenv(data.MIRROR_ENV)
    assert data.resolve_mirror(tmp_path / "cfg") == tmp_path / "cfg"
    assert data.resolve_mirror("") is None


# ------------------------------------------------------------------------------------------ synthetic tasks


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_linear_task_is_deterministic_from_seed_and_has_the_right_shapes() -> None:
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    a = data.synthetic_linear_task(7, n_train=200, n_test=50)
    assert torch.equal(torch.get_rng_state(), global_state), "the global RNG was used"
    torch.manual_seed(999)  # a different global RNG state must not matter
    _assert_same(a, data.synthetic_linear_task(7, n_train=200, n_test=50))
    b = data.synthetic_linear_task(8, n_train=200, n_test=50)
    assert not torch.equal(a["T"], b["T"]) and not torch.equal(a["x_train"], b["x_train"])

    assert a["T"].shape == (10, 30) and a["x_train"].shape == (200, 30) and a["y_train"].shape == (200, 10)
    assert a["x_test"].shape == (50, 30) and a["y_test"].shape == (50, 10)
    assert all(v.dtype == torch.float32 for v in a.values())
    assert a["T"].abs().max() <= 1.0
    torch.testing.assert_close(a["y_train"], a["x_train"] @ a["T"].T)
    torch.testing.assert_close(a["y_test"], a["x_test"] @ a["T"].T)


def test_linear_task_target_and_test_set_do_not_depend_on_train_size() -> None:
    small = data.synthetic_linear_task(3, n_train=10, n_test=20)
    large = data.synthetic_linear_task(3, n_train=100, n_test=20)
    assert torch.equal(small["T"], large["T"]) and torch.equal(small["x_test"], large["x_test"])


def test_teacher_task_is_deterministic_and_matches_the_formula() -> None:
    a = data.synthetic_teacher_task(5, n_train=300, n_test=100)
    _assert_same(a, data.synthetic_teacher_task(5, n_train=300, n_test=100))
    b = data.synthetic_teacher_task(6, n_train=300, n_test=100)
    assert not torch.equal(a["W0"], b["W0"]) and not torch.equal(a["x_test"], b["x_test"])

    shapes = {"W0": (20, 30), "b0": (20,), "W1": (10, 20), "b1": (10,), "W2": (10, 10), "b2": (10,)}
    for k, shape in shapes.items():
        assert a[k].shape == shape and a[k].dtype == torch.float32
    assert a["x_train"].shape == (300, 30) and a["y_train"].shape == (300, 10)
    assert a["x_test"].shape == (100, 30) and a["y_test"].shape == (100, 10)
    assert a["W0"].abs().max() <= (3.0 / 30) ** 0.5 and a["b0"].abs().max() <= 1.0

    for x, y in ((a["x_train"], a["y_train"]), (a["x_test"], a["y_test"])):
        expected = torch.tanh(torch.tanh(x @ a["W0"].T + a["b0"]) @ a["W1"].T + a["b1"]) @ a["W2"].T + a["b2"]
        torch.testing.assert_close(y, expected)


def test_teacher_task_accepts_other_depths_and_scales() -> None:
    t = data.synthetic_teacher_task(0, sizes=(4, 3), n_train=5, n_test=5, weight_scale=2.0, bias_scale=0.0)
    assert set(t) == {"W0", "b0", "x_train", "y_train", "x_test", "y_test"}
    assert torch.equal(t["b0"], torch.zeros(3))
    torch.testing.assert_close(t["y_test"], t["x_test"] @ t["W0"].T)


def test_the_workflow_plan_and_prepare_data_read_these_modules_without_importing_torch() -> None:
    """Snakemake parses the Snakefile for every run, dry run and cluster job, and reads the dataset table, the
    committed tables' runs and the length-selection settings from these modules; `prepare-data` only copies and
    hashes files. None of that needs torch (a 2-3 s import), pandas, matplotlib or W&B: the synthetic tasks and the
    checkpoint readers import torch where they use it."""
    import subprocess
    import sys

    heavy = ("torch", "pandas", "matplotlib", "wandb")
    code = ("import sys; import biocredit.data, biocredit.progress, biocredit.selection, biocredit.config; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
    # ... and the synthetic tasks still build (torch imported on use)
    task = data.synthetic_linear_task(0, n_train=5, n_test=3)
    assert isinstance(task["T"], torch.Tensor) and task["x_train"].shape == (5, 30)
