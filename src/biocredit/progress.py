"""Where a scale's training stands (``biocredit progress``): for every experiment × method, which seeds have
finished, which are part-way (their epoch, and how long ago their checkpoint was last written, so a dead job
shows), which were made with other settings, and the training time still to go, estimated from the epoch
times the runs themselves measured.

Read-only: it reads each run folder's ``summary.json`` and ``checkpoint.pt`` and an ensemble job's
``checkpoint-seeds<a>-<b>.pt`` (beside the seed folders), and decides as the trainers do whether a
checkpoint is one training would pick up (:func:`biocredit.train.continues`). A run without a folder that the
scale's committed tables hold with the config's settings (``<experiment>_runs.csv``: method, seed, config hash)
counts as finished, as the workflow counts it (a clone has the tables but not the run folders): unless another
run of its experiment must train, since the aggregation then needs every run's folder and the workflow trains
those runs again. Paper-scale MNIST is days of
CPU time, run in pieces, on several machines or a cluster: this is the one place that says what is left.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biocredit.config import config_hash, resolve_run, run_dir, seeds, settings_changed

# torch (and biocredit.train) are imported where a checkpoint is read: the workflow's DAG reads table_hashes, and
# Snakemake parses the Snakefile for every run, dry run and cluster job

#: the epoch time of a run is the median over its last this many rows (training + evaluation seconds)
TIMING_ROWS = 20


@dataclass
class RunProgress:
    seed: int
    state: str  # "finished", "in the tables", "training", "to extend", "other settings" or "not started"
    epoch: int  # epochs done that count toward this run (0 unless finished, training or to extend)
    epochs: int  # the config's length for this run
    seconds_per_epoch: float | None  # measured by the run (an ensemble job's epoch: the whole job's)
    written: float | None  # when its checkpoint (or summary) was last written (time.time() scale)
    job: str  # the training job that continues it: its run folder, or an ensemble's checkpoint
    detail: str = ""  # the run's status if not "completed"; for other settings, what differs


def epoch_seconds(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Median seconds per epoch over a run's last rows (None before its first epoch): a row's training seconds
    per epoch (``epoch_seconds``, the mean over the epochs it covers) plus its evaluation's ``eval_seconds``
    spread over those epochs (a run evaluated every k-th epoch writes a row, and evaluates, every k epochs)."""
    times, before = [], None
    for r in rows[-TIMING_ROWS - 1:]:
        try:
            epoch = int(float(r["epoch"]))
            t = float(r.get("epoch_seconds") or "nan") + float(r.get("eval_seconds") or 0.0) / max(
                epoch - (before if before is not None else epoch - 1), 1)
        except (KeyError, TypeError, ValueError):
            continue
        if before is not None and t == t and epoch > 0:
            times.append(t)
        before = epoch
    return statistics.median(times) if times else None


def _load(path: Path) -> dict[str, Any]:
    import torch

    # mmap: the state's tensors stay on disk; only the small bookkeeping (rows, settings) is read
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _ensemble_views(method_dir: Path, cache: dict[Path, dict[int, dict[str, Any]]]) -> dict[int, tuple[Path, dict]]:
    """Per seed, the state an ensemble job's checkpoint holds for it, in the form of a run's checkpoint."""
    views: dict[int, tuple[Path, dict]] = {}
    for path in sorted(method_dir.glob("checkpoint-seeds*.pt")):
        if path not in cache:
            st = _load(path)
            cache[path] = {s: {"config_hash": st["config_hashes"][i], "status": st["status"], "epoch": st["epoch"],
                               "run_config": st["run_configs"][i], "rows": st["rows"][i]}
                           for i, s in enumerate(st["seeds"])}
        for s, view in cache[path].items():
            views.setdefault(s, (path, view))
    return views


def table_hashes(cfg: Mapping[str, Any], experiment: str) -> dict[tuple[str, int], str]:
    """{(method, seed): config hash} of the runs the scale's tables hold for the experiment (empty without them).
    The workflow reads them the same way (workflow/rules/common.smk, ``awaited_runs``)."""
    path = Path(cfg["results_dir"]) / cfg["scale"] / "tables" / f"{experiment}_runs.csv"
    try:
        return {(r["method"], int(r["seed"])): r["config_hash"] for r in _csv_rows(path)}
    except (OSError, KeyError, ValueError):  # unreadable: as if it held no run
        return {}


