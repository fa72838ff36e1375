"""Figures from the aggregated tables (matplotlib, PNG and PDF)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# A consistent palette across figures: Lillicrap's figures draw BP in black and FA in green.
DEFAULT_COLORS = {"backprop": "black", "feedback_alignment": "tab:green", "shallow": "tab:gray"}
METRIC_LABELS = {"test_error": "Test error (%)", "train_error": "Train error (%)", "test_loss": "Test loss",
                 "train_loss": "Train loss"}


def plot_curves(stats: pd.DataFrame, exp: Mapping[str, Any], fig_cfg: Mapping[str, Any], out_stem: Path,
                provenance: str = "") -> list[Path]:
    """Metric vs epoch, mean ± sd over seeds, one line per method; writes ``out_stem``.png and .pdf."""
    metric = fig_cfg["metric"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for mname, method in exp["methods"].items():
        d = stats[stats["method"] == mname].sort_values("epoch")
        if d.empty:
            continue
        if fig_cfg.get("log_y"):
            d = d[d["epoch"] > 0]  # the initial (chance-level) point squashes a log axis
        color = method.get("color") or DEFAULT_COLORS.get(method["rule"])
        mean, sd = d[f"{metric}_mean"], d[f"{metric}_sd"].fillna(0)
        label = f"{method.get('label', mname)} (n = {int(d['n'].max())})"
        ax.plot(d["epoch"], mean, color=color, label=label, marker="o" if len(d) < 12 else None, ms=3)
        ax.fill_between(d["epoch"], mean - sd, mean + sd, color=color, alpha=0.2, lw=0)
    for rep in exp.get("reported", []):
        if rep["metric"] == metric and rep["method"] in exp["methods"]:
            m = exp["methods"][rep["method"]]
            ax.axhline(rep["value"], color=m.get("color") or DEFAULT_COLORS.get(m["rule"]), ls=":", lw=1)
    if fig_cfg.get("log_y"):
        ax.set_yscale("log")
    ax.set_xlabel("Epoch")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(exp["title"], fontsize=9)
    ax.legend(fontsize=8, title="dotted: paper's value", title_fontsize=7)
    if provenance:
        fig.text(0.01, 0.005, provenance, fontsize=5, color="0.4")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths
