"""Learning-rate selection where a paper gives none (documented in config.yaml).

Trains every method of an experiment on a *selection* seed (100, never used for results) for each
candidate learning rate at quick scale and prints the final TRAINING error (NSE for synthetic tasks);
the test set is never looked at. Usage:
    python benchmarks/lr_sweep.py lillicrap_linear 0.001,0.002,0.005,0.01,0.02 [method,method]
"""

from __future__ import annotations

import math
import sys
import tempfile

import torch

from biocredit.config import load_config, resolve_run
from biocredit.train import train

SELECTION_SEED = 100


def main() -> None:
    exp, lrs = sys.argv[1], [float(v) for v in sys.argv[2].split(",")]
    torch.set_num_threads(1)
    cfg = load_config("config.yaml", {"scale": "quick"})
    print(f"# {exp}: final training error on selection seed {SELECTION_SEED} (quick scale)")
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else list(cfg["experiments"][exp]["methods"])
    for method in only:
        best = (math.inf, None)
        for lr in lrs:
            rc = resolve_run(cfg, exp, method, SELECTION_SEED)
            rc["train"]["lr"] = lr
            with tempfile.TemporaryDirectory() as d:
                s = train(rc, d, cfg["data"]["dir"], wandb_cfg={"mode": "disabled"})
            err = s["final"]["train_error"] if s["status"] == "completed" else math.inf
            best = min(best, (err, lr), key=lambda t: t[0])
            print(f"{method:20s} lr {lr:<8g} {s['status']:10s} train_error {err:.5g}", flush=True)
        print(f"{method:20s} BEST lr {best[1]}", flush=True)


if __name__ == "__main__":
    main()
