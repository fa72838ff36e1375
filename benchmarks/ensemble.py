"""Wall time of 20 seeds trained as one stacked ensemble over the wall time of ONE seed (issue #6).

For each cell (experiment × method, quick-scale settings): the same training the workflow runs, threads=1, CPU.

* job:   ``python -m biocredit train ... --seeds 0-19`` vs ``... --seed 0``, each a fresh process as Snakemake
         starts it (interpreter, imports, W&B offline runs, data, training, evaluation, files) — what a
         workflow job costs;
* train: ``train_ensemble`` (20 seeds) vs ``train`` (seed 0) inside this one process, W&B disabled — the
         training loop alone, without the fixed start-up cost.

One warm-up of each, then R repeats, interleaved (single, ensemble, single, ...) so that drifts in machine
load hit both alike; the ratio of each repeat pair is reported as median and min–max.

    python benchmarks/ensemble.py [--cells lillicrap_linear/fa,...] [--repeats 3] [--seeds 20]
    python benchmarks/ensemble.py --write   # also writes seeds20_over_seed1 into benchmarks/results.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from biocredit.config import load_config, resolve_run
from biocredit.ensemble import train_ensemble
from biocredit.train import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# lillicrap_linear/fa: quick scale as it is (1 epoch of 10,000 examples, angles every 10, rows every 100).
# lillicrap_teacher/fa4: quick-scale settings but 1 epoch of its 3 (20,000 examples, rows every 5000).
# lillicrap_linear/node_perturbation: the rule that draws noise (one generator call per seed per step, all layers at once).
CELLS = {"lillicrap_linear/fa": {}, "lillicrap_linear/node_perturbation": {},
         "lillicrap_teacher/fa4": {"experiments.lillicrap_teacher.scales.quick.epochs": 1}}
SECTION = "## Seed ensembles (issue #6)"


def job_seconds(cell: str, seeds: str, root: Path, overrides: dict, env: dict) -> float:
    exp, method = cell.split("/")
    shutil.rmtree(root, ignore_errors=True)
    sets = [f"--set={k}={v}" for k, v in {"results_dir": str(root), "threads": 1, "device": "cpu", **overrides}.items()]
    flag = ["--seed", seeds] if "-" not in seeds else ["--seeds", seeds]
    cmd = [sys.executable, "-m", "biocredit", "train", "--config", str(REPO / "config.yaml"), "--scale", "quick",
           *sets, "--experiment", exp, "--method", method, *flag]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def train_seconds(cell: str, n_seeds: int, root: Path, overrides: dict) -> float:
    exp, method = cell.split("/")
    cfg = load_config(REPO / "config.yaml", {"scale": "quick", **overrides})
    run_cfgs = [resolve_run(cfg, exp, method, s) for s in range(n_seeds)]
    shutil.rmtree(root, ignore_errors=True)
    kw = dict(device="cpu", wandb_cfg={"mode": "disabled"}, threads=1)
    t0 = time.perf_counter()
    if n_seeds == 1:
        train(run_cfgs[0], root / "seed0", "data", **kw)
    else:
        train_ensemble(run_cfgs, [root / f"seed{s}" for s in range(n_seeds)], "data", **kw)
    return time.perf_counter() - t0


def measure(cell: str, n_seeds: int, repeats: int, tmp: Path) -> dict:
    overrides = CELLS.get(cell, {})
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    label = f"0-{n_seeds - 1}"
    out: dict = {"cell": cell, "seeds": n_seeds, "repeats": repeats, "overrides": overrides}
    for kind, one, many in (
        ("job", lambda: job_seconds(cell, "0", tmp / "one", overrides, env),
         lambda: job_seconds(cell, label, tmp / "many", overrides, env)),
        ("train", lambda: train_seconds(cell, 1, tmp / "one", overrides),
         lambda: train_seconds(cell, n_seeds, tmp / "many", overrides)),
    ):
        one(), many()  # warm-up (file caches, lazy imports)
        t1, tn = [], []
        for _ in range(repeats):
            t1.append(one())
            tn.append(many())
        ratios = [b / a for a, b in zip(t1, tn, strict=True)]
        out[kind] = {"seed1_seconds": statistics.median(t1), f"seeds{n_seeds}_seconds": statistics.median(tn),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "seed1_all": t1, f"seeds{n_seeds}_all": tn}
        print(f"{cell:24s} {kind:5s}  1 seed {out[kind]['seed1_seconds']:6.1f} s   {n_seeds} seeds "
              f"{out[kind][f'seeds{n_seeds}_seconds']:6.1f} s   ratio {out[kind]['ratio']:.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}, n = {repeats})", flush=True)
    return out


def to_markdown(rows: list[dict], n_seeds: int, machine: str, command: str) -> str:
    lines = [SECTION, "",
             f"Wall time of {n_seeds} seeds trained as one stacked ensemble (`biocredit train --seeds 0-{n_seeds - 1}`) "
             f"over one seed (`--seed 0`), same task and epochs, threads=1, CPU. *job*: a whole `biocredit train` "
             "process as Snakemake runs it (start-up, W&B offline runs, training, evaluation); *train*: the training "
             "function alone in one process (W&B off). Median of the per-repeat ratios (min–max), repeats "
             "interleaved after a warm-up.", "", f"Command: `{command}`  ", f"Machine: {machine}", "",
             f"| cell | settings | 1 seed job (s) | {n_seeds} seeds job (s) | job ratio (min–max) | 1 seed train (s) "
             f"| {n_seeds} seeds train (s) | train ratio (min–max) | repeats |", "|" + "---|" * 9]
    for r in rows:
        j, t = r["job"], r["train"]
        settings = "quick" + "".join(f", {k.split('.')[-1]} = {v}" for k, v in r["overrides"].items())
        lines.append(f"| {r['cell']} | {settings} | {j['seed1_seconds']:.1f} | {j[f'seeds{n_seeds}_seconds']:.1f} "
                     f"| {j['ratio']:.2f} ({j['ratio_min']:.2f}–{j['ratio_max']:.2f}) | {t['seed1_seconds']:.1f} "
                     f"| {t[f'seeds{n_seeds}_seconds']:.1f} | {t['ratio']:.2f} ({t['ratio_min']:.2f}–{t['ratio_max']:.2f}) "
                     f"| {r['repeats']} |")
    lines += ["", f"{n_seeds} separate one-seed jobs cost {n_seeds}× one job, so the ensemble is {n_seeds}/ratio times "
              "faster than them: " + ", ".join(f"{r['cell']} {n_seeds / r['job']['ratio']:.0f}× (job), "
                                               f"{n_seeds / r['train']['ratio']:.0f}× (train)" for r in rows) + ". "
              "A step of 20 stacked seeds is dispatched once, as one seed's is; what grows with the seeds is the "
              "arithmetic, above all the evaluation (the linear task's rows every 100 examples evaluate all 11,000 examples of every "
              "seed: 20× the arithmetic of one seed) and node perturbation's noise (one generator call per seed "
              "and step), hence the train-only ratios above 2 there. A job's fixed "
              "start-up (interpreter, torch, W&B) is paid once either way."]
    return "\n".join(lines) + "\n"


def write_section(md_path: Path, section: str) -> None:
    """Replace (or append) this benchmark's section of results.md, leaving the rest as it is."""
    text = md_path.read_text() if md_path.exists() else ""
    if SECTION in text:
        text = text[: text.index(SECTION)].rstrip("\n") + "\n"
    md_path.write_text(text + ("\n" if text else "") + section)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated experiment/method")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write seeds20_over_seed1 into benchmarks/results.{json,md}")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="biocredit-ensemble-bench-") as tmp:
        rows = [measure(c, args.seeds, args.repeats, Path(tmp)) for c in args.cells.split(",")]
    machine = f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}, device cpu"
    command = "python benchmarks/ensemble.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = to_markdown(rows, args.seeds, machine, command.strip())
    print(md)
    if args.write:
        key = f"seeds{args.seeds}_over_seed1"
        res = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
        res[key] = max(r["job"]["ratio"] for r in rows)  # the worst cell, whole jobs
        res[f"{key}_train_only"] = max(r["train"]["ratio"] for r in rows)
        res[f"{key}_cells"] = rows
        res[f"{key}_note"] = (f"{command.strip()}; {machine}; median of interleaved repeat ratios, worst cell; "
                              "job = whole `biocredit train` processes, train_only = the training function in one "
                              f"process; {time.strftime('%Y-%m-%d')}")
        (HERE / "results.json").write_text(json.dumps(res, indent=2))
        write_section(HERE / "results.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
