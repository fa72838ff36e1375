"""Hyper-parameter selection where a paper gives none (documented in config.yaml).

Trains every method of an experiment on a *selection* seed (100, never used for results) for each
candidate value at quick scale and prints the final TRAINING error (NSE for synthetic tasks); the test
set is never looked at. The swept key is the learning rate by default, or any key of the resolved run
given as a dotted path with --key (e.g. params.feedback_init.scale, the scale of FA's B). Usage:
    python benchmarks/lr_sweep.py lillicrap_linear 0.001,0.002,0.005,0.01,0.02 [method,method]
    python benchmarks/lr_sweep.py lillicrap_teacher 0.1,0.5,1.0 fa3,fa4 --key params.feedback_init.scale
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch

from biocredit.config import load_config, resolve_run
from biocredit.train import train

SELECTION_SEED = 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("values", help="comma-separated candidate values")
    ap.add_argument("methods", nargs="?", help="comma-separated (default: every method)")
    ap.add_argument("--key", default="train.lr", help="dotted path in the resolved run config (default train.lr)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("config.yaml", {"scale": "quick"})
    exp, values, path = args.experiment, [float(v) for v in args.values.split(",")], args.key.split(".")
    label = path[-1] if path == ["train", "lr"] else args.key
    print(f"# {exp}: final training error on selection seed {SELECTION_SEED} (quick scale), sweeping {args.key}")
    only = args.methods.split(",") if args.methods else list(cfg["experiments"][exp]["methods"])
    for method in only:
        best = (math.inf, None)
        for value in values:
            rc = resolve_run(cfg, exp, method, SELECTION_SEED)
            node = rc
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
            with tempfile.TemporaryDirectory() as d:
                s = train(rc, d, cfg["data"]["dir"], wandb_cfg={"mode": "disabled"})
            err = s["final"]["train_error"] if s["status"] == "completed" else math.inf
            best = min(best, (err, value), key=lambda t: t[0])
            print(f"{method:20s} {label} {value:<8g} {s['status']:10s} train_error {err:.5g}", flush=True)
        print(f"{method:20s} BEST {label} {best[1]}", flush=True)


if __name__ == "__main__":
    main()
