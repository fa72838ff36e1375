"""Figures from the aggregated tables and the runs' final weights (matplotlib, PNG and PDF)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

if TYPE_CHECKING:
    import torch

# One palette across figures; Lillicrap's figures draw BP in black and FA in green.
DEFAULT_COLORS = {"backprop": "black", "feedback_alignment": "tab:green", "shallow": "tab:gray",
                  "node_perturbation": "tab:orange", "difference_target_prop": "tab:blue", "target_prop": "tab:red"}
METRIC_LABELS = {
    "test_error": "Test error (%)", "train_error": "Train error (%)", "test_loss": "Test loss",
    "train_loss": "Train loss", "angle_dh_1": "Δh ∠ Δh_BP (°)", "angle_dW_1": "ΔW₁ ∠ ΔW₁,BP (°)",
    "angle_dh_pbp_1": "Δh ∠ Δh_PBP (°)", "valid_error": "Validation error (%)",
    "probe_test_error": "Linear probe test error (%)",
    **{f"angle_dh_{i}": f"Δh{chr(0x2080 + i)} ∠ Δh{chr(0x2080 + i)},BP (°)" for i in range(2, 10)},
    **{f"angle_dW_{i}": f"ΔW{chr(0x2080 + i)} ∠ ΔW{chr(0x2080 + i)},BP (°)" for i in range(2, 10)},
}
X_LABELS = {"epoch": "Epoch", "examples_seen": "Examples seen"}


def method_color(method: Mapping[str, Any]) -> str | None:
    return method.get("color") or DEFAULT_COLORS.get(method["rule"])


def save_figure(fig: plt.Figure, out_stem: Path, provenance: str = "") -> list[Path]:
    """Write ``out_stem``.png and .pdf (dpi 150), with the provenance line at the bottom; close the figure."""
    if provenance:
        fig.text(0.01, 0.005, provenance, fontsize=5, color="0.4")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for p in paths:  # no creation date in the PDF: the same figure gives the same bytes (clean git diffs)
        fig.savefig(p, dpi=150, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def plot_curves(stats: pd.DataFrame, exp: Mapping[str, Any], fig_cfg: Mapping[str, Any], out_stem: Path,
                provenance: str = "") -> list[Path]:
    """Metric(s) vs epoch or examples seen, mean ± sd over seeds, one line per method, one panel per metric.

    With ``band: window`` the band is ± 2 sd of the metric within each logging window (averaged over
    seeds), as Lillicrap's angle plots; otherwise ± 1 sd over seeds, or the seeds' min–max range on a log
    axis (where mean − sd can be negative). Writes ``out_stem``.png and .pdf.
    """
    metrics = fig_cfg.get("metrics") or [fig_cfg["metric"]]
    x = fig_cfg.get("x", "epoch")
    methods = fig_cfg.get("methods") or list(exp["methods"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), squeeze=False)
    regression = exp["dataset"].startswith("synthetic_") or exp.get("target") == "input"  # errors are NSEs
    for k, (ax, metric) in enumerate(zip(axes[0], metrics, strict=True)):
        log_y = fig_cfg.get("log_y") and not metric.startswith("angle_")  # log axes for errors, never angles
        for mname in methods:
            method = exp["methods"][mname]
            d = stats[stats["method"] == mname].sort_values(x)
            if d.empty or f"{metric}_mean" not in d or d[f"{metric}_mean"].isna().all():
                continue
            if log_y:
                d = d[d[f"{metric}_mean"] > 0]
                if x == "epoch":
                    d = d[d["epoch"] > 0]  # the initial (chance-level) point squashes a log axis
            color = method_color(method)
            mean = d[f"{metric}_mean"]
            if fig_cfg.get("band") == "window" and f"{metric}_sd_mean" in d:
                half = 2 * d[f"{metric}_sd_mean"].fillna(0)
                lo, hi = mean - half, mean + half
            elif log_y and f"{metric}_min" in d:  # mean ± sd leaves a log axis; show the seeds' range there
                lo, hi = d[f"{metric}_min"], d[f"{metric}_max"]
            else:
                half = d[f"{metric}_sd"].fillna(0)
                lo, hi = mean - half, mean + half
            label = f"{method.get('label', mname)} (n = {int(d['n'].max())})"
            ax.plot(d[x], mean, color=color, label=label, marker="o" if len(d) < 12 else None, ms=3, lw=1.2)
            ax.fill_between(d[x], lo, hi, color=color, alpha=0.2, lw=0)
        shown = [r for r in exp.get("reported", []) if r["metric"] == metric and r["method"] in methods]
        for rep in shown:
            ax.axhline(rep["value"], color=method_color(exp["methods"][rep["method"]]), ls=":", lw=1)
        if log_y:
            ax.set_yscale("log")
        if metric.startswith("angle_"):
            ax.axhline(90, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel(X_LABELS.get(x, x))
        if x == "examples_seen":  # 400,000 examples: plain tick labels run into each other
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3), useMathText=True)
        label = METRIC_LABELS.get(metric, metric)
        if regression and metric.endswith("_error"):  # the error of a regression task is its NSE
            label = f"{metric.split('_')[0].capitalize()} NSE (normalised squared error)"
        ax.set_ylabel(label)
        if k == 0 or shown:
            ax.legend(fontsize=7, title="dotted: paper's value" if shown else None, title_fontsize=7)
    fig.suptitle(textwrap.fill(exp["title"], 60 * len(metrics)), fontsize=9)
    return save_figure(fig, out_stem, provenance)


def plot_receptive_fields(exp: Mapping[str, Any], fig_cfg: Mapping[str, Any], run_dirs: Mapping[str, Path],
                          out_stem: Path, provenance: str = "") -> list[Path]:
    """Incoming weights of ``n_units`` random hidden units (the same units in every panel) as 28×28 images:
    the initial weights, then each method's final weights (Lillicrap preprint, supplementary figure), and
    below them each method's change since its initialisation (what learning wrote into the weights).

    ``run_dirs`` maps method -> the run folder (seed 0) holding ``checkpoint.pt``.
    """
    import torch

    from biocredit.nets import build_net

    n_units = fig_cfg.get("n_units", 100)
    side = int(math.ceil(math.sqrt(n_units)))
    from biocredit.rules import RULES

    panels: list[tuple[str, torch.Tensor]] = []
    changes: list[tuple[str, torch.Tensor]] = []
    first = None
    for mname, d in run_dirs.items():
        state = torch.load(Path(d) / "checkpoint.pt", map_location="cpu", weights_only=False)
        run_cfg = state["run_config"]
        gen = torch.Generator().manual_seed(run_cfg["seed"])  # rebuild the run's own initial weights (and masks)
        init = build_net(run_cfg["net"], gen)
        RULES[run_cfg["rule"]](init, run_cfg["params"], run_cfg["loss"], run_cfg["train"]["reduction"], gen)
        if first is None:
            panels.append(("Initial", init.W[0].detach()))
            changes.append(("", torch.zeros_like(init.W[0])))
            first = run_cfg
        label = exp["methods"][mname].get("label", mname)
        panels.append((label, state["net"]["W.0"]))
        changes.append((f"{label}\nchange since initialisation", state["net"]["W.0"] - init.W[0].detach()))
    n_hidden, n_in = panels[0][1].shape
    img = int(math.isqrt(n_in))
    units = torch.randperm(n_hidden, generator=torch.Generator().manual_seed(0))[:n_units]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.8), squeeze=False)
    for ax, (title, W) in zip([*axes[0], *axes[1]], [*panels, *changes], strict=True):
        if not title:
            ax.axis("off")
            continue
        tiles = torch.zeros(side * (img + 1), side * (img + 1))
        for k, u in enumerate(units.tolist()):
            w = W[u].reshape(img, img)
            w = (w - w.mean()) / (w.std() + 1e-12)  # per-unit contrast, as receptive-field plots do
            r, c = divmod(k, side)
            tiles[r * (img + 1): r * (img + 1) + img, c * (img + 1): c * (img + 1) + img] = w
        ax.imshow(tiles.numpy(), cmap="gray", vmin=-3, vmax=3)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{exp['title']}: receptive fields of {n_units} random hidden units (seed {first['seed']})",
                 fontsize=9)
    return save_figure(fig, out_stem, provenance)


def _load_final_net(run_dir: Path):
    """(final net, resolved run config) from a run folder's ``checkpoint.pt``."""
    import torch

    from biocredit.nets import build_net

    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    run_cfg = state["run_config"]
    net = build_net(run_cfg["net"], torch.Generator().manual_seed(run_cfg["seed"]))
    net.load_state_dict(state["net"])
    return net.eval(), run_cfg


