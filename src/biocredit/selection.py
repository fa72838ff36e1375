"""Training length by a paper's own stopping rule, read on a held-out validation set (never the test set).

Lillicrap et al. (2016, MNIST, preprint Fig. 2a) trained every algorithm for "the same number of iterations,
chosen when backprop began to overfit" and give no count. An experiment's ``length_selection`` block turns that
sentence into a procedure: one run of ``method`` (BP) on a selection seed that is never an evaluation seed, with
the last ``valid_size`` training images held out; after every epoch the validation metric is smoothed by a
centred moving average over ``smooth`` epochs, and the run stops once the smoothed curve's lowest point lies
``patience`` epochs back. That lowest point is the epoch at which BP "began to overfit": the selected length.

:func:`overfit_onset` is the rule itself (pure, on a metrics table); :func:`selection_run_config` the run it
reads; :func:`write_report` the committed record (JSON, and a figure of what the rule saw).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SMOOTH_DEFAULT = 1


def centred_average(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average over ``window`` (odd) points; NaN where the window is not complete (the first and
    last ``window // 2`` points), so a smoothed value never changes once it exists."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smooth: {window} must be an odd number >= 1 (a centred window)")
    half, n = window // 2, len(values)
    out = [math.nan] * n
    for i in range(half, n - half):
        out[i] = sum(values[i - half : i + half + 1]) / window
    return out


def overfit_onset(epochs: Sequence[int], values: Sequence[float], *, smooth: int, patience: int) -> dict[str, Any]:
    """Where a validation curve began to rise, by the rule above.

    ``epochs``/``values``: one validation measurement per epoch, in order (epoch 0, the untrained net, is
    ignored: the rule looks at training). Returns ``selected_epoch`` (the epoch of the lowest smoothed value, the
    first on ties), ``best_smoothed``, ``last_smoothed_epoch`` and ``fired``: True once
    ``last_smoothed_epoch - selected_epoch >= patience``. Before that, ``selected_epoch`` is the best so far.
    """
    if patience < 1:
        raise ValueError(f"patience: {patience} must be >= 1")
    pts = [(int(e), float(v)) for e, v in zip(epochs, values, strict=True) if int(e) > 0]
    if any(b[0] != a[0] + 1 for a, b in zip(pts, pts[1:], strict=False)):
        raise ValueError("the length rule needs one validation measurement per epoch (eval_every_epochs: 1)")
    sm = centred_average([v for _, v in pts], smooth)
    valid = [(e, s) for (e, _), s in zip(pts, sm, strict=True) if math.isfinite(s)]
    if not valid:
        return {"selected_epoch": None, "best_smoothed": None, "last_smoothed_epoch": None, "fired": False,
                "smoothed": sm}
    best_e, best_s = min(valid, key=lambda p: (p[1], p[0]))
    last_e = valid[-1][0]
    return {"selected_epoch": best_e, "best_smoothed": best_s, "last_smoothed_epoch": last_e,
            "fired": last_e - best_e >= patience, "smoothed": sm}


def stop_rule(sel: Mapping[str, Any]):
    """The training loop's stop test for a ``length_selection`` block: rows -> reason string or None."""
    metric, smooth, patience = sel["metric"], int(sel.get("smooth", SMOOTH_DEFAULT)), int(sel["patience"])

    def should_stop(rows: Sequence[Mapping[str, Any]]) -> str | None:
        r = overfit_onset([row["epoch"] for row in rows], [row.get(metric, math.nan) for row in rows],
                          smooth=smooth, patience=patience)
        if r["fired"]:
            return (f"{metric} (centred average over {smooth} epochs) lowest at epoch {r['selected_epoch']}, "
                    f"{r['last_smoothed_epoch'] - r['selected_epoch']} epochs back (patience {patience})")
        return None

    return should_stop