def run_progress(cfg: Mapping[str, Any], experiment: str, method: str, seed: int,
                 ensembles: dict[Path, dict[int, dict[str, Any]]] | None = None,
                 tables: Mapping[tuple[str, int], str] | None = None) -> RunProgress:
    """One run's state at the config's scale (see :class:`RunProgress`); ``tables``: :func:`table_hashes`."""
    from biocredit.train import continues

    ensembles = {} if ensembles is None else ensembles
    d = run_dir(Path(cfg["results_dir"]), cfg["scale"], experiment, method, seed)
    rc = resolve_run(cfg, experiment, method, seed)
    chash, epochs = config_hash(rc), int(rc["epochs"])
    changed: list[str] = []
    summary_path = d / "summary.json"
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        changed = settings_changed(cfg, experiment, method, seed, s["run_config"]) if s.get("run_config") else []
        if not changed:
            rows = _csv_rows(d / "metrics.csv")
            return RunProgress(seed, "finished", int(s["epochs_done"]), epochs, epoch_seconds(rows),
                               summary_path.stat().st_mtime, str(d),
                               "" if s["status"] == "completed" else s["status"])
    candidates = []
    if (d / "checkpoint.pt").exists():
        candidates.append((d / "checkpoint.pt", _load(d / "checkpoint.pt")))
    view = _ensemble_views(d.parent, ensembles).get(seed) if d.parent.is_dir() else None
    if view:
        candidates.insert(0, view)  # an ensemble job in progress is further on than the seed's own checkpoint
    for path, st in candidates:
        if continues(st, rc, chash):
            running = st.get("status") == "running" and st.get("config_hash") == chash
            return RunProgress(seed, "training" if running else "to extend", int(st["epoch"]), epochs,
                               epoch_seconds(st.get("rows") or []), path.stat().st_mtime,
                               str(path if path.name != "checkpoint.pt" else d))
    if changed:
        return RunProgress(seed, "other settings", 0, epochs, None, summary_path.stat().st_mtime, str(d),
                           "; ".join(changed[:2]))
    if not d.exists() and (tables or {}).get((method, seed)) == chash:
        return RunProgress(seed, "in the tables", epochs, epochs, None, None, str(d))
    return RunProgress(seed, "not started", 0, epochs, None, None, str(d))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cell_progress(cfg: Mapping[str, Any], experiment: str, method: str,
                  tables: Mapping[tuple[str, int], str] | None = None) -> list[RunProgress]:
    cache: dict[Path, dict[int, dict[str, Any]]] = {}
    return [run_progress(cfg, experiment, method, s, cache, tables) for s in seeds(cfg, experiment)]


def experiment_progress(cfg: Mapping[str, Any], experiment: str) -> tuple[dict[str, list[RunProgress]], int]:
    """Every cell's runs, as the workflow will train them, and how many runs the tables hold that train again.

    A run only in the tables (no folder) is finished while nothing else of its experiment has to train; once
    something does, the experiment's aggregation needs every run's folder, so the workflow trains it again
    (workflow/rules/common.smk, ``awaited_runs``): it then reads "not started"."""
    tables = table_hashes(cfg, experiment)
    cells = {m: cell_progress(cfg, experiment, m, tables) for m in cfg["experiments"][experiment]["methods"]}
    runs = [r for rs in cells.values() for r in rs]
    retrain = 0
    if any(r.state not in ("finished", "in the tables") for r in runs):
        for r in runs:
            if r.state == "in the tables":
                r.state, r.epoch, retrain = "not started", 0, retrain + 1
    return cells, retrain


