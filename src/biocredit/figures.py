"""Figures from the aggregated tables and the runs' final weights (matplotlib, PNG and PDF)."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation  # noqa: E402

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


class PlainLogFormatter(LogFormatterSciNotation):
    """A log axis's tick labels as plain numbers ("2", "0.5", "20") where the whole axis lies in [1e-4, 1e5].

    Matplotlib writes "2 × 10⁰" for the minor ticks of an axis that spans less than two decades (Fig. 2a's test
    error, 1.5-20 %); a paper writes 2. An axis reaching further (an NSE falling to 1e-14) keeps powers of ten
    throughout, so one axis never mixes the two styles. Which ticks get a label stays matplotlib's choice.
    """

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = super().__call__(x, pos)
        lo, hi = sorted(self.axis.get_view_interval()) if self.axis is not None else (x, x)
        if not label or not (1e-4 <= lo and hi <= 1e5):
            return label
        return f"{x:.6g}"


def plain_log_y(ax: plt.Axes) -> None:
    """A log y axis labelled by :class:`PlainLogFormatter` (major and minor ticks)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def method_color(method: Mapping[str, Any]) -> str | None:
    return method.get("color") or DEFAULT_COLORS.get(method["rule"])


def save_figure(fig: plt.Figure, out_stem: Path, provenance: str = "") -> list[Path]:
    """Write ``out_stem``.png and .pdf (dpi 150), with the provenance line at the bottom; close the figure."""
    lines = textwrap.wrap(provenance, int(fig.get_figwidth() * 25)) if provenance else []  # ~25 chars an inch
    if lines:
        fig.text(0.01, 0.005, "\n".join(lines), fontsize=5, color="0.4", va="bottom")
    fig.tight_layout(rect=(0, 0.005 + 0.015 * max(len(lines), 1), 1, 1))
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
        off_axis = []  # methods whose metric is 0 at every point a log axis could show
        absent = []  # methods without a finished run that logged this metric (partial tables)
        for mname in methods:
            method = exp["methods"][mname]
            d = stats[stats["method"] == mname].sort_values(x)
            if d.empty or f"{metric}_mean" not in d or d[f"{metric}_mean"].isna().all():
                absent.append(method.get("label", mname))
                continue
            if log_y:
                d = d[d[f"{metric}_mean"] > 0]
                if x == "epoch":
                    d = d[d["epoch"] > 0]  # the initial (chance-level) point squashes a log axis
                if d.empty:  # e.g. a training error of exactly 0 % from the first evaluation on: say so instead
                    off_axis.append(method.get("label", mname))
                    continue
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
            # methods the paper gives the same value (Fig. 2a: BP and sparse FA, 2.4 %) share one line of
            # interleaved dots, each in its own colour, so that no line hides another
            same = [r["method"] for r in shown if r["value"] == rep["value"]]
            k_same = same.index(rep["method"])
            ax.axhline(rep["value"], color=method_color(exp["methods"][rep["method"]]), lw=1,
                       ls=(1.5 * k_same, (1.0, 1.5 * len(same) - 1.0)) if len(same) > 1 else ":")
        if log_y:
            plain_log_y(ax)
        if off_axis:
            ax.text(0.02, 0.02, textwrap.fill("0 at every point after the start, so not on this log axis: "
                                              + "; ".join(off_axis), 70),
                    transform=ax.transAxes, fontsize=6, va="bottom", color="0.25")
        if absent and len(absent) == len(methods):  # an empty panel says why (figures with data are unchanged)
            ax.text(0.98, 0.98, textwrap.fill("no finished run: " + "; ".join(absent), 50), transform=ax.transAxes,
                    fontsize=7, ha="right", va="top", color="0.25")
        if metric.startswith("angle_"):
            ax.axhline(90, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel(X_LABELS.get(x, x))
        if x == "examples_seen":  # 400,000 examples: plain tick labels run into each other
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3), useMathText=True)
        label = METRIC_LABELS.get(metric, metric)
        if regression and metric.endswith("_error"):  # the error of a regression task is its NSE
            label = f"{metric.split('_')[0].capitalize()} NSE (normalised squared error)"
        ax.set_ylabel(label)
        if (k == 0 or shown) and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, title="dotted: paper's value" if shown else None, title_fontsize=7)
    fig.suptitle(textwrap.fill(fig_cfg.get("title") or exp["title"], 60 * len(metrics)), fontsize=9)
    return save_figure(fig, out_stem, provenance)


# --- Figures drawn from the runs' weights -------------------------------------------------------------------------
# Run folders (checkpoints) are not committed, so these figures are drawn in two steps: `figure_data` reads the
# seed-0 checkpoints (and, for reconstructions, the test images) and keeps exactly what the figure shows in a small
# .npz under results/<scale>/figure_data/, which is committed beside the tables; `plot_weight_figure` draws from
# that file alone. A fresh clone can thus redraw every committed figure without retraining anything.


