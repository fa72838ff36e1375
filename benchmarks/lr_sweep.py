"""Hyper-parameter selection where a paper gives none (documented in config.yaml).

Trains methods of an experiment on a *selection* seed (100, never used for results) for each candidate value
and prints the final error by which the value is chosen; the test set is never used for the choice. The swept
key is the learning rate by default, or any key of the resolved run given as a dotted path with --key (e.g.
params.feedback_init.scale, the scale of FA's B, or net.init.scale, the scale of the initial weights).

By default: quick scale, final TRAINING error (NSE for synthetic tasks). With --by speed the choice reads how fast
the error fell instead: the mean over the run's logged rows of log10 of the error floored at --floor (the area under
the log-error curve; lower is faster), for a paper whose rates were "chosen to optimise learning speed". For image datasets, --valid-size N
holds out the last N training images and the choice reads their error (valid_error) instead; --set overrides
config keys first (e.g. the number of epochs of the sweep) and --runs keeps each run's folder (metrics.csv,
and a checkpoint that lets an interrupted sweep resume) instead of a temporary one. Usage:
    python benchmarks/lr_sweep.py lillicrap_linear 0.001,0.002,0.005,0.01,0.02 [method,method]
    python benchmarks/lr_sweep.py lillicrap_teacher 0.1,0.5,1.0 fa3,fa4 --key params.feedback_init.scale
    python benchmarks/lr_sweep.py lillicrap_mnist 0.05,0.1,0.2,0.5,1.0 bp --key net.init.scale --scale paper \\
        --set experiments.lillicrap_mnist.scales.paper.epochs=50 --valid-size 10000 --runs results/paper/sweeps
    python benchmarks/lr_sweep.py lillicrap_mnist l2,decoupled bp,fa --key train.weight_decay_mode ...
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch

from biocredit.cli import parse_overrides
from biocredit.config import config_hash, load_config, resolve_run
from biocredit.train import train

SELECTION_SEED = 100


def value_of(text: str) -> int | float | str:
    """A candidate as typed: an integer, a number, or a word (e.g. a mode: l2,decoupled)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def shown(value: int | float | str) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else value


def finished(run: Path, rc: dict) -> dict | None:
    """The summary of a kept run that finished with exactly these settings (a rerun of the sweep reuses it).
    A summary.json always describes the folder's metrics: train() removes an earlier run's before writing rows."""
    path = run / "summary.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())
    return s if s.get("status") == "completed" and s["provenance"]["config_hash"] == config_hash(rc) else None


def speed(metrics_csv: Path, metric: str, floor: float) -> float:
    """Mean over the run's rows after the start of log10(max(metric, floor)): the area under the log-error curve
    per row. Lower is faster; an error below ``floor`` (rounding noise) counts as ``floor``."""
    import csv

    vals = [float(r[metric]) for r in csv.DictReader(metrics_csv.open()) if float(r["examples_seen"]) > 0]
    if not vals or any(not math.isfinite(v) for v in vals):
        return math.inf
    return sum(math.log10(max(v, floor)) for v in vals) / len(vals)