def selection_run_config(cfg: Mapping[str, Any], experiment: str, scale: str) -> dict[str, Any]:
    """The resolved run config of an experiment's length-selection run at ``scale``: the scale's settings, the
    block's method and seed, the held-out validation set and ``max_epochs`` as the epoch budget."""
    from biocredit.config import ConfigError, resolve_run

    exp = cfg["experiments"][experiment]
    sel = exp.get("length_selection")
    if not sel:
        raise ConfigError(f"experiments.{experiment}.length_selection: not set; this experiment's length is not "
                          "chosen by a stopping rule (its scales set epochs directly)")
    c = copy.deepcopy(dict(cfg))
    e = c["experiments"][experiment]
    e["valid_size"] = sel["valid_size"]
    e["scales"][scale]["epochs"] = sel["max_epochs"]
    return resolve_run(c, experiment, sel["method"], sel["seed"], scale)


def write_report(out_dir: Path, sel: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 summary: Mapping[str, Any] | None, experiment: str, scale: str, provenance: str = "") -> dict[str, Any]:
    """``length_selection.json`` and ``length_selection.{png,pdf}`` in ``out_dir`` from the run's metrics rows.

    ``status``: ``selected`` (the rule fired: ``selected_epoch`` is the length), ``in progress`` (the run has not
    finished and the rule has not fired: ``selected_epoch`` is the best so far) or ``not reached`` (the run used
    its whole ``max_epochs`` before the rule fired)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biocredit.figures import save_figure

    metric, smooth, patience = sel["metric"], int(sel.get("smooth", SMOOTH_DEFAULT)), int(sel["patience"])
    rows = [r for r in rows if int(r["epoch"]) > 0]
    epochs = [int(r["epoch"]) for r in rows]
    values = [float(r.get(metric, math.nan)) for r in rows]
    onset = overfit_onset(epochs, values, smooth=smooth, patience=patience)
    if onset["fired"]:
        status = "selected"
    elif summary is not None:
        status = "not reached"
    else:
        status = "in progress"
    at = {int(r["epoch"]): r for r in rows}
    best = at.get(onset["selected_epoch"]) if onset["selected_epoch"] is not None else None
    report = {
        "experiment": experiment, "scale": scale, "status": status,
        "selected_epoch": onset["selected_epoch"],
        "rule": {k: sel[k] for k in sel} | {"smooth": smooth},
        "metric": metric,
        "best_smoothed": onset["best_smoothed"],
        "at_selected_epoch": {k: best[k] for k in ("train_error", "train_loss", "valid_error", "valid_loss")
                              if best is not None and k in best},
        "last_smoothed_epoch": onset["last_smoothed_epoch"],
        "epochs_done": epochs[-1] if epochs else 0,
        "raw_min": ({"epoch": epochs[values.index(min(values))], "value": min(values)} if values else None),
        "run": {k: summary[k] for k in ("status", "epochs_done", "wall_seconds") if k in summary} if summary else None,
        "provenance": provenance,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "length_selection.json").write_text(json.dumps(report, indent=2) + "\n")

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(epochs, values, color="0.7", lw=0.8, label=f"{metric} (held-out {sel['valid_size']} training images)")
    ax.plot(epochs, onset["smoothed"], color="tab:blue", lw=1.6, label=f"centred average over {smooth} epochs")
    if rows and "train_error" in rows[0] and metric.endswith("_error"):
        ax.plot(epochs, [float(r["train_error"]) for r in rows], color="tab:orange", lw=1.0, label="train_error")
    if onset["selected_epoch"] is not None:
        ax.axvline(onset["selected_epoch"], color="k", ls="--", lw=1.0,
                   label=f"{'selected' if status == 'selected' else 'best so far'}: epoch {onset['selected_epoch']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)" if metric.endswith("_error") else metric)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_title(f"{experiment}: length by the stopping rule ({sel['method']}, seed {sel['seed']}) — {status}",
                 fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "length_selection", provenance)
    return report
