"""Datasets: preparation (copy from a local mirror or download), verification, loading; synthetic tasks.

Raw files use torchvision's layout under the data folder, so torchvision's dataset classes can read them too::

    <data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <data_dir>/FashionMNIST/raw/  (same names)
    <data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}

``prepare`` makes the files available (already present -> local mirror -> torchvision download), verifies the
decoded arrays against fixed SHA-256 hashes and records the result in ``<folder>/verified.json``;
``load_arrays`` reads only verified data. Every failure is a :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported by the synthetic-task functions below that use it: the workflow's DAG
    import torch  # (DATASET_FOLDERS) and prepare-data read this module without paying for torch's import

from biocredit.config import DataError  # defined beside ConfigError so the CLI can catch it without torch

__all__ = [
    "DATASETS",
    "MIRROR_ENV",
    "DataError",
    "load_arrays",
    "prepare",
    "resolve_mirror",
    "synthetic_linear_task",
    "synthetic_teacher_task",
]


DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10")
MIRROR_ENV = "BIOCREDIT_DATA_MIRROR"
VERIFIED_NAME = "verified.json"
SPLITS: tuple[str, ...] = ("train", "test")

# SHA-256 of the decoded uint8 arrays in C order (CIFAR-10 images as N x 3 x 32 x 32, labels as uint8);
# copied from the table "Content hashes" in shared/data/SOURCES.md. They hold for the mirror and for a fresh
# torchvision download alike, because they hash the content, not the container.
ARRAY_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    },
    "cifar10": {
        "train_images": "9d5c2eddadb0deff02c14c350c0385aab7b1d5ff1edfeb4997c8dc8644960111",
        "train_labels": "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253",
        "test_images": "177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
        "test_labels": "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5",
    },
}

# Fashion-MNIST has no array hashes in SOURCES.md, so its four .gz files are checked against the md5s that
# torchvision publishes (torchvision.datasets.FashionMNIST.resources); the decoded-array hashes are still
# computed and recorded in verified.json.
FASHION_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# batches.meta is the original file (mirror and download alike); md5 as in torchvision.datasets.CIFAR10.meta.
CIFAR_META_MD5 = "5ff9c542aee3614f3951f8cda6e48888"

_IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
_IDX_COUNTS = {"train": 60000, "test": 10000}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_META = "batches.meta"
_CIFAR_BATCH = 10000
_N_CLASSES = 10


@dataclass(frozen=True)
class _Spec:
    name: str
    folder: str  # folder under data_dir (and under the mirror); verified.json lives here
    files: tuple[str, ...]  # required files, relative to folder
    torchvision_class: str
    layout: str  # human-readable form of the expected layout, for messages


_SPECS: dict[str, _Spec] = {
    "mnist": _Spec(
        "mnist", "MNIST", tuple(f"raw/{f}" for f in _IDX_FILES.values()), "MNIST", "MNIST/raw/*-ubyte.gz"
    ),
    "fashion_mnist": _Spec(
        "fashion_mnist",
        "FashionMNIST",
        tuple(f"raw/{f}" for f in _IDX_FILES.values()),
        "FashionMNIST",
        "FashionMNIST/raw/*-ubyte.gz",
    ),
    "cifar10": _Spec(
        "cifar10",
        "cifar-10-batches-py",
        (*_CIFAR_TRAIN, _CIFAR_TEST, _CIFAR_META),
        "CIFAR10",
        "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    ),
}


# The folder under data_dir that holds each dataset (torchvision's layout); verified.json lives there.
DATASET_FOLDERS: dict[str, str] = {name: spec.folder for name, spec in _SPECS.items()}
FOLDER_TO_DATASET: dict[str, str] = {folder: name for name, folder in DATASET_FOLDERS.items()}


# --------------------------------------------------------------------------------------------------------
# Mirror resolution
# --------------------------------------------------------------------------------------------------------


def resolve_mirror(config_mirror: str | os.PathLike[str] | None) -> Path | None:
    """The env var BIOCREDIT_DATA_MIRROR, if set and non-empty, wins over the config key data.mirror."""
    env = os.environ.get(MIRROR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    if config_mirror is None or str(config_mirror).strip() == "":
        return None
    return Path(config_mirror).expanduser()


# --------------------------------------------------------------------------------------------------------
# Decoding (whole-file numpy decoding; no per-sample Python loops)
# --------------------------------------------------------------------------------------------------------


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return _SPECS[name]


def _read_gz(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot be decompressed, the file is truncated or not gzip ({type(exc).__name__}: {exc}); "
            "delete it and re-run prepare with a good mirror or a network"
        ) from exc


def _decode_idx(path: Path, kind: str, count: int) -> np.ndarray:
    """Decode one gzipped idx file (images: N x 28 x 28 uint8, labels: N uint8); a read-only view."""
    raw = _read_gz(path)
    fix = "delete it and re-run prepare with a good mirror or a network"
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: idx header truncated ({len(raw)} bytes); {fix}")
    magic = struct.unpack_from(">I", raw, 0)[0]
    expected_magic = 0x0800 | ndim  # 0x0803 images, 0x0801 labels (unsigned-byte idx)
    if magic != expected_magic:
        raise DataError(
            f"{path}: bad idx magic number 0x{magic:08x} (expected 0x{expected_magic:08x}); {fix}"
        )
    dims = struct.unpack_from(f">{ndim}I", raw, 4)
    expected_dims = (count, 28, 28) if kind == "images" else (count,)
    if tuple(dims) != expected_dims:
        raise DataError(f"{path}: idx dimensions {tuple(dims)} (expected {expected_dims}); {fix}")
    n_bytes = math.prod(dims)
    if len(raw) - header != n_bytes:
        raise DataError(
            f"{path}: idx payload has {len(raw) - header} bytes (expected {n_bytes}); the file is truncated "
            f"or padded; {fix}"
        )
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels" and arr.size and int(arr.max()) >= _N_CLASSES:
        raise DataError(f"{path}: label {int(arr.max())} out of range 0..9; {fix}")
    return arr


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 batches that only resolves the numpy globals a batch needs (no arbitrary code)."""

    _reconstruct = np.ndarray.__reduce__(np.empty(0))[0]
    _allowed: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR-10 batch"
            ) from None


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except (
        Exception
    ) as exc:  # pickle raises many types on bad input (UnpicklingError, EOFError, ValueError...)
        raise DataError(
            f"{path}: cannot be unpickled, the file is truncated or not a CIFAR-10 python batch "
            f"({type(exc).__name__}: {exc}); delete it and re-run prepare with a good mirror or a network"
        ) from exc


