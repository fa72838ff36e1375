"""Lillicrap MNIST, seed 0 at paper settings: test error vs epoch of BP and of FA with the feedback scale
beta = 0.2 (before the held-out sweep) and beta = 100 (after it), from the committed metrics.csv files.

    python benchmarks/lillicrap_mnist_seed0_figure.py   # -> results/paper/extension/lillicrap_mnist_seed0_beta.{png,pdf} (not a workflow figure)
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from biocredit.figures import save_figure  # noqa: E402

P = Path("results/paper")
CURVES = [  # (label, colour, metrics files whose rows are joined by epoch: a run and its continuation)
    ("BP (ω = 0.2)", "tab:blue", [P / "runs/lillicrap_mnist/bp/seed0", P / "extension/lillicrap_mnist/bp/seed0"]),
    ("FA, β = 0.2 (superseded)", "tab:orange",
     [P / "superseded/lillicrap_mnist_beta0.2/fa/seed0", P / "extension/lillicrap_mnist/fa/seed0"]),
    ("FA, β = 100 (chosen on held-out data)", "tab:red", [P / "runs/lillicrap_mnist/fa/seed0"]),
]


def main() -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, color, folders in CURVES:
        rows: dict[int, float] = {}
        for folder in folders:
            if (folder / "metrics.csv").exists():
                rows |= {int(r["epoch"]): float(r["test_error"]) for r in csv.DictReader((folder / "metrics.csv").open())
                         if int(r["epoch"]) > 0}
        if rows:
            e = sorted(rows)
            ax.plot(e, [rows[k] for k in e], color=color, lw=1.3, label=f"{label}, {e[-1]} epochs")
    for value, name in ((2.4, "paper BP 2.4 %"), (2.1, "paper FA 2.1 %")):
        ax.axhline(value, color="0.5", ls=":" if "FA" in name else "--", lw=0.8, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_title("Lillicrap MNIST 784-1000-10, seed 0, η = 1e-3 (n = 1 per curve)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, P / "extension" / "lillicrap_mnist_seed0_beta")


if __name__ == "__main__":
    main()