def seconds_left(runs: Sequence[RunProgress]) -> tuple[float, int]:
    """(estimated training seconds still to go for the cell, runs without an estimate). Each job counted
    once: the seeds of one ensemble job share its epochs. A run not started (or made with other settings) is
    estimated at the median epoch time its cell's runs measured, one job per run; none measured, no estimate."""
    measured = [r.seconds_per_epoch for r in runs if r.seconds_per_epoch]
    typical = statistics.median(measured) if measured else None
    total, unknown, jobs = 0.0, 0, set()
    for r in runs:
        if r.state in ("finished", "in the tables") or r.job in jobs:
            continue
        jobs.add(r.job)
        per = r.seconds_per_epoch or typical
        if per is None:
            unknown += 1
        else:
            total += per * (r.epochs - r.epoch)
    return total, unknown


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _tables_note(cfg: Mapping[str, Any], experiment: str) -> str:
    """What the scale's committed tables hold for the experiment (run folders are not committed: in a fresh
    clone every run reads "not started" while its tables hold the numbers)."""
    path = Path(cfg["results_dir"]) / cfg["scale"] / "tables" / f"{experiment}_provenance.json"
    if not path.exists():
        return ""
    prov = json.loads(path.read_text())
    note = f"; its tables ({path.parent}) hold {prov['runs']} run(s)"
    if prov.get("partial"):  # such tables ask the workflow for the runs they lack (workflow/rules/common.smk)
        note += f" (partial: `snakemake --config scale={cfg['scale']} {experiment}` trains the rest)"
    return note


def report(cfg: Mapping[str, Any], experiments: Sequence[str], now: float | None = None) -> list[str]:
    """The progress report's lines: one block per experiment, one line per method, then the totals."""
    now = time.time() if now is None else now
    lines = [f"scale {cfg['scale']} ({Path(cfg['results_dir']) / cfg['scale'] / 'runs'}):"]
    n_all = n_done = n_unknown = 0
    left_all = 0.0
    for exp in experiments:
        ss = seeds(cfg, exp)
        methods = list(cfg["experiments"][exp]["methods"])
        cells, retrain = experiment_progress(cfg, exp)
        epochs = {r.epochs for runs in cells.values() for r in runs}
        lengths = sorted(epochs)
        lines.append(f"{exp}: {'/'.join(map(str, lengths))} epoch{'s' * (lengths != [1])}, {len(ss)} "
                     f"seed{'s' * (len(ss) != 1)} × {len(methods)} method{'s' * (len(methods) != 1)}"
                     + _tables_note(cfg, exp))
        if retrain:
            lines.append(f"  ({retrain} run(s) the tables hold have no run folder and train again: the aggregation "
                         "needs every run's folder once another run of the experiment trains)")
        width = max(map(len, methods))
        for m, runs in cells.items():
            counts: dict[str, int] = {}
            for r in runs:
                counts[r.state] = counts.get(r.state, 0) + 1
            done = counts.get("finished", 0) + counts.get("in the tables", 0)
            parts = [f"finished {done}/{len(runs)}" + (f" ({counts['in the tables']} only in the tables: no run folder)"
                                                       if counts.get("in the tables") else "")]
            parts += [f"{k} {counts[k]}" for k in ("training", "to extend", "other settings", "not started")
                      if counts.get(k)]
            left, unknown = seconds_left(runs)
            if unknown and not left:
                parts.append("left: no epoch time measured yet")
            elif done < len(runs):
                parts.append(f"left ≈ {_duration(left)}" + (f" + {unknown} run(s) without a measured epoch time"
                                                            if unknown else ""))
            lines.append(f"  {m:<{width}}  " + ", ".join(parts))
            for r in runs:
                if r.state in ("training", "to extend"):
                    ago = f", last written {_duration(max(now - r.written, 0.0))} ago" if r.written else ""
                    per = f", {r.seconds_per_epoch:.1f} s/epoch" if r.seconds_per_epoch else ""
                    lines.append(f"  {'':<{width}}    seed {r.seed}: {r.state}, epoch {r.epoch}/{r.epochs} "
                                 f"({100 * r.epoch / r.epochs:.0f} %){per}{ago}")
                elif r.state == "other settings":
                    lines.append(f"  {'':<{width}}    seed {r.seed}: finished with other settings ({r.detail})")
                elif r.state == "finished" and r.detail:
                    lines.append(f"  {'':<{width}}    seed {r.seed}: finished, {r.detail}")
            n_all += len(runs)
            n_done += done
            left_all += left
            n_unknown += unknown
    lines.append(f"total: {n_done}/{n_all} runs finished; training left ≈ {_duration(left_all)} one job at a time "
                 "at the epoch times the runs measured (an ensemble job's seeds counted once)"
                 + (f", plus {n_unknown} run(s) of cells with no measured epoch" if n_unknown else ""))
    return lines