def _decode_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (10000 x 3072 uint8 data, 10000 uint8 labels)."""
    fix = "delete it and re-run prepare with a good mirror or a network"
    obj = _unpickle(path)
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DataError(f"{path}: not a CIFAR-10 batch (no b'data'/b'labels' entries); {fix}")
    data, labels = obj[b"data"], obj[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (_CIFAR_BATCH, 3072):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: data is {dtype} {shape} (expected uint8 ({_CIFAR_BATCH}, 3072)); {fix}")
    try:
        lab = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: labels are not integers ({exc}); {fix}") from exc
    if lab.shape != (_CIFAR_BATCH,):
        raise DataError(f"{path}: {lab.shape} labels (expected ({_CIFAR_BATCH},)); {fix}")
    if lab.min() < 0 or lab.max() >= _N_CLASSES:
        raise DataError(f"{path}: labels outside 0..9; {fix}")
    return data, lab.astype(np.uint8)


def _decode_split(spec: _Spec, folder: Path, split: str) -> dict[str, tuple[np.ndarray, list[Path]]]:
    """Decode one split -> {'images': (uint8 array, source files), 'labels': (uint8 array, source files)}."""
    if spec.name == "cifar10":
        names = _CIFAR_TRAIN if split == "train" else (_CIFAR_TEST,)
        paths = [folder / n for n in names]
        batches = [_decode_cifar_batch(p) for p in paths]
        data = batches[0][0] if len(batches) == 1 else np.concatenate([b[0] for b in batches])
        labels = batches[0][1] if len(batches) == 1 else np.concatenate([b[1] for b in batches])
        return {"images": (data.reshape(-1, 3, 32, 32), paths), "labels": (labels, paths)}
    out = {}
    for part in ("images", "labels"):
        path = folder / "raw" / _IDX_FILES[(split, part)]
        out[part] = (_decode_idx(path, part, _IDX_COUNTS[split]), [path])
    return out


# --------------------------------------------------------------------------------------------------------
# Hashing and verification
# --------------------------------------------------------------------------------------------------------


def _sha256_array(arr: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


def _md5_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _file_stats(folder: Path, spec: _Spec) -> dict[str, dict[str, int]]:
    stats = {}
    for rel in spec.files:
        st = (folder / rel).stat()
        stats[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return stats


def _describe(paths: list[Path]) -> str:
    if len(paths) == 1:
        return str(paths[0])
    return f"{paths[0].parent}/{{{','.join(p.name for p in paths)}}}"


def _verify(spec: _Spec, folder: Path, copied_from: Path | None) -> dict[str, Any]:
    """Decode and hash everything; raise DataError on the first problem; return the hashes and shapes."""
    origin = f" (copied from the mirror {copied_from})" if copied_from is not None else ""
    fix = "delete it and re-run prepare with a good mirror or a network"
    record: dict[str, Any] = {"sha256": {}, "shapes": {}}
    if spec.name == "fashion_mnist":
        record["file_md5"] = {}
        for rel in spec.files:
            path = folder / rel
            got, want = _md5_file(path), FASHION_MNIST_MD5[path.name]
            if got != want:
                raise DataError(f"{path}{origin}: md5 mismatch (expected md5 {want}, got {got}); {fix}")
            record["file_md5"][rel] = got
        record["check"] = "md5 of the .gz files against torchvision's published values"
    elif spec.name == "cifar10":
        meta = folder / _CIFAR_META
        got = _md5_file(meta)
        if got != CIFAR_META_MD5:
            raise DataError(f"{meta}{origin}: md5 mismatch (expected md5 {CIFAR_META_MD5}, got {got}); {fix}")
        record["check"] = "sha256 of the decoded uint8 arrays against shared/data/SOURCES.md"
    else:
        record["check"] = "sha256 of the decoded uint8 arrays against shared/data/SOURCES.md"
    expected = ARRAY_SHA256.get(spec.name)
    for split in SPLITS:
        for part, (arr, paths) in _decode_split(spec, folder, split).items():
            key = f"{split}_{part}"
            digest = _sha256_array(arr)
            if expected is not None and digest != expected[key]:
                where = _describe(paths)
                raise DataError(
                    f"{where}{origin}: decoded {split} {part} do not match the known content "
                    f"(expected sha256 {expected[key]}, got {digest}); {fix}"
                )
            record["sha256"][key] = digest
            record["shapes"][key] = list(arr.shape)
    return record


# --------------------------------------------------------------------------------------------------------
# prepare / load_arrays
# --------------------------------------------------------------------------------------------------------


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / VERIFIED_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _record_current(record: dict[str, Any] | None, spec: _Spec, folder: Path) -> bool:
    """verified.json matches this dataset, the expected hashes, and the files' sizes and mtimes."""
    if record is None or record.get("dataset") != spec.name:
        return False
    expected = ARRAY_SHA256.get(spec.name)
    if expected is not None and record.get("sha256") != expected:
        return False
    try:
        return record.get("files") == _file_stats(folder, spec)
    except OSError:
        return False


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy content only (shutil.copyfile: no read-only mode bits from the mirror); never leave a partial file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _download(spec: _Spec, data_dir: Path) -> None:
    import torchvision.datasets as tvd  # imported lazily: only needed when downloading

    cls = getattr(tvd, spec.torchvision_class)
    cls(root=str(data_dir), train=True, download=True)