def _pack_rows(M: torch.Tensor) -> dict[str, Any]:
    """Rows of ``M`` (units × pixels) stored compactly: each row z-scored (float16) with its mean and sd (float32).

    The figures draw every row with its own contrast, so the float16 z-scores are what is shown, to far better
    than the 256 grey levels of the image; mean + sd·z gives the weights back (to float16's relative precision).
    A constant row (no change since initialisation, say) keeps sd 0 and z-scores 0."""
    import torch

    M = M.detach().to(torch.float64)
    mean, sd = M.mean(-1, keepdim=True), M.std(-1, keepdim=True)
    z = torch.where(sd > 0, (M - mean) / sd.clamp_min(1e-300), torch.zeros_like(M))
    return {"z": z.to(torch.float16).numpy(), "mean": mean.squeeze(-1).to(torch.float32).numpy(),
            "sd": sd.squeeze(-1).to(torch.float32).numpy()}


def _load_final_net(run_dir: Path):
    """(final net, resolved run config) from a run folder's ``checkpoint.pt``."""
    import torch

    from biocredit.nets import build_net

    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    run_cfg = state["run_config"]
    net = build_net(run_cfg["net"], torch.Generator().manual_seed(run_cfg["seed"]))
    net.load_state_dict(state["net"])
    return net.eval(), run_cfg


def _initial_net(run_cfg: Mapping[str, Any]):
    """The run's own initial net, rebuilt from its seed as the trainer draws it (the rule's setup included: it
    may draw from the same generator, e.g. sparse FA's masks, so it must run to leave the weights as trained)."""
    import torch

    from biocredit.nets import build_net
    from biocredit.rules import RULES

    gen = torch.Generator().manual_seed(run_cfg["seed"])
    init = build_net(run_cfg["net"], gen)
    RULES[run_cfg["rule"]](init, run_cfg["params"], run_cfg["loss"], run_cfg["train"]["reduction"], gen)
    return init


def _random_units(n_hidden: int, n_units: int):
    import torch

    return torch.randperm(n_hidden, generator=torch.Generator().manual_seed(0))[:n_units]


def figure_data(exp: Mapping[str, Any], fig_cfg: Mapping[str, Any], run_dirs: Mapping[str, Path],
                data_dir: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, meta) of a weight figure, read from the runs' ``checkpoint.pt`` (``run_dirs``: method -> the
    run folder of the first seed). Written by :func:`save_figure_data`, drawn by :func:`plot_weight_figure`."""
    import torch

    kind = fig_cfg["kind"]
    arrays: dict[str, Any] = {}
    meta: dict[str, Any] = {"kind": kind, "figure": fig_cfg["name"], "title": exp["title"],
                            "runs": {m: str(d) for m, d in run_dirs.items()}}
    labels = {m: exp["methods"][m].get("label", m) for m in run_dirs}
    if kind == "reconstructions":
        from biocredit import data as datasets
        from biocredit.train import preprocess, preprocess_stats

        n = fig_cfg.get("n_images", 10)
        rows, row_labels = [], []
        for mname, d in run_dirs.items():
            net, run_cfg = _load_final_net(d)
            if not rows:
                images, _ = datasets.load_arrays(run_cfg["dataset"], Path(data_dir or "data"), "test")
                stats = None
                if run_cfg["preprocess"] != "unit_interval":
                    train_images, _ = datasets.load_arrays(run_cfg["dataset"], Path(data_dir or "data"), "train")
                    stats = preprocess_stats(train_images[: len(train_images) - (run_cfg.get("valid_size") or 0)],
                                             run_cfg["preprocess"])
                x = preprocess(images[:n], run_cfg["preprocess"], stats)
                rows.append(x)
                row_labels.append("Original (test)")
                meta["seed"] = run_cfg["seed"]
            with torch.no_grad():
                z = net(x)
            loss = float(0.5 * ((z - x) ** 2).sum(1).mean())
            rows.append(z)
            row_labels.append(f"{labels[mname]}\n½‖z − x‖² = {loss:.2f}")
        arrays["images"] = torch.stack(rows).to(torch.float32).numpy()
        meta["row_labels"] = row_labels
        return arrays, meta

    n_units = fig_cfg.get("n_units", 100)
    titles: list[list[str]] = []  # one column of panels per entry
    mats: list[list[torch.Tensor]] = []
    for mname, d in run_dirs.items():
        net, run_cfg = _load_final_net(d)
        meta.setdefault("seed", run_cfg["seed"])
        init = _initial_net(run_cfg).W[0].detach()
        final = net.W[0].detach()
        if kind == "receptive_fields":
            if not mats:
                titles.append(["Initial", ""])
                mats.append([init, torch.zeros_like(init)])
            titles.append([labels[mname], f"{labels[mname]}\nchange since initialisation"])
            mats.append([final, final - init])
        elif kind == "features":
            col_t = [f"{labels[mname]}: encoder W₁", f"{labels[mname]}: encoder, change since initialisation"]
            col_m = [final, final - init]
            if net.n_layers == 2 and net.sizes[-1] == net.sizes[0] and not net.tied:  # untied: the decoder's too
                col_t.append(f"{labels[mname]}: decoder W₂ᵀ (columns of W₂)")
                col_m.append(net.W[1].detach().T)
            titles.append(col_t)
            mats.append(col_m)
        else:
            raise ValueError(f"figure kind {kind!r} is not drawn from weights")
    units = _random_units(mats[0][0].shape[0], n_units)
    packed = [[_pack_rows(M[units]) for M in col] for col in mats]
    for key in ("z", "mean", "sd"):
        arrays[key] = np.stack([np.stack([p[key] for p in col]) for col in packed])  # columns × rows × units (× pixels)
    arrays["units"] = units.numpy()
    meta["titles"] = titles
    return arrays, meta


def save_figure_data(path: Path, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """``arrays`` and ``meta`` (JSON) in one compressed .npz, loadable without pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:  # a file handle: numpy would otherwise append .npz to a name without it
        np.savez_compressed(fh, meta=np.array(json.dumps(meta, ensure_ascii=False)), **arrays)
    return path