def _tile(ax, images: torch.Tensor, side: int, img: int, *, cmap: str = "gray", vmin: float = -3, vmax: float = 3) -> None:
    """Draw ``images`` (k × img·img) as a side × side mosaic with one-pixel gaps."""
    import torch

    tiles = torch.full((side * (img + 1), side * (img + 1)), float("nan"))
    for k, im in enumerate(images):
        r, c = divmod(k, side)
        tiles[r * (img + 1): r * (img + 1) + img, c * (img + 1): c * (img + 1) + img] = im.reshape(img, img)
    ax.imshow(tiles.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.axis("off")


def plot_reconstructions(exp: Mapping[str, Any], fig_cfg: Mapping[str, Any], run_dirs: Mapping[str, Path],
                         data_dir: Path, out_stem: Path, provenance: str = "") -> list[Path]:
    """The first ``n_images`` test images (top row) and their reconstructions z = g(f(x)) by each method's
    final auto-encoder (one row per method, clean inputs), Lee et al. 2015 §3.5. Each row's label carries the
    method's reconstruction loss on these images (½‖z − x‖², mean over them)."""
    import torch

    from biocredit import data as datasets
    from biocredit.train import preprocess, preprocess_stats

    n = fig_cfg.get("n_images", 10)
    rows: list[tuple[str, torch.Tensor]] = []
    for mname, d in run_dirs.items():
        net, run_cfg = _load_final_net(d)
        if not rows:
            images, _ = datasets.load_arrays(run_cfg["dataset"], data_dir, "test")
            stats = None
            if run_cfg["preprocess"] != "unit_interval":
                train_images, _ = datasets.load_arrays(run_cfg["dataset"], data_dir, "train")
                stats = preprocess_stats(train_images[: len(train_images) - (run_cfg.get("valid_size") or 0)],
                                         run_cfg["preprocess"])
            x = preprocess(images[:n], run_cfg["preprocess"], stats)
            rows.append(("Original (test)", x))
        with torch.no_grad():
            z = net(x)
        loss = float(0.5 * ((z - x) ** 2).sum(1).mean())
        rows.append((f"{exp['methods'][mname].get('label', mname)}\n½‖z − x‖² = {loss:.2f}", z))
    img = int(math.isqrt(x.shape[1]))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.0 * n + 1.6, 1.1 * len(rows) + 0.5), squeeze=False)
    for r, (label, ims) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(ims[c].reshape(img, img).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(textwrap.fill(f"{exp['title']}: test images and their reconstructions", 90), fontsize=9)
    return save_figure(fig, out_stem, provenance)


def plot_features(exp: Mapping[str, Any], fig_cfg: Mapping[str, Any], run_dirs: Mapping[str, Path],
                  out_stem: Path, provenance: str = "") -> list[Path]:
    """The features (filters) an auto-encoder learned: the incoming weights W₁ of ``n_units`` random hidden
    units (the same units in every panel, seed 0) as images, one column per method, per-unit contrast; below,
    each method's change since its initialisation (rebuilt from the run's seed, as the trainer draws it) and,
    for an untied auto-encoder, the decoder's filters (the same units' outgoing weights, columns of W₂; a tied
    one's are the encoder's, W₂ = W₁ᵀ, and are not drawn twice)."""
    import torch

    from biocredit.nets import build_net

    n_units = fig_cfg.get("n_units", 100)
    side = int(math.ceil(math.sqrt(n_units)))
    panels = []
    for mname, d in run_dirs.items():
        net, run_cfg = _load_final_net(d)
        init = build_net(run_cfg["net"], torch.Generator().manual_seed(run_cfg["seed"])).W[0].detach()
        label = exp["methods"][mname].get("label", mname)
        shown = [(f"{label}: encoder W₁", net.W[0].detach()),
                 (f"{label}: encoder, change since initialisation", net.W[0].detach() - init)]
        if net.n_layers == 2 and net.sizes[-1] == net.sizes[0] and not net.tied:  # untied: the decoder's too
            shown.append((f"{label}: decoder W₂ᵀ (columns of W₂)", net.W[1].detach().T))
        panels.append(shown)
    n_hidden, n_in = panels[0][0][1].shape
    img = int(math.isqrt(n_in))
    units = torch.randperm(n_hidden, generator=torch.Generator().manual_seed(0))[:n_units]
    n_rows = len(panels[0])
    fig, axes = plt.subplots(n_rows, len(panels), figsize=(3.4 * len(panels), 3.6 * n_rows), squeeze=False)
    for k, shown in enumerate(panels):
        for ax, (t, M) in zip([axes[r][k] for r in range(n_rows)], shown, strict=True):
            w = M[units]
            w = (w - w.mean(1, keepdim=True)) / (w.std(1, keepdim=True) + 1e-12)
            _tile(ax, w, side, img)
            ax.set_title(t, fontsize=8)
    fig.suptitle(textwrap.fill(f"{exp['title']}: filters of {n_units} random hidden units (seed "
                               f"{run_cfg['seed']})", 90), fontsize=9)
    return save_figure(fig, out_stem, provenance)