def _write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def prepare(
    name: str,
    data_dir: str | os.PathLike[str],
    mirror: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Make torchvision-compatible raw files available under data_dir, verify them, write verified.json.

    Order: files already present -> copy the missing ones from ``mirror`` (same torchvision layout) ->
    torchvision's downloader when ``download`` -> DataError naming the missing files. A verified.json whose
    recorded file sizes and mtimes still match is trusted without re-hashing. Returns the verified.json dict
    (keys: dataset, folder, source, time, sha256, shapes, files, check, and file_md5 for Fashion-MNIST).
    """
    spec = _spec(name)
    data_dir = Path(data_dir)
    folder = data_dir / spec.folder

    record = _read_record(folder)
    if _record_current(record, spec, folder):
        assert record is not None
        return record

    missing = [rel for rel in spec.files if not (folder / rel).is_file()]
    if missing:  # the folder the files go to, before any copy or download
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"{name}: cannot make the data folder {folder} ({e.strerror or e}); set data.dir "
                            "(or prepare-data --data-dir) to a folder you can write") from None
    source = "present"
    copied_from: Path | None = None
    if missing and mirror is not None:
        mirror_folder = Path(mirror) / spec.folder
        available = [rel for rel in missing if (mirror_folder / rel).is_file()]
        for rel in available:
            _copy_atomic(mirror_folder / rel, folder / rel)
        if available:
            source, copied_from = "mirror", mirror_folder
        missing = [rel for rel in missing if rel not in available]

    download_error = ""
    if missing and download:
        try:
            _download(spec, data_dir)
            source, copied_from = "download", None
        except Exception as exc:  # no network, HTTP errors, torchvision integrity errors...
            download_error = f" (download failed: {type(exc).__name__}: {exc})"
        missing = [rel for rel in spec.files if not (folder / rel).is_file()]

    if missing:
        tried = f"mirror {Path(mirror) / spec.folder} lacks them" if mirror is not None else "no mirror given"
        dl = f"download tried{download_error}" if download else "download disabled"
        raise DataError(
            f"{spec.name}: missing {', '.join(str(folder / rel) for rel in missing)} ({tried}; {dl}); "
            f"set {MIRROR_ENV} or data.mirror in config.yaml to a folder holding {spec.layout} "
            "(torchvision layout), or allow download (data.download: true) on a machine with a network"
        )

    verified = _verify(spec, folder, copied_from)
    result: dict[str, Any] = {
        "dataset": spec.name,
        "folder": spec.folder,
        "source": source,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        **verified,
        "files": _file_stats(folder, spec),
    }
    _write_json_atomic(folder / VERIFIED_NAME, result)
    return result


def load_arrays(name: str, data_dir: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8, labels int64) of a prepared dataset; split in {'train', 'test'}.

    Images are N x 28 x 28 for MNIST / Fashion-MNIST and N x 3 x 32 x 32 for CIFAR-10 (writable arrays).
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise DataError(f"{spec.name}: unknown split {split!r}; choose 'train' or 'test'")
    folder = Path(data_dir) / spec.folder
    howto = (
        f"run `python -m biocredit prepare-data {spec.name}` (or the Snakemake data rule) "
        f"with {MIRROR_ENV} / data.mirror set or with a network"
    )
    record = _read_record(folder)
    if record is None or record.get("dataset") != spec.name:
        raise DataError(f"{spec.name}: not prepared ({folder / VERIFIED_NAME} missing); {howto}")
    if not _record_current(record, spec, folder):
        raise DataError(f"{spec.name}: files under {folder} changed since they were verified; {howto}")
    decoded = _decode_split(spec, folder, split)
    images, labels = decoded["images"][0], decoded["labels"][0]
    if not images.flags.writeable or not images.flags.c_contiguous:
        images = np.array(images, order="C")
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# Synthetic tasks (Lillicrap et al. 2016)
# --------------------------------------------------------------------------------------------------------

_LINEAR_TASK, _TEACHER_TASK = 1, 2
_PARAMS, _TRAIN, _TEST = 0, 1, 2


def _generator(seed: int, task: int, stream: int) -> torch.Generator:
    """A private torch.Generator for (seed, task, stream): parameters, train and test inputs are drawn from
    separate streams, so the test set and the target function do not depend on n_train (or vice versa)."""
    import torch

    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    state = np.random.SeedSequence([seed, task, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


def _inputs(seed: int, task: int, stream: int, n: int, n_in: int) -> torch.Tensor:
    import torch

    return torch.randn(n, n_in, generator=_generator(seed, task, stream), dtype=torch.float32)


def synthetic_linear_task(
    seed: int,
    n_in: int = 30,
    n_out: int = 10,
    n_train: int = 10000,
    n_test: int = 1000,
    target_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Lillicrap 2016 Fig. 1: T (n_out x n_in) ~ U[-target_scale, target_scale]; x ~ N(0, I); y* = T x.

    Returns float32 {'T', 'x_train', 'y_train', 'x_test', 'y_test'} (rows are examples), deterministic from
    ``seed`` alone via private generators (the global RNG is never touched); every method that uses the same
    seed therefore sees the same T and the same example sequence.
    """
    import torch

    g = _generator(seed, _LINEAR_TASK, _PARAMS)
    T = (torch.rand(n_out, n_in, generator=g, dtype=torch.float32) * 2.0 - 1.0) * target_scale
    x_train = _inputs(seed, _LINEAR_TASK, _TRAIN, n_train, n_in)
    x_test = _inputs(seed, _LINEAR_TASK, _TEST, n_test, n_in)
    return {"T": T, "x_train": x_train, "y_train": x_train @ T.T, "x_test": x_test, "y_test": x_test @ T.T}


def _teacher_forward(task: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Teacher output for inputs x (rows): tanh on every layer but the last, which is linear."""
    import torch

    n_layers = sum(1 for k in task if k.startswith("W"))
    h = x
    for i in range(n_layers):
        h = h @ task[f"W{i}"].T + task[f"b{i}"]
        if i < n_layers - 1:
            h = torch.tanh(h)
    return h


def synthetic_teacher_task(
    seed: int,
    sizes: Sequence[int] = (30, 20, 10, 10),
    n_train: int = 20000,
    n_test: int = 5000,
    weight_scale: float = 1.0,
    bias_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Lillicrap 2016 Fig. 2c: a random, fixed tanh teacher y* = W2 tanh(W1 tanh(W0 x + b0) + b1) + b2.

    x ~ N(0, I). Weights W_l (sizes[l+1] x sizes[l]) ~ U[-a, a] with a = weight_scale * sqrt(3 / fan_in), so
    with weight_scale = 1 each pre-activation has unit variance (LeCun-uniform) and the tanh units work in
    their nonlinear range; biases b_l ~ U[-bias_scale, bias_scale]. Deterministic from ``seed`` alone.
    Returns float32 {'W0', 'b0', ..., 'x_train', 'y_train', 'x_test', 'y_test'}.
    """
    import torch

    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output size, got {sizes}")
    g = _generator(seed, _TEACHER_TASK, _PARAMS)
    task: dict[str, torch.Tensor] = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        a = weight_scale * math.sqrt(3.0 / fan_in)
        task[f"W{i}"] = (torch.rand(fan_out, fan_in, generator=g, dtype=torch.float32) * 2.0 - 1.0) * a
        task[f"b{i}"] = (torch.rand(fan_out, generator=g, dtype=torch.float32) * 2.0 - 1.0) * bias_scale
    x_train = _inputs(seed, _TEACHER_TASK, _TRAIN, n_train, sizes[0])
    x_test = _inputs(seed, _TEACHER_TASK, _TEST, n_test, sizes[0])
    with torch.no_grad():
        task.update(
            x_train=x_train,
            y_train=_teacher_forward(task, x_train),
            x_test=x_test,
            y_test=_teacher_forward(task, x_test),
        )
    return task