def load_figure_data(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
        meta = json.loads(str(f["meta"]))
    return arrays, meta


def _tile(ax, images, side: int, img: int, *, cmap: str = "gray", vmin: float = -3, vmax: float = 3,
          gap: float = np.nan) -> None:
    """Draw ``images`` (k × img·img) as a side × side mosaic with one-pixel gaps of value ``gap`` (nan: blank)."""
    tiles = np.full((side * (img + 1), side * (img + 1)), gap, dtype=np.float32)
    for k, im in enumerate(images):
        r, c = divmod(k, side)
        tiles[r * (img + 1): r * (img + 1) + img, c * (img + 1): c * (img + 1) + img] = np.reshape(im, (img, img))
    ax.imshow(tiles, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.axis("off")


def plot_weight_figure(path: Path, out_stem: Path, provenance: str = "", title: str | None = None) -> list[Path]:
    """Draw a figure from its saved data (:func:`figure_data`); dispatches on the kind recorded in the file.
    ``title``: the figure's own (config ``figures[].title``), else the experiment's title saved with the data."""
    arrays, meta = load_figure_data(path)
    if title:
        meta = {**meta, "title": title}
    kind = meta["kind"]
    if kind == "reconstructions":
        return _plot_reconstructions(arrays, meta, out_stem, provenance)
    z, titles = arrays["z"], meta["titles"]
    n_cols, n_rows, n_units, n_in = z.shape
    side, img = int(math.ceil(math.sqrt(n_units))), int(math.isqrt(n_in))
    if kind == "receptive_fields":
        # Lillicrap preprint, supplementary figure: initial weights, then each method's final weights (top) and
        # what learning wrote into them (bottom)
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 7.6), squeeze=False)  # room for 2-line titles
        caption = f"{meta['title']}: receptive fields of {n_units} random hidden units (seed {meta['seed']})"
    else:
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 3.6 * n_rows), squeeze=False)
        caption = textwrap.fill(f"{meta['title']}: filters of {n_units} random hidden units (seed {meta['seed']})", 90)
    for c in range(n_cols):
        for r in range(n_rows):
            ax = axes[r][c]
            if not titles[c][r]:
                ax.axis("off")
                continue
            # per-unit contrast, as receptive-field plots do; Lillicrap's grid has mid-grey gaps
            _tile(ax, z[c, r].astype("float32"), side, img, gap=0.0 if kind == "receptive_fields" else np.nan)
            ax.set_title(titles[c][r], fontsize=8)
    fig.suptitle(caption, fontsize=9)
    return save_figure(fig, out_stem, provenance)


def _plot_reconstructions(arrays: Mapping[str, Any], meta: Mapping[str, Any], out_stem: Path,
                          provenance: str) -> list[Path]:
    """Lee et al. 2015 §3.5: the first test images (top row) and their reconstructions z = g(f(x)) by each
    method's final auto-encoder (one row per method, clean inputs, with its loss ½‖z − x‖² on these images)."""
    images, labels = arrays["images"], meta["row_labels"]
    n_rows, n, n_in = images.shape
    img = int(math.isqrt(n_in))
    fig, axes = plt.subplots(n_rows, n, figsize=(1.0 * n + 1.6, 1.1 * n_rows + 0.5), squeeze=False)
    for r in range(n_rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[r, c].reshape(img, img), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(labels[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(textwrap.fill(f"{meta['title']}: test images and their reconstructions", 90), fontsize=9)
    return save_figure(fig, out_stem, provenance)