def plot(method_dir: Path, key: str, values: list, metric: str, best, title: str) -> None:
    """``<method_dir>/sweep_<key, dots as _>.{png,pdf}``: the chosen-by metric of every kept run vs epoch
    (training error dashed), so the record shows whether the choice was still changing at the sweep's end."""
    import csv

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biocredit.figures import save_figure

    fig, ax = plt.subplots(figsize=(7.4, 3.8))
    x = "epoch"
    for i, value in enumerate(values):
        rows = [r for r in csv.DictReader((method_dir / f"{key}={shown(value)}" / "metrics.csv").open())
                if float(r["epoch"]) > 0]
        if any(not float(r["epoch"]).is_integer() for r in rows):  # rows every k examples (synthetic tasks)
            x = "examples_seen"
        epochs = [float(r[x]) for r in rows]
        color = plt.cm.viridis(i / max(len(values) - 1, 1))
        ax.plot(epochs, [float(r[metric]) for r in rows], color=color, lw=2.0 if value == best else 1.0,
                label=f"{shown(value)}" + (" (chosen)" if value == best else ""))
        if metric != "train_error" and "train_error" in rows[0]:
            ax.plot(epochs, [float(r["train_error"]) for r in rows], color=color, lw=0.8, ls="--")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(f"{metric} (solid)" + ("; train_error (dashed)" if metric != "train_error" else ""))
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_title(title, fontsize=8)
    ax.legend(title=key, fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, method_dir / f"sweep_{key.replace('.', '_')}")  # (dots would read as a suffix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("values", help="comma-separated candidate values")
    ap.add_argument("methods", nargs="?", help="comma-separated (default: every method)")
    ap.add_argument("--key", default="train.lr", help="dotted path in the resolved run config (default train.lr)")
    ap.add_argument("--scale", default="quick", choices=["smoke", "quick", "paper"], help="default quick")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as the CLI's")
    ap.add_argument("--valid-size", type=int, default=0,
                    help="hold out the last N training examples and choose by their error (valid_error)")
    ap.add_argument("--runs", help="keep the runs under RUNS/<experiment>/<method>/<key>=<value> (resumable)")
    ap.add_argument("--by", choices=["final", "speed"], default="final",
                    help="choose by the final error (default) or by learning speed: the mean log10 error over the "
                         "run's rows, floored at --floor")
    ap.add_argument("--floor", type=float, default=1e-12, help="with --by speed: errors below it count as it")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("config.yaml", parse_overrides(args.set) | {"scale": args.scale})
    exp, path = args.experiment, args.key.split(".")
    values = [value_of(v) for v in args.values.split(",")]
    if exp not in cfg["experiments"]:
        raise SystemExit(f"experiment {exp!r}: not in config.yaml (one of {', '.join(cfg['experiments'])})")
    metric = "valid_error" if args.valid_size else "train_error"
    label = path[-1] if path == ["train", "lr"] else args.key
    held = f", the last {args.valid_size} training examples held out" if args.valid_size else ""
    print("# command: python benchmarks/lr_sweep.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    by = f"speed (mean log10 {metric} over the rows, floored at {args.floor:g})" if args.by == "speed" else f"final {metric}"
    print(f"# {exp}: {by} on selection seed {SELECTION_SEED} ({args.scale} scale{held}), sweeping "
          f"{args.key}" + (f"; overrides: {' '.join(args.set)}" if args.set else ""))
    only = args.methods.split(",") if args.methods else list(cfg["experiments"][exp]["methods"])
    for method in only:
        best = (math.inf, None)
        for value in values:
            rc = resolve_run(cfg, exp, method, SELECTION_SEED)
            if args.valid_size:
                rc["valid_size"] = args.valid_size
            node = rc
            for k in path[:-1]:
                if not isinstance(node.get(k), dict):
                    raise SystemExit(f"--key {args.key}: {k!r} is not a section of the resolved run config of "
                                     f"{exp}/{method}")
                node = node[k]
            old = node.get(path[-1])
            # a candidate takes the type of the value it replaces (1 for a float key is 1.0: the same run, the
            # same config hash, so kept runs are found again)
            node[path[-1]] = float(value) if isinstance(old, float) and isinstance(value, int) else value
            keep = Path(args.runs) / exp / method / f"{args.key}={shown(value)}" if args.runs else None
            s = finished(keep, rc) if keep else None
            with (nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory()) as d:
                if s is None:
                    s = train(rc, d, cfg["data"]["dir"], wandb_cfg={"mode": "disabled"}, threads=1)
                fast = speed(Path(d) / "metrics.csv", metric, args.floor) if args.by == "speed" else None
            final = s["final"]
            err = final[metric] if s["status"] == "completed" else math.inf
            score = err if fast is None else (fast if s["status"] == "completed" else math.inf)
            best = min(best, (score, value), key=lambda t: t[0])
            extra = (f"  train_error {final['train_error']:.5g}" if args.valid_size else "")
            if fast is not None:
                extra += f"  speed {score:.4g}"
            print(f"{method:20s} {label} {shown(value):<8s} {s['status']:10s} {metric} {err:.5g}{extra}", flush=True)
        print(f"{method:20s} BEST {label} {best[1]}", flush=True)
        if args.runs:
            plot(Path(args.runs) / exp / method, args.key, values, metric, best[1],
                 f"{exp}/{method}, selection seed {SELECTION_SEED}: {metric} while sweeping {args.key}")


if __name__ == "__main__":
    main()
