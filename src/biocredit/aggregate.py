"""Per-run metrics files → tables: runs, curves (mean ± sd over seeds), and the paper comparison.

Nothing here trains or reads back up the pipeline: inputs are the ``summary.json`` and
``metrics.csv`` files that training wrote.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

COMPARISON_COLUMNS = [
    "experiment", "figure", "claim", "method", "metric", "paper", "unit", "source", "ours_mean", "ours_sd", "n",
    "n_diverged", "statistic", "scale", "epochs", "tolerance", "verdict",
]


def segment_commits(provenance: Mapping[str, Any]) -> list[str]:
    """Every commit a run trained under, in order, without repeats: its training segments' (summary.json
    ``provenance.segments``, one per process that trained it), or its one ``git_commit`` (older summaries)."""
    commits = [seg["git_commit"] for seg in provenance.get("segments") or []] or [provenance["git_commit"]]
    return list(dict.fromkeys(commits))


def job_seconds(summary: Mapping[str, Any]) -> float:
    """The run's share of the wall time of the processes that trained it. A job that trains S seeds as one
    ensemble records its whole wall time in each seed's ``wall_seconds``, so summing those counts the job S
    times; here each training segment's time is split evenly over the seeds it trained (segment
    ``ensemble_size``; summaries written before segments recorded it use the provenance's, that of the last
    process, and summaries without segments their ``wall_seconds``)."""
    prov = summary["provenance"]
    size = int(prov.get("ensemble_size", 1))
    segs = prov.get("segments") or []
    if not segs or any("wall_seconds" not in seg for seg in segs):
        return float(summary["wall_seconds"]) / size
    return float(sum(seg["wall_seconds"] / int(seg.get("ensemble_size", size)) for seg in segs))


def load_runs(run_dirs: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run from summary.json, every metrics.csv row with method and seed columns)."""
    summaries, curves = [], []
    for d in map(Path, run_dirs):
        s = json.loads((d / "summary.json").read_text())
        prov = s["provenance"]
        summaries.append({
            "experiment": s["experiment"], "method": s["method"], "rule": s["rule"], "seed": s["seed"],
            "scale": s["scale"], "status": s["status"], "epochs_done": s["epochs_done"], "epochs": s["epochs"],
            **{f"final_{k}": v for k, v in s["final"].items() if k not in ("epoch",)},
            "best_test_error": s["best_test_error"], "wall_seconds": s["wall_seconds"],
            "job_seconds": job_seconds(s), "config_hash": prov["config_hash"], "git_commit": prov["git_commit"],
            # every commit the run trained under (a killed run resumed after a commit has several), ';'-joined
            "git_commits": ";".join(segment_commits(prov)), "device": prov["device"],
            "torch": prov["torch"], "n_train": prov["n_train"], "n_test": prov["n_test"],
        })
        m = pd.read_csv(d / "metrics.csv")
        summaries[-1].update(early_stopping(m))
        summaries[-1].update(first_values(m))
        m.insert(0, "seed", s["seed"])
        m.insert(0, "method", s["method"])
        curves.append(m)
    return pd.DataFrame(summaries), pd.concat(curves, ignore_index=True)


def early_stopping(metrics: pd.DataFrame) -> dict[str, float]:
    """The run read at the epoch of its lowest validation error (the first such row; early stopping on the
    held-out validation images, never on the test set): ``valid_best_epoch`` and ``valid_best_<m>`` for every
    metric m of that row. Empty for a run without a validation set."""
    if "valid_error" not in metrics.columns or metrics["valid_error"].isna().all():
        return {}
    row = metrics.loc[metrics["valid_error"].idxmin()]
    out = {"valid_best_epoch": float(row["epoch"])}
    out.update({f"valid_best_{k}": float(v) for k, v in row.items() if k not in ("epoch", "examples_seen")})
    return out


def first_values(metrics: pd.DataFrame) -> dict[str, float]:
    """``first_<m>``: each metric m at the first row that logs it (claims about the start, ``at: first``)."""
    out = {}
    for col in metrics.columns:
        if col in ("epoch", "examples_seen", "epoch_seconds", "eval_seconds"):
            continue
        logged = metrics[col].dropna()
        if len(logged):
            out[f"first_{col}"] = float(logged.iloc[0])
    return out


