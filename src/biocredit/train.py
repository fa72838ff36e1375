"""The one training loop. It knows the learning-rule interface, never a rule by name.

One run = one experiment × method × seed. Each epoch it evaluates on the full train and test sets,
appends a row to ``metrics.csv``, logs it to W&B and writes a checkpoint; a killed run resumes from
its last checkpoint and ends with the same numbers as an uninterrupted one. A non-finite loss stops
the run and records it as ``diverged`` (exit code 0: the rest of the workflow goes on).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from biocredit import data as datasets
from biocredit import optim
from biocredit.config import ConfigError, config_hash
from biocredit.losses import loss_value, squared_errors
from biocredit.metrics import classification_error, normalised_squared_error, target_spread, update_angles
from biocredit.nets import MLP, build_net
from biocredit.rules import RULES, LearningRule
from biocredit.tracking import WandbRun, resolve_mode

EVAL_CHUNK = 10_000
DIVERGENCE_CHECK_EVERY = 50  # minibatches between finiteness checks (a check is a device sync)


@dataclass
class Task:
    """Inputs, loss targets and (for classification) labels, already on the device."""

    x_train: Tensor
    t_train: Tensor
    x_test: Tensor
    t_test: Tensor
    labels_train: Tensor | None = None
    labels_test: Tensor | None = None
    x_valid: Tensor | None = None  # a held-out part of the training set (e.g. DTP's 50k/10k/10k split)
    t_valid: Tensor | None = None
    labels_valid: Tensor | None = None
    classes_train: Tensor | None = None  # class labels whatever the loss target is (for a linear probe of
    classes_test: Tensor | None = None  # an auto-encoder's code); equal to labels_* for classification


def resolve_device(setting: str = "auto") -> torch.device:
    """The config's ``device`` as a torch device; one that this machine lacks is a one-line ConfigError."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {setting!r} asked for but CUDA is not available here; use device: auto or cpu "
                          "(--set device=cpu)")
    dev = torch.device(setting)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {setting!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev


PREPROCESS = ("unit_interval", "standardize")
STANDARDIZE_EPS = 1e-8


def preprocess_stats(train_images: Any, how: str) -> tuple[Tensor, Tensor] | None:
    """Statistics a preprocessing needs, computed on the TRAINING images only (never validation or test).

    ``standardize``: the mean and sd of every input feature (pixel × channel) over the training images, after
    scaling to [0, 1]. ``unit_interval`` needs none.
    """
    if how == "unit_interval":
        return None
    if how == "standardize":
        x = torch.as_tensor(train_images).reshape(len(train_images), -1).double().div_(255.0)
        return x.mean(0).float(), x.std(0).float()
    raise ValueError(f"unknown preprocess {how!r}; choose one of {', '.join(PREPROCESS)}")


def preprocess(images: Any, how: str, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Flatten and scale uint8 images: ``unit_interval`` = pixels / 255; ``standardize`` = (pixels / 255 − mean)
    / sd per input feature, with ``stats`` from :func:`preprocess_stats` on the training images."""
    x = torch.as_tensor(images).reshape(len(images), -1).float().div_(255.0)
    if how == "unit_interval":
        return x
    if how == "standardize":
        if stats is None:
            raise ValueError("preprocess 'standardize' needs the training split's statistics (preprocess_stats)")
        mean, sd = stats
        return x.sub_(mean).div_(sd + STANDARDIZE_EPS)
    raise ValueError(f"unknown preprocess {how!r}; choose one of {', '.join(PREPROCESS)}")


SYNTHETIC_TASKS = {"synthetic_linear": "synthetic_linear_task", "synthetic_teacher": "synthetic_teacher_task"}


def load_task(run_cfg: Mapping[str, Any], data_dir: Path, device: torch.device) -> Task:
    """Load the run's task onto the device.

    Image datasets come from the data folder (prepared and verified by :func:`biocredit.data.prepare`);
    synthetic regression tasks are generated from the run's seed (``task.seed_offset`` added), so every
    method of a seed sees the same target map and the same pre-generated example sequence.
    """
    name = run_cfg["dataset"]
    if name in SYNTHETIC_TASKS:
        spec = dict(run_cfg["task"])
        seed = run_cfg["seed"] + spec.pop("seed_offset", 0)
        t = getattr(datasets, SYNTHETIC_TASKS[name])(seed, **spec)
        n_tr, n_te = run_cfg.get("train_subset"), run_cfg.get("test_subset")  # smoke scale: a prefix only
        return Task(t["x_train"][:n_tr].to(device), t["y_train"][:n_tr].to(device),
                    t["x_test"][:n_te].to(device), t["y_test"][:n_te].to(device))
    reconstruct = run_cfg.get("target", "labels") == "input"  # an auto-encoder: the loss target is the input
    n_classes = run_cfg["net"]["sizes"][-1]

    def tensors(images: Any, labels: Any) -> tuple[Tensor, Tensor, Tensor]:
        x = preprocess(images, run_cfg["preprocess"], stats).to(device)
        lab = torch.as_tensor(labels).long().to(device)
        return x, x if reconstruct else torch.nn.functional.one_hot(lab, n_classes).float(), lab

    images, labels = datasets.load_arrays(name, Path(data_dir), "train")
    n_valid = run_cfg.get("valid_size") or 0  # the LAST n_valid training examples are held out
    n_fit = len(labels) - n_valid
    n_train = min(run_cfg.get("train_subset") or n_fit, n_fit)
    # Preprocessing statistics from the training part only (all n_fit examples, so a smoke-scale subset is
    # preprocessed exactly as the full run; the held-out validation and the test images never enter them).
    stats = preprocess_stats(images[:n_fit], run_cfg["preprocess"])
    xtr, ttr, ltr = tensors(images[:n_train], labels[:n_train])
    # smoke scale: the validation error on the first valid_subset held-out examples only (the split is unchanged)
    n_va = n_fit + min(run_cfg.get("valid_subset") or n_valid, n_valid)
    valid = tensors(images[n_fit:n_va], labels[n_fit:n_va]) if n_valid else (None, None, None)
    images, labels = datasets.load_arrays(name, Path(data_dir), "test")
    n_test = run_cfg.get("test_subset") or len(labels)
    xte, tte, lte = tensors(images[:n_test], labels[:n_test])
    if reconstruct:  # the loss has no classes: errors are reconstruction NSEs; classes kept for the probe
        return Task(xtr, ttr, xte, tte, None, None, valid[0], valid[1], None, classes_train=ltr, classes_test=lte)
    return Task(xtr, ttr, xte, tte, ltr, lte, *valid, classes_train=ltr, classes_test=lte)


def train_eval_indices(n: int, k: int, seed: int) -> Tensor:
    """The ``k`` training examples (sorted indices out of ``n``) on which a run with ``train_eval_subset: k``
    measures its logged train loss and error: a fixed random draw from the run's seed, independent of the
    training stream."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 9_176_867 + 17))[:k].sort().values


def make_optimizer(net: MLP, train_cfg: Mapping[str, Any]) -> optim.Optimizer:
    """The forward weights' optimiser; an L2 weight decay (``weight_decay_mode: l2``) acts on weights only.
    ``hidden_lr_scale`` (optional, absent = 1): the step size of every layer but the output one (the weights and
    biases into hidden units) is ``lr`` times this, the output layer's stays ``lr``: a control for rules whose
    hidden-layer update is larger by construction (FA with a large feedback scale β)."""
    wd = train_cfg["weight_decay"] if train_cfg["weight_decay_mode"] == "l2" else 0.0
    if "hidden_lr_scale" not in train_cfg:
        groups = [{"params": list(net.W), "weight_decay": wd}]
        if net.b is not None:
            groups.append({"params": list(net.b), "weight_decay": 0.0})
    else:
        lr, last = train_cfg["lr"], len(net.W) - 1
        groups = []
        for i, W in enumerate(net.W):
            step = lr if i == last else lr * train_cfg["hidden_lr_scale"]
            groups.append({"params": [W], "weight_decay": wd, "lr": step})
            if net.b is not None:
                groups.append({"params": [net.b[i]], "weight_decay": 0.0, "lr": step})
    return optim.make_optimizer(groups, dict(train_cfg))


@torch.no_grad()
def evaluate(net: MLP, x: Tensor, t: Tensor, labels: Tensor | None, loss: str,
             generator: torch.Generator | None = None, passes: int | None = None) -> dict[str, float]:
    """Mean per-example loss and error (% misclassified, or NSE for regression) on a whole set.

    The net is put in evaluation mode (its test-time transmission, no input noise) and its output may be the
    mean of several stochastic passes (:meth:`MLP.predict`); random draws come from ``generator``.
    """
    if labels is None and loss == "squared_error" and not net.transmits:
        return evaluate_regression(net, x, t)[0]
    total, outputs = 0.0, []
    net.eval()
    try:
        for s in range(0, len(x), EVAL_CHUNK):
            a_L, y = net.predict(x[s : s + EVAL_CHUNK], generator, passes)
            total += float(loss_value(loss, a_L, y, t[s : s + EVAL_CHUNK], "sum"))
            outputs.append(y)
    finally:
        net.train()
    y = torch.cat(outputs)
    err = classification_error(y, labels) if labels is not None else normalised_squared_error(y, t)
    return {"loss": total / len(x), "error": err}


@torch.no_grad()
def evaluate_regression(net: MLP, x: Tensor, t: Tensor, spread: Tensor | None = None) -> list[dict[str, float]]:
    """Mean per-example squared-error loss and NSE on a whole set, for one net (x: N × in) or for each net of a
    stacked ensemble (x: S × N × in); ``spread``: the NSE's denominator if known (:func:`metrics.target_spread`).
    The squared errors are computed once for both (the same arithmetic as ``loss_value`` and the NSE)."""
    n = x.shape[-2]
    totals: list[float] | None = None
    terms = []
    for s in range(0, n, EVAL_CHUNK):
        sq = squared_errors(t[..., s : s + EVAL_CHUNK, :], net.forward_all(x[..., s : s + EVAL_CHUNK, :]).h[-1])
        values = (0.5 * sq.sum(dim=-1)).sum(dim=-1).reshape(-1).tolist()  # loss_value(..., "sum") per net
        totals = values if totals is None else [a + b for a, b in zip(totals, values, strict=True)]
        terms.append(sq)
    sq = terms[0] if len(terms) == 1 else torch.cat(terms, dim=-2)
    err = (sq.sum((-2, -1)) / (target_spread(t) if spread is None else spread)).reshape(-1).tolist()
    return [{"loss": total / n, "error": e} for total, e in zip(totals or [], err, strict=True)]


# What decides a run's numbers: uncommitted changes here make its commit "-dirty". Results, figures, the README
# and the benchmarks do not (a workflow that regenerates results/ would otherwise mark its own later runs dirty).
CODE_PATHS = ("src", "workflow", "Snakefile", "config.yaml", "pyproject.toml", "environment.yml")


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The checkout's commit, as :func:`commit_of` gives it, once per process: an ensemble job asks for every
    seed's provenance, and each ask is two ``git`` subprocesses."""
    return commit_of(Path(__file__).resolve().parents[2])


def commit_of(root: Path) -> str:
    """HEAD of the git checkout at ``root``, ``-dirty`` with uncommitted changes to the tracked files of
    ``CODE_PATHS``; "unknown" outside a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(",".join(keys) + "\n")
            for r in rows:
                f.write(",".join("" if r.get(k) is None else repr(r[k]) if isinstance(r.get(k), float) else str(r[k])
                                 for k in keys) + "\n")

    _atomic_write(path, write)


def _strict_json(obj: Any) -> Any:
    """NaN/inf become null (strict JSON); everything else unknown becomes its string."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj if obj is None or isinstance(obj, (str, int, bool)) else str(obj)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_provenance(run_cfg: Mapping[str, Any], chash: str, dev: torch.device, n_train: int, n_test: int) -> dict:
    """What a run's numbers come from (written into summary.json and the W&B config)."""
    return {
        "config_hash": chash,
        "git_commit": git_commit(),
        "seed": run_cfg["seed"],
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "n_train": n_train,
        "n_test": n_test,
    }


def extendable(state: Mapping[str, Any], run_cfg: Mapping[str, Any]) -> bool:
    """True if a checkpoint is of these settings but another number of epochs, and training can continue it:
    a finished run with fewer epochs, or an interrupted one that has not yet passed the new number.

    Nothing in training depends on the total number of epochs (the learning rate is constant, each epoch's order
    comes from (seed, epoch), schedules read the epoch number), so the first N epochs of a longer run are those
    of the N-epoch run: a finished run extended to M epochs is the M-epoch run. Not for runs that diverged,
    stopped early or ran a post-training probe (its result sits in the last row)."""
    old = state.get("run_config")
    if not old or not isinstance(old.get("epochs"), int) or old["epochs"] == run_cfg["epochs"] or run_cfg.get("probe"):
        return False
    if state.get("status") == "completed":
        # (a run evaluated every k-th epoch whose length is off that grid has a row the longer run would not)
        ok = state["epoch"] == old["epochs"] < run_cfg["epochs"] and not old["epochs"] % int(
            old.get("eval_every_epochs") or 1)
    else:
        ok = state.get("status") == "running" and state["epoch"] <= run_cfg["epochs"]
    return ok and config_hash({**old, "epochs": run_cfg["epochs"]}) == config_hash(run_cfg)


def continues(state: Mapping[str, Any], run_cfg: Mapping[str, Any], chash: str) -> bool:
    """True if training picks a checkpoint up: the same settings and still running, or :func:`extendable`."""
    return (state.get("config_hash") == chash and state.get("status") == "running") or extendable(state, run_cfg)


def earlier_segments(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The training segments a checkpoint records (one per process that trained the run; a killed run resumed
    at another commit has two). A checkpoint written before segments were recorded gives one of unknown commit."""
    if "segments" in state:
        return [dict(seg) for seg in state["segments"]]
    return [{"from_epoch": 0, "to_epoch": state["epoch"], "git_commit": "unknown (checkpoint without segments)"}]


def new_segment(start_epoch: int, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """This process's segment of the run: the epochs it trains, the code, host, device and CPU thread count it
    trains them on (a resume may change ``threads``, which is not part of the settings), and how many seeds the
    process trains at once (``ensemble_size``: 1 for train(), S for an ensemble job, whose
    ``wall_seconds`` every one of its S seeds records)."""
    return {"from_epoch": start_epoch, "to_epoch": start_epoch,
            **{k: provenance[k] for k in ("git_commit", "host", "device", "torch", "threads")},
            "ensemble_size": int(provenance.get("ensemble_size", 1)),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": 0.0}


#: In each run folder: the names of the W&B run folders that hold (or held) this run, written the moment a W&B run
#: opens, so a process killed before its first checkpoint still leaves the name for the next one to replace.
WANDB_RECORD = "wandb_runs.json"


def _earlier_wandb_runs(runs_parent: Path, out_dir: Path, old_wandb_dir: str | None) -> list[Path]:
    """This run's earlier W&B run folders: the names its record and its checkpoint give, looked up by name in
    ``runs_parent`` (where this process's W&B run lives). A path the checkpoint recorded elsewhere (a results
    folder copied or moved from another place) is never touched there: only its namesake here is."""
    names: list[str] = []
    try:
        names += json.loads((out_dir / WANDB_RECORD).read_text()).get("wandb_run_dirs", [])
    except (OSError, ValueError, AttributeError):
        pass
    if old_wandb_dir:
        names.append(Path(old_wandb_dir).name)
    found = []
    for name in dict.fromkeys(Path(n).name for n in names):
        folder = runs_parent / name
        if name.startswith(("offline-run-", "run-")) and folder.is_dir() and not folder.is_symlink():
            found.append(folder)
    return found


def _write_wandb_record(out_dir: Path, folders: list[Path]) -> None:
    _atomic_write(out_dir / WANDB_RECORD,
                  lambda tmp: tmp.write_text(json.dumps({"wandb_run_dirs": [f.name for f in folders]}, indent=2)))


def open_tracker(run_cfg: Mapping[str, Any], provenance: Mapping[str, Any], wandb_cfg: Mapping[str, Any] | None,
                 wandb_dir: Path, old_wandb_dir: str | None, rows: list[dict[str, Any]], out_dir: Path) -> WandbRun:
    """The run's W&B run, one per run folder: on resume (or on a fresh start over an earlier run) it replaces the
    earlier W&B run(s) of ``out_dir`` (:func:`_earlier_wandb_runs`) and replays the rows logged so far."""
    wandb_cfg = dict(wandb_cfg or {})
    tracker = WandbRun(
        wandb_dir=wandb_dir,
        project=wandb_cfg.get("project", "biocredit"),
        entity=wandb_cfg.get("entity"),
        mode=resolve_mode(wandb_cfg.get("mode")),
        name=f"{run_cfg['experiment']}-{run_cfg['method']}-seed{run_cfg['seed']}",
        group=run_cfg["experiment"],
        job_type=run_cfg["method"],
        config={**run_cfg, "provenance": provenance},
        tags=[run_cfg["scale"], run_cfg["rule"]],
        step_metric="examples_seen" if run_cfg["train"].get("eval_every_examples") else "epoch",
        summaries={"test_error": "min,last", "train_error": "min,last", "test_loss": "min,last",
                   "train_loss": "min,last"},
    )
    if tracker.run_dir:  # (disabled mode: no new run, nothing replaced)
        new = Path(tracker.run_dir)
        earlier = [f for f in _earlier_wandb_runs(new.parent, out_dir, old_wandb_dir) if f.name != new.name]
        _write_wandb_record(out_dir, [*earlier, new])  # a kill while deleting leaves every name for the next one
        for folder in earlier:
            shutil.rmtree(folder, ignore_errors=True)
        if earlier:
            _write_wandb_record(out_dir, [new])
    for r in rows:
        tracker.log(r)
    return tracker


def apply_update(net: MLP, opt: optim.Optimizer, rule: LearningRule, decay: float | None) -> None:
    """After the rule wrote p.grad: a tied net's shared gradient (:meth:`MLP.tie_gradients`), the optimiser
    step, the decoupled weight decay W ← (1 − α) W where configured, the tie restored exactly
    (:meth:`MLP.retie`), and the rule's own after-step hook (e.g. a sparsity mask)."""
    net.tie_gradients()
    opt.step()
    if decay is not None:
        with torch.no_grad():
            for W in net.W:
                W.mul_(decay)
    net.retie()
    rule.after_step(net)


def metrics_row(examples_seen: int, n: int, tr: Mapping[str, float], te: Mapping[str, float],
                va: Mapping[str, float] | None, extra: Mapping[str, float], eval_seconds: float) -> dict[str, Any]:
    """One metrics.csv row from the train/test(/valid) evaluations after ``examples_seen`` examples."""
    epoch = examples_seen // n if examples_seen % n == 0 else round(examples_seen / n, 6)
    valid = {"valid_loss": va["loss"], "valid_error": va["error"]} if va is not None else {}
    return {"epoch": epoch, "examples_seen": examples_seen,
            "train_loss": tr["loss"], "train_error": tr["error"], **valid, "test_loss": te["loss"],
            "test_error": te["error"], **extra, "eval_seconds": eval_seconds}


def diverged_row(epoch: int, n: int, train_seconds: float) -> dict[str, Any]:
    return {"epoch": epoch, "examples_seen": epoch * n, "train_loss": math.nan, "train_error": math.nan,
            "test_loss": math.nan, "test_error": math.nan, "epoch_seconds": train_seconds}


def angle_due(tc: Mapping[str, Any], k: int, seen: int) -> bool:
    """Whether step k of an epoch, taken after `seen` examples in all, measures the update angles: every
    ``angle_every``-th step, and every step within the run's first ``early_rows.until`` examples."""
    return k % tc["angle_every"] == 0 or seen < int((tc.get("early_rows") or {}).get("until", 0))


def row_due(tc: Mapping[str, Any], seen: int, epoch_end: int) -> bool:
    """Whether a metrics row is written inside an epoch after `seen` examples in all (the epoch's own row comes
    at `epoch_end`): every ``eval_every_examples``, and every ``early_rows.every`` examples up to
    ``early_rows.until`` (a finer start, where the angle falls from ~90°: Lillicrap et al. Fig. 1)."""
    if seen == epoch_end:
        return False
    every, early = tc.get("eval_every_examples"), tc.get("early_rows")
    return bool(every and seen % every == 0) or bool(early and seen <= early["until"] and seen % early["every"] == 0)


def window_angles(angle_sums: dict[str, list[float]]) -> dict[str, float]:
    """Mean (and sd, as Lillicrap's error bars) of the angles measured since the last row; empties the window."""
    out = {}
    for key, v in angle_sums.items():
        v_t = torch.tensor(v, dtype=torch.float64)
        out[key] = float(v_t.nanmean())
        if len(v) > 1:
            out[f"{key}_sd"] = float(v_t[~v_t.isnan()].std()) if (~v_t.isnan()).sum() > 1 else math.nan
    angle_sums.clear()
    return out


def peak_memory_mb(dev: torch.device) -> dict[str, float]:
    """Peak memory of this process so far: resident set size (RSS), and on CUDA the peak of tensor memory
    allocated on the run's device (``torch.cuda.max_memory_allocated``). In MB (2**20 bytes)."""
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def finish_run(run_cfg: Mapping[str, Any], out_dir: Path, rows: list[dict[str, Any]], status: str,
               diverged_at: int | None, wall_seconds: float, provenance: Mapping[str, Any],
               tracker: WandbRun, memory: Mapping[str, float] | None = None,
               segments: list[dict[str, Any]] | None = None, stop_reason: str | None = None) -> dict[str, Any]:
    """Write the run's summary.json and close its W&B run (after its final checkpoint is on disk).
    ``memory``: the process's peak memory (:func:`peak_memory_mb`), recorded as ``memory`` in both.
    ``segments``: the processes that trained it (:func:`new_segment`), recorded in the provenance; its
    ``git_commit`` is the last segment's, ``git_commits`` every segment's."""
    last = rows[-1]
    finite = [r for r in rows if math.isfinite(r.get("test_error", math.nan))]
    summary = {
        "experiment": run_cfg["experiment"], "method": run_cfg["method"], "rule": run_cfg["rule"],
        "seed": run_cfg["seed"], "scale": run_cfg["scale"], "status": status, "diverged_at_epoch": diverged_at,
        **({"stop_reason": stop_reason} if stop_reason else {}),
        "epochs": run_cfg["epochs"], "epochs_done": last["epoch"],
        "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "best_test_error": min((r["test_error"] for r in finite), default=math.nan),
        "wall_seconds": wall_seconds,
        "memory": dict(memory or {}),
        "provenance": {**provenance, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       **({"segments": segments,
                           "git_commits": list(dict.fromkeys(seg["git_commit"] for seg in segments))} if segments else {})},
        "run_config": dict(run_cfg),
        "wandb_run_dir": str(tracker.run_dir) if tracker.run_dir else None,
    }
    tracker.summary({"status": status, "best_test_error": summary["best_test_error"],
                     "final_test_error": last.get("test_error"), "wall_seconds": summary["wall_seconds"],
                     **summary["memory"], **{k: v for k, v in last.items() if k.startswith("probe_")},
                     **({"segments": segments} if segments else {})})
    tracker.finish(exit_code=0)
    _atomic_write(out_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(_strict_json(summary), indent=2)))
    return summary


def train(
    run_cfg: Mapping[str, Any],
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    device: str = "auto",
    wandb_cfg: Mapping[str, Any] | None = None,
    wandb_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    stop_when: Callable[[list[dict[str, Any]]], str | None] | None = None,
) -> dict[str, Any]:
    """Train one run described by a resolved run config (:func:`biocredit.config.resolve_run`).

    Writes ``metrics.csv``, ``checkpoint.pt`` and finally ``summary.json`` into ``out_dir``; returns the summary.
    ``stop_when``: called with the metrics rows after every evaluated epoch; a returned reason ends the run
    there (status ``stopped``, the reason in the summary), e.g. a stopping rule (:mod:`biocredit.selection`).
    It does not enter the config hash: the same run resumes under it or without it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    seed, tc = run_cfg["seed"], run_cfg["train"]
    chash = config_hash(run_cfg)
    tag = f"[{run_cfg['experiment']}/{run_cfg['method']}/seed{seed}]"

    generator = torch.Generator().manual_seed(seed)  # initial weights, feedback matrices, rule noise
    net = build_net(run_cfg["net"], generator).to(dev)
    rule = RULES[run_cfg["rule"]](net, run_cfg["params"], run_cfg["loss"], tc["reduction"], generator)
    opt = make_optimizer(net, tc)
    task = load_task(run_cfg, Path(data_dir), dev)

    rows: list[dict[str, Any]] = []
    start_epoch, wall_before, old_wandb_dir = 0, 0.0, None
    segments: list[dict[str, Any]] = []  # earlier processes' share of this run (see new_segment)
    # What the next metrics row summarises when rows are written every few epochs (scale setting
    # eval_every_epochs): the angles measured and the training seconds of the epochs since the last row.
    window: dict[str, Any] = {"angle_sums": {}, "seconds": 0.0, "epochs": 0}
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=dev, weights_only=False)
        extends = extendable(state, run_cfg)
        if continues(state, run_cfg, chash):
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["optimizer"])
            rule.load_state_dict(state["rule"])
            generator.set_state(state["generator"])
            rows, start_epoch, wall_before = state["rows"], state["epoch"], state["wall_seconds"]
            old_wandb_dir = state.get("wandb_run_dir")
            window = state.get("window") or window
            segments = earlier_segments(state)
            if extends and state["status"] == "completed":
                _log(f"{tag} extending the finished run of {start_epoch} epochs to {run_cfg['epochs']} (the same "
                     "settings otherwise: the same numbers as a run of that length from scratch)")
            else:
                _log(f"{tag} resuming from the checkpoint of epoch {start_epoch}" + (
                     f" (the run's length changed from {state['run_config']['epochs']} to {run_cfg['epochs']} epochs)"
                     if extends else ""))
        else:
            _log(f"{tag} ignoring a checkpoint of another config or a finished run ({ckpt_path}); starting afresh")
            old_wandb_dir = state.get("wandb_run_dir")  # its W&B run no longer describes this folder: replaced

    # From here the folder's metrics.csv and checkpoint are this run's; a summary.json left by an earlier run
    # (a finished run now extended, or one of other settings now trained afresh) no longer describes them, and
    # a crash before this run writes its own must not leave it standing beside the new rows.
    (out_dir / "summary.json").unlink(missing_ok=True)
    started = time.time()
    provenance = run_provenance(run_cfg, chash, dev, len(task.x_train), len(task.x_test))
    segments.append(new_segment(start_epoch, provenance))
    tracker = open_tracker(run_cfg, provenance, wandb_cfg, Path(wandb_dir or out_dir / "wandb"), old_wandb_dir, rows,
                           out_dir)

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        _write_csv(out_dir / "metrics.csv", rows)
        tracker.log(row)

    def checkpoint(epoch: int, status: str) -> None:
        segments[-1].update(to_epoch=epoch, wall_seconds=time.time() - started)
        state = {
            "config_hash": chash, "status": status, "epoch": epoch, "rows": rows,
            "net": net.state_dict(), "optimizer": opt.state_dict(), "rule": rule.state_dict(),
            "generator": generator.get_state(), "wall_seconds": wall_before + time.time() - started,
            "wandb_run_dir": str(tracker.run_dir) if tracker.run_dir else None, "run_config": dict(run_cfg),
            "window": window, "segments": segments,
        }
        _atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))

    n, bs, epochs = len(task.x_train), tc["batch_size"], run_cfg["epochs"]
    eval_every_epochs = int(run_cfg.get("eval_every_epochs") or 1)  # rows after every k-th epoch and the last

    # The logged train loss/error: on every training example, or (scale setting train_eval_subset) on a fixed
    # random subset of them, the same every epoch and on resume.
    x_tr_eval, t_tr_eval, l_tr_eval = task.x_train, task.t_train, task.labels_train
    if run_cfg.get("train_eval_subset") and run_cfg["train_eval_subset"] < n:
        keep = train_eval_indices(n, run_cfg["train_eval_subset"], seed).to(dev)
        x_tr_eval, t_tr_eval = task.x_train[keep], task.t_train[keep]
        l_tr_eval = task.labels_train[keep] if task.labels_train is not None else None

    def eval_row(examples_seen: int, extra: Mapping[str, float]) -> dict[str, Any]:
        t0 = time.time()
        # Stochastic nets: evaluation draws from a stream of its own, fixed by (seed, examples seen), so it is the
        # same on resume and never shifts the training stream. The training error comes from ONE pass (as the
        # authors' scripts monitor it), the test and validation errors from the net's test_passes.
        eval_gen = torch.Generator().manual_seed((seed + 1) * 7_919_993 + examples_seen)
        tr = evaluate(net, x_tr_eval, t_tr_eval, l_tr_eval, run_cfg["loss"], eval_gen, passes=1)
        te = evaluate(net, task.x_test, task.t_test, task.labels_test, run_cfg["loss"], eval_gen)
        va = None
        if task.x_valid is not None:
            va = evaluate(net, task.x_valid, task.t_valid, task.labels_valid, run_cfg["loss"], eval_gen)
        return metrics_row(examples_seen, n, tr, te, va, extra, time.time() - t0)

    if start_epoch == 0 and not rows:
        record(eval_row(0, {}))
    status, diverged_at, stop_reason = "completed", None, None
    if stop_when is not None and start_epoch > 0 and (stop_reason := stop_when(rows)):
        status, epochs = "stopped", start_epoch  # a resumed run whose rule had fired: nothing more to train
    decay = (1.0 - tc["weight_decay"]) ** bs if tc["weight_decay_mode"] == "decoupled" else None
    input_noise = float(tc.get("input_noise") or 0.0)  # sd of Gaussian noise added to each training input
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            t0 = time.time()
            order_gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # same order on resume
            perm = torch.randperm(n, generator=order_gen) if tc["shuffle"] else torch.arange(n)
            perm = perm.to(dev)

            def batches(perm: Tensor = perm):
                """This epoch's minibatches (x, target) in training order, for rules with a phase of their own."""
                for s in range(0, n, bs):
                    yield task.x_train[perm[s : s + bs]], task.t_train[perm[s : s + bs]]

            extra = dict(rule.on_epoch_start(net, epoch, batches))
            angle_sums: dict[str, list[float]] = window["angle_sums"]  # emptied by each row (window_angles)
            loss_acc = torch.zeros((), device=dev)
            seen = (epoch - 1) * n
            for k, s in enumerate(range(0, n, bs)):
                idx = perm[s : s + bs]
                x, t = task.x_train[idx], task.t_train[idx]
                if input_noise:  # a denoising objective: corrupt the input, keep the target (Lee et al. 2015 §3.5)
                    x = x + input_noise * torch.randn(x.shape, generator=generator).to(dev, x.dtype)
                net.zero_grad(set_to_none=True)
                measure = rule.compare_to_backprop and angle_due(tc, k, seen)
                # BP's reference replays the draws of the rule's forward pass (every rule draws it first): the
                # same input noise and unit samples, and the training stream never depends on angle_every
                replay = torch.Generator().set_state(generator.get_state()) if measure and net.transmits else None
                step = rule.compute_grads(net, x, t)
                if measure:
                    for key, v in update_angles(net, x, t, step, run_cfg["loss"], tc["reduction"],
                                                  pbp=tc.get("pbp_angle", False), generator=replay).items():
                        angle_sums.setdefault(key, []).append(v)
                apply_update(net, opt, rule, decay)
                loss_acc += step.loss
                seen += len(idx)
                if (k + 1) % DIVERGENCE_CHECK_EVERY == 0 and not math.isfinite(float(loss_acc)):
                    break
                if row_due(tc, seen, epoch * n):
                    record(eval_row(seen, window_angles(angle_sums)))
            train_seconds = time.time() - t0
            if not math.isfinite(float(loss_acc)):
                status, diverged_at = "diverged", epoch
                _log(f"{tag} DIVERGED in epoch {epoch}: the training loss became {float(loss_acc)}; run stopped")
                record(diverged_row(epoch, n, train_seconds))
                break
            window["seconds"] += train_seconds
            window["epochs"] += 1
            if epoch % eval_every_epochs and epoch != epochs:  # no row this epoch: the authors' scripts evaluate
                checkpoint(epoch, "running")                    # every 10th epoch only
                _log(f"{tag} epoch {epoch}/{epochs}  ({train_seconds:.1f} s train; evaluated every "
                     f"{eval_every_epochs} epochs)")
                continue
            # epoch_seconds: the mean training time of the epochs this row covers (one, unless eval_every_epochs)
            row = eval_row(epoch * n, {**extra, **window_angles(angle_sums),
                                       "epoch_seconds": window["seconds"] / window["epochs"]})
            window.update(seconds=0.0, epochs=0)
            record(row)
            checkpoint(epoch, "running")
            held = f"  valid_error {row['valid_error']:.4g}" if "valid_error" in row else ""
            _log(f"{tag} epoch {epoch}/{epochs}  train_loss {row['train_loss']:.4f}{held}  test_error "
                 f"{row['test_error']:.4g}  ({train_seconds:.1f} s train + {row['eval_seconds']:.1f} s eval)")
            if stop_when is not None and (stop_reason := stop_when(rows)):
                status = "stopped"
                _log(f"{tag} STOPPED after epoch {epoch}: {stop_reason}")
                break
    except BaseException:
        tracker.finish(exit_code=1)
        raise

    probe_cfg = run_cfg.get("probe")
    if probe_cfg and status == "completed" and "probe_test_error" not in rows[-1]:
        # A post-training evaluation of the frozen net (e.g. a linear classifier on an auto-encoder's code);
        # its numbers join the last row, so metrics.csv, summary.json and the tables carry them.
        from biocredit.probe import run_probe

        t0 = time.time()
        probe_gen = torch.Generator().manual_seed(seed * 1_000_003 + 999_983)  # its own stream: same on resume
        result = run_probe(net, task, probe_cfg, probe_gen)
        rows[-1] = {**rows[-1], **result, "probe_seconds": time.time() - t0}
        _write_csv(out_dir / "metrics.csv", rows)
        tracker.log({k: v for k, v in rows[-1].items() if k.startswith("probe_") or k == "epoch"})
        _log(f"{tag} probe ({probe_cfg['kind']} on layer {probe_cfg.get('layer', 1)}): "
             f"test error {result['probe_test_error']:.4g} %")

    checkpoint(rows[-1]["epoch"], status)
    return finish_run(run_cfg, out_dir, rows, status, diverged_at, wall_before + time.time() - started, provenance,
                      tracker, peak_memory_mb(dev), segments, stop_reason)