def reach_times(curves: pd.DataFrame, metric: str, value: float) -> pd.DataFrame:
    """Per run (method, seed): how soon its `metric` is first <= `value`, in examples seen (epochs where the
    runs log no examples); inf where it never is."""
    x = "examples_seen" if "examples_seen" in curves.columns and curves["examples_seen"].notna().any() else "epoch"
    out = []
    for (method, seed), c in curves.groupby(["method", "seed"], sort=False):
        hit = c.loc[c[metric] <= value, x] if metric in c.columns else pd.Series(dtype=float)
        out.append({"method": method, "seed": seed, "reach": float(hit.min()) if len(hit) else math.inf})
    return pd.DataFrame(out, columns=["method", "seed", "reach"]).assign(unit="examples" if x == "examples_seen"
                                                                        else "epochs")


def curve_stats(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, min, max and n over seeds of every metric, per method and epoch (and examples seen)."""
    keys = ["method", "epoch"] + (["examples_seen"] if "examples_seen" in curves.columns else [])
    metrics = [c for c in curves.columns if c not in ("seed", *keys)]
    g = curves.groupby(keys)[metrics]
    out = pd.concat([g.mean().add_suffix("_mean"), g.std(ddof=1).add_suffix("_sd"), g.min().add_suffix("_min"),
                     g.max().add_suffix("_max"), g.size().rename("n")], axis=1).copy()  # copy: one block
    return out.reset_index()


def _fmt(x: float, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def comparison_rows(exp_name: str, exp: Mapping[str, Any], runs: pd.DataFrame, scale: str,
                    expected_seeds: int | None = None, curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per reported number and per qualitative claim of an experiment, with a verdict.

    ``expected_seeds``: the scale's seeds per method; a verdict resting on fewer finished runs of a method (a
    partial aggregation while the rest still train) starts with "partial (k of n seeds)". ``curves``: the runs'
    metrics rows (load_runs), which claims with ``reach`` read."""
    rows = []
    comparable = scale == "paper"
    epochs = int(runs["epochs"].max()) if len(runs) else 0
    ok = runs[runs["status"] == "completed"]
    finished = runs["method"].value_counts().to_dict() if len(runs) else {}

    def partial(methods: Sequence[str], verdict: str) -> str:
        if not expected_seeds:
            return verdict
        short = {m: finished.get(m, 0) for m in methods if finished.get(m, 0) < expected_seeds}
        if not short or verdict.startswith("no finished run"):
            return verdict
        k = ", ".join(f"{m} {n}" for m, n in short.items())
        return f"partial ({k} of {expected_seeds} seeds): {verdict}"
    for rep in exp.get("reported", []):
        metric = rep["metric"]
        # at: final (the last epoch) or valid_best (the epoch of the run's lowest validation error)
        at = rep.get("at", "final")
        column = f"{at}_{metric}"
        vals = (ok.loc[ok["method"] == rep["method"], column].astype(float) if column in ok.columns
                else pd.Series([], dtype=float))
        if at == "valid_best":
            metric = f"{metric} at the epoch of lowest valid_error"
        n_div = int(((runs["method"] == rep["method"]) & (runs["status"] == "diverged")).sum())
        mean = float(vals.mean()) if len(vals) else math.nan
        sd = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        if not len(vals):
            verdict = "no finished run"
        elif not comparable:
            verdict = f"not comparable at this scale ({scale}: {epochs} epochs, n = {len(vals)})"
        elif abs(mean - rep["value"]) <= rep["tolerance"]:
            verdict = "reproduced"
        else:
            verdict = f"NOT reproduced (off by {mean - rep['value']:+.2f})"
        rows.append({
            "experiment": exp_name, "figure": rep.get("figure", exp.get("figure", "")), "claim": "", "method": rep["method"],
            "metric": metric, "paper": rep["value"], "unit": rep.get("unit", ""), "source": rep["source"],
            "ours_mean": mean, "ours_sd": sd, "n": len(vals), "n_diverged": n_div, "statistic": "",
            "scale": scale, "epochs": epochs, "tolerance": rep["tolerance"], "verdict": partial([rep["method"]], verdict),
        })
    for claim in exp.get("claims", []):
        verdict, stat = claim_verdict(claim, ok, curves)
        methods = [*claim.get("lower", []), *claim.get("higher", [])]
        metric = claim["metric"] + (" (first row)" if claim.get("at") == "first" else "") + (
            f" (how soon <= {claim['reach']:g})" if "reach" in claim else "")
        rows.append({
            "experiment": exp_name, "figure": claim.get("figure", exp.get("figure", "")), "claim": claim["text"],
            "method": ", ".join(methods), "metric": metric, "paper": math.nan,
            "unit": claim.get("unit", ""), "source": claim["source"] + (
                f"; paper: {claim['paper_statistic']}" if claim.get("paper_statistic") else ""),
            "ours_mean": math.nan, "ours_sd": math.nan, "n": len(ok),
            "n_diverged": int((runs["status"] == "diverged").sum()), "statistic": stat, "scale": scale,
            "epochs": epochs, "tolerance": math.nan,
            "verdict": partial(methods, verdict),
        })
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def claim_verdict(claim: Mapping[str, Any], ok: pd.DataFrame,
                  curves: pd.DataFrame | None = None) -> tuple[str, str]:
    """'holds' if every `lower` method ends below every `higher` one in mean (and, with `test`, the t-test
    over seeds of lower[0] vs higher[0] gives p < alpha: ``welch`` / ``student`` two-sample, or ``paired`` over the
    seeds both methods ran, for experiments whose seed fixes the task so that runs of one seed are matched).
    ``at: first`` reads each run's first logged value instead of its last; ``above`` holds if every `higher`
    method's mean is above the number; ``reach`` compares how soon each run's metric first reaches the value
    (from ``curves``, the finished runs' rows): sooner is lower, never is infinitely late."""
    if "reach" in claim:
        return reach_verdict(claim, ok, curves)
    at = claim.get("at", "final")

    def means_at(metric: str) -> pd.Series:  # per method, read at `at`; a metric only some methods log (an angle) may have no column yet
        column = f"{at}_{metric}"
        return ok.groupby("method")[column].mean() if column in ok.columns else pd.Series(dtype=float)

    col = f"{at}_{claim['metric']}"
    means = means_at(claim["metric"])
    lower, higher = claim.get("lower", []), claim.get("higher", [])
    missing = [m for m in [*lower, *higher] if m not in means or pd.isna(means[m])]
    if missing:
        return f"no finished run of {', '.join(missing)}", ""
    if "below_metric" in claim:
        other = means_at(claim["below_metric"])
        if any(m not in other or pd.isna(other[m]) for m in lower):
            return f"no finished run with {claim['below_metric']} of {', '.join(lower)}", ""
        holds = all(means[a] < other[a] for a in lower)
        return ("holds" if holds else "does NOT hold"), "; ".join(
            f"{m}: {claim['metric']} {means[m]:.4g} vs {claim['below_metric']} {other[m]:.4g}" for m in lower)
    if "above" in claim:
        holds = all(means[b] > claim["above"] for b in higher)
    elif "below" in claim:
        holds = all(means[a] < claim["below"] for a in lower)
    else:
        margin = claim.get("margin", 0.0)  # 'comparable to': below the other's mean + margin
        holds = all(means[a] < means[b] + margin for a in lower for b in higher)
    stat = "; ".join(f"{m} {means[m]:.4g}" for m in [*lower, *higher])
    if claim.get("margin"):
        stat += f" (margin {claim['margin']:g})"
    if claim.get("test"):
        from scipy import stats

        a = ok.loc[ok["method"] == lower[0]].set_index("seed")[col].astype(float)
        b = ok.loc[ok["method"] == higher[0]].set_index("seed")[col].astype(float)
        if claim["test"] == "paired":  # runs of the same seed share the task (e.g. the teacher) and data order
            common = a.index.intersection(b.index)
            a, b = a.loc[common], b.loc[common]
        if min(len(a), len(b)) < 2:
            return "too few seeds for a t-test", stat
        if claim["test"] == "paired":
            t, p = stats.ttest_rel(a, b)
        else:
            t, p = stats.ttest_ind(a, b, equal_var=claim["test"] == "student")
        alpha = claim.get("alpha", 0.05)
        stat += f"; {claim['test']} t = {t:.2f}, p = {p:.2g} (n = {len(a)}, {len(b)})"
        holds = holds and p < alpha
    return ("holds" if holds else "does NOT hold"), stat


def reach_verdict(claim: Mapping[str, Any], ok: pd.DataFrame, curves: pd.DataFrame | None) -> tuple[str, str]:
    """A ``reach`` claim: every `lower` method reaches ``metric <= reach`` sooner (mean over its finished runs)
    than every `higher` one; a method with a run that never reaches it is infinitely late."""
    lower, higher = claim["lower"], claim["higher"]
    if curves is None or not len(ok):
        return f"no finished run of {', '.join([*lower, *higher])}", ""
    done = ok[["method", "seed"]].merge(curves, on=["method", "seed"])  # the finished runs' rows only
    times = reach_times(done, claim["metric"], claim["reach"])
    missing = [m for m in [*lower, *higher] if m not in set(times["method"])]
    if missing:
        return f"no finished run of {', '.join(missing)}", ""
    unit = times["unit"].iloc[0]
    means = times.groupby("method")["reach"].mean()
    margin = claim.get("margin", 0.0)
    holds = all(means[a] < means[b] + margin for a in lower for b in higher)  # never vs never: not sooner

    def say(m: str) -> str:
        t = times.loc[times["method"] == m, "reach"]
        never = int((t == math.inf).sum())
        if never == len(t):
            return f"{m} never ({len(t)} of {len(t)} runs)"
        if never:
            return f"{m} {t[t < math.inf].mean():.4g} {unit} in {len(t) - never} of {len(t)} runs, never in {never}"
        return f"{m} {t.mean():.4g} {unit}"
    stat = f"{claim['metric']} <= {claim['reach']:g} after: " + "; ".join(say(m) for m in [*lower, *higher])
    if margin:
        stat += f" (margin {margin:g})"
    return ("holds" if holds else "does NOT hold"), stat


def to_markdown(table: pd.DataFrame, provenance: str = "") -> str:
    """The comparison table as GitHub Markdown (no extra dependency)."""
    head = ["experiment", "claim / number", "method", "paper", "ours (mean ± sd, n)", "scale", "tolerance", "verdict",
            "source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        is_claim, what, paper, ours, tol = _row_text(r)
        cells = [r["experiment"] + (f" ({r['figure']})" if r["figure"] else ""), what, r["method"], paper, ours,
                 f"{r['scale']} ({r['epochs']} ep.)", tol, r["verdict"], r["source"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + ("\n\n" + provenance if provenance else "") + "\n"


def _row_text(r: pd.Series) -> tuple[bool, str, str, str, str]:
    """A comparison row as text: (is a claim, what it checks, the paper's value, ours, tolerance)."""
    is_claim = bool(isinstance(r["claim"], str) and r["claim"])
    what = r["claim"] if is_claim else f"{r['metric']} ({r['unit']})" if r["unit"] else r["metric"]
    ours = r["statistic"] if is_claim else f"{_fmt(r['ours_mean'])} ± {_fmt(r['ours_sd'])} (n = {r['n']})"
    if r["n_diverged"]:
        ours += f", {r['n_diverged']} diverged"
    paper = "—" if is_claim else _fmt(r["paper"])
    tol = "—" if is_claim else f"± {_fmt(r['tolerance'])}"
    return is_claim, what, paper, ours, tol


def caption_lines(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[str]:
    """The comparison rows as one sentence each, for a caption in the Snakemake report: a reported number as
    "test_error (%), bp: paper 2.40, ours 1.61 ± 0.05 (n = 20), tolerance ± 0.40: <verdict> (paper scale,
    1846 epochs; source: <the paper's place>)", a claim as "<claim> (<methods>): <statistic>: <verdict> (...)".
    With ``metrics``, only the rows about those metrics (a figure's caption lists what that figure draws)."""
    out = []
    for _, r in table.iterrows():
        # the metric column's first word is the metric ("test_error (how soon <= 0.01)", "test_error at the epoch
        # of lowest valid_error")
        if metrics is not None and str(r["metric"]).split()[0] not in metrics:
            continue
        is_claim, what, paper, ours, tol = _row_text(r)
        epochs = r.get("epochs")
        n_ep = int(epochs) if pd.notna(epochs) else 0
        where = f"{r['scale']} scale" + (f", {n_ep} epoch{'s' * (n_ep != 1)}" if n_ep > 0 else "")
        tail = f" ({where}; source: {r['source']})"
        if is_claim:
            out.append(f"{what} ({r['method']}): {ours}: {r['verdict']}{tail}")
        else:
            out.append(f"{what}, {r['method']}: paper {paper}, ours {ours}, tolerance {tol}: {r['verdict']}{tail}")
    return out


def provenance_record(runs: pd.DataFrame) -> dict[str, Any]:
    return {
        "runs": len(runs),
        "scale": sorted(runs["scale"].unique().tolist()),
        "seeds": sorted(int(s) for s in runs["seed"].unique()),
        "git_commits": sorted({c for cs in runs.get("git_commits", runs["git_commit"]) for c in str(cs).split(";")}),
        "config_hashes": sorted(runs["config_hash"].unique().tolist()),
        "devices": sorted(runs["device"].unique().tolist()),
        "torch": sorted(runs["torch"].unique().tolist()),
        # summed over runs: a job that trained S seeds as one ensemble counts S times (each seed records its time)
        "wall_seconds_total": float(runs["wall_seconds"].sum()),
        # the training jobs' own wall time: an ensemble job's counted once (aggregate.job_seconds)
        "job_seconds_total": float(runs["job_seconds"].sum()),
        "statuses": runs["status"].value_counts().to_dict(),
    }
