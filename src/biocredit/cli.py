"""Command line: ``python -m biocredit <command>`` (also ``biocredit <command>``).

Every Snakemake rule calls one of these commands, so each stage also runs without Snakemake.
Bad input ends with one line on stderr naming the key or file and the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from biocredit.config import (
    WEIGHT_FIGURE_KINDS,
    ConfigError,
    DataError,
    load_config,
    resolve_run,
    seeds,
    settings_changed,
)

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config.yaml", help="config file (default: ./config.yaml)")
    p.add_argument("--scale", choices=["smoke", "quick", "paper"], help="override the config's scale")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted path, YAML value), e.g. --set device=cpu")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as config overrides (dotted keys, YAML values)."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set device=cpu")
        k, v = item.split("=", 1)
        value = yaml.safe_load(v)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value):
            value = float(value)  # YAML 1.1 (PyYAML) reads 1e-3 as a string; --set lr=1e-3 means the number
        overrides[k] = value
    return overrides


def _load(args: argparse.Namespace, *, rules: bool = True) -> dict:
    """The config with the command's --set/--scale applied; an --experiment it lacks is one line here, before
    any command reads a table or a run folder."""
    overrides = parse_overrides(args.set)
    if args.scale:
        overrides["scale"] = args.scale
    cfg = load_config(args.config, overrides, rules=rules)
    asked = getattr(args, "experiment", None)
    for name in [asked] if isinstance(asked, str) else asked or []:
        if name not in cfg["experiments"]:
            raise ConfigError(f"--experiment {name}: no such experiment in {args.config}; known: "
                              f"{', '.join(cfg['experiments'])}")
    return cfg


def _short(commit: str) -> str:
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def seed_ranges(seeds: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    parts, run = [], []
    for s in sorted(seeds):
        if run and s != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(s)
    if run:
        parts.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in parts)


def _first_few(items: list[str], k: int) -> str:
    return ",".join(items) if len(items) <= k else ",".join(items[:k]) + f" +{len(items) - k} more"


def figure_note(scale: str, prov: dict, experiment: str) -> str:
    """The provenance line printed under a figure: short enough to fit its width.

    Runs resumed over many sessions carry many commits and config hashes; the line names the first few and
    how many more, and points to the provenance file that lists them all.
    """
    runs = prov.get("runs")
    partial = (f"PARTIAL: {runs} of {runs + len(prov['missing_runs'])} runs; " if prov.get("partial")
               and isinstance(runs, int) else "")
    return (f"scale {scale}; {partial}seeds {seed_ranges(prov['seeds'])}; "
            f"commit {_first_few([_short(c) for c in prov['git_commits']], 3)}; "
            f"device {','.join(prov['devices'])}; config {_first_few(prov['config_hashes'], 2)}"
            + (f" (all in tables/{experiment}_provenance.json)" if len(prov["git_commits"]) > 3
               or len(prov["config_hashes"]) > 2 else ""))


def weight_figure_note(scale: str, data: Path, tables: Path, experiment: str) -> str:
    """The provenance line of a figure drawn from one seed's weights: that seed's runs, not the whole table's.

    Empty where the runs table does not list the runs the figure data were read from.
    """
    import pandas as pd

    from biocredit.figures import load_figure_data

    meta = load_figure_data(data)[1]
    runs_csv = tables / f"{experiment}_runs.csv"
    if "seed" not in meta or not meta.get("runs") or not runs_csv.is_file():
        return ""
    df = pd.read_csv(runs_csv)
    df = df[df["method"].isin(list(meta["runs"])) & (df["seed"] == meta["seed"])]
    if df.empty:
        return ""
    commits = list(dict.fromkeys(c for cs in df.get("git_commits", df["git_commit"]).fillna("").astype(str)
                                 for c in cs.split(";") if c))
    prov = {"seeds": [int(meta["seed"])], "git_commits": commits or list(df["git_commit"].dropna().astype(str)),
            "devices": list(dict.fromkeys(df["device"].astype(str))),
            "config_hashes": list(dict.fromkeys(df["config_hash"].astype(str)))}
    return figure_note(scale, prov, experiment).replace("; seeds ", f"; {', '.join(meta['runs'])}: seed ", 1)


def _scale_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / cfg["scale"]


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    n = sum(len(e["methods"]) * len(seeds(cfg, name)) for name, e in cfg["experiments"].items())
    print(f"{args.config}: valid; scale {cfg['scale']}: {len(cfg['experiments'])} experiment(s), {n} training run(s)")
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from biocredit import data

    if args.data_dir is not None:  # explicit data settings (the Snakemake rule): no config file is read
        d = {"dir": args.data_dir, "mirror": args.mirror, "download": args.download is not False}
    else:
        d = dict(_load(args, rules=False).get("data", {}))
        d.update({k: v for k, v in (("mirror", args.mirror), ("download", args.download)) if v is not None})
    rec = data.prepare(args.dataset, Path(d.get("dir", "data")), data.resolve_mirror(d.get("mirror")),
                       download=d.get("download", True))
    print(f"{args.dataset}: ready and verified in {d.get('dir', 'data')} (source: {rec.get('source')})")
    return 0


def _train_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config's device, W&B and thread settings as the trainers' keyword arguments."""
    from biocredit.tracking import resolve_mode

    wandb_cfg = {**cfg.get("wandb", {}), "mode": resolve_mode(cfg.get("wandb", {}).get("mode"))}
    return dict(device=cfg.get("device", "auto"), wandb_cfg=wandb_cfg, wandb_dir=_scale_dir(cfg) / "wandb",
                threads=cfg.get("threads"))


def _make_run_dirs(outs: list[Path], key: str) -> None:
    """Make the run folders before any data is read; one that cannot be made is one line naming the setting."""
    for out in outs:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{out}: cannot make the run folder ({e.strerror or e}); set {key} to a folder you "
                              "can write") from None


def cmd_train(args: argparse.Namespace) -> int:
    from biocredit.config import run_dir
    from biocredit.train import resolve_device, train

    cfg = _load(args)
    kw = _train_kwargs(cfg)
    resolve_device(kw["device"])  # a device this machine lacks: one line, before any run folder is made
    data_dir = cfg.get("data", {}).get("dir", "data")
    if args.seeds is not None:  # several seeds in this one process: a stacked ensemble where the rule allows
        from biocredit.ensemble import train_seeds

        if args.out:
            raise ConfigError("--out goes with --seed only; --seeds writes each seed's default run folder")
        run_cfgs = [resolve_run(cfg, args.experiment, args.method, s) for s in args.seeds]
        outs = [run_dir(Path(cfg["results_dir"]), cfg["scale"], args.experiment, args.method, s) for s in args.seeds]
        _make_run_dirs(outs, "results_dir")
        summaries = train_seeds(run_cfgs, outs, data_dir, ensemble=cfg.get("ensembles", True), **kw)
    else:
        run_cfg = resolve_run(cfg, args.experiment, args.method, args.seed)
        out = Path(args.out) if args.out else run_dir(Path(cfg["results_dir"]), cfg["scale"], args.experiment,
                                                       args.method, args.seed)
        _make_run_dirs([out], "--out" if args.out else "results_dir")
        summaries = [train(run_cfg, out, data_dir, **kw)]
    for summary in summaries:
        print(json.dumps({k: summary[k] for k in ("experiment", "method", "seed", "status", "best_test_error")}))
    return 0


def cmd_select_length(args: argparse.Namespace) -> int:
    """Choose an experiment's training length by its stopping rule (config ``length_selection``)."""
    import pandas as pd

    from biocredit import selection
    from biocredit.config import config_hash

    cfg = _load(args)
    run_cfg = selection.selection_run_config(cfg, args.experiment, cfg["scale"])
    sel = cfg["experiments"][args.experiment]["length_selection"]
    out = _scale_dir(cfg) / "length_selection" / args.experiment
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if summary is not None and summary["provenance"]["config_hash"] != config_hash(run_cfg):
        raise ConfigError(f"{summary_path}: a finished selection run of other settings (config "
                          f"{summary['provenance']['config_hash']}, now {config_hash(run_cfg)}); move {out} away to rerun")
    if summary is None and not args.report_only:
        from biocredit.train import train

        summary = train(run_cfg, out, cfg.get("data", {}).get("dir", "data"), **_train_kwargs(cfg),
                        stop_when=selection.stop_rule(sel))
    if not (out / "metrics.csv").exists():
        raise ConfigError(f"{out / 'metrics.csv'}: missing; run without --report-only to train the selection run")
    rows = pd.read_csv(out / "metrics.csv").to_dict("records")
    commit = summary["provenance"].get("git_commit", "") if summary else _running_commit(out)
    note = (f"scale {cfg['scale']}; {sel['method']} seed {sel['seed']}; config {config_hash(run_cfg)}; "
            f"commit {_short(commit)}" if commit else "")
    report = selection.write_report(out, sel, rows, summary, args.experiment, cfg["scale"], note)
    print(f"{args.experiment}: {report['status']}: "
          + (f"epoch {report['selected_epoch']} ({sel['metric']} smoothed {report['best_smoothed']:.4g}; "
             f"{report['epochs_done']} epochs run)" if report["selected_epoch"] is not None else "no smoothed value yet")
          + f"; {out / 'length_selection.json'}")
    return 0


def _running_commit(run_folder: Path) -> str:
    """The git commit of the process now training a run, from its checkpoint ('' if none)."""
    ckpt = run_folder / "checkpoint.pt"
    if not ckpt.exists():
        return ""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return (state.get("segments") or [{}])[-1].get("git_commit", "")


def _seed(text: str) -> int:
    """One seed: a whole number, 0 or more (a run folder is named seed<N>, and ranges read A-B)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number, e.g. --seed 0") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is 0 or more")
    return seed


def _seed_list(text: str) -> list[int]:
    """``0-19`` or ``0,3,5`` (or both, e.g. ``0-4,9``) as a sorted list of distinct seeds."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seeds like 0-19 or 0,3,5") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r}: no seeds")
    return sorted(seeds)


def cmd_aggregate(args: argparse.Namespace) -> int:
    from biocredit import aggregate
    from biocredit.config import run_dir

    if args.from_table:
        return _rejudge_from_table(args)
    cfg = _load(args, rules=False)  # reads finished runs only: no rule registry, no torch
    exp = cfg["experiments"][args.experiment]
    cells = {run_dir(Path(cfg["results_dir"]), cfg["scale"], args.experiment, m, s): (m, s)
             for m in exp["methods"] for s in seeds(cfg, args.experiment)}
    dirs = list(cells)
    # A finished run made with other settings than the config's now (e.g. a training length since changed) is
    # not one of this table's runs: a table never mixes settings without saying so.
    other: dict[Path, list[str]] = {}
    for d, (m, s) in cells.items():
        if (d / "summary.json").exists():
            then = json.loads((d / "summary.json").read_text()).get("run_config")
            changed = settings_changed(cfg, args.experiment, m, s, then) if then else []  # (trainers record it)
            if changed:
                other[d] = changed
    if other and not args.partial:
        d, changed = next(iter(other.items()))
        raise ConfigError(f"{d / 'summary.json'} (and {len(other) - 1} more) was made with other settings than the "
                          f"config's now ({'; '.join(changed[:3])}): retrain it (Snakemake reruns it), or aggregate "
                          "with the settings it was made with (--set ...)")
    missing = [str(d / "summary.json") for d in dirs if not (d / "summary.json").exists() or d in other]
    if missing and not args.partial:
        raise ConfigError(f"{missing[0]} (and {len(missing) - 1} more) missing: train those runs first, or "
                          "pass --partial to aggregate the finished ones")
    done = [d for d in dirs if (d / "summary.json").exists() and d not in other]
    if not done:
        raise ConfigError(f"{missing[0]} (and {len(missing) - 1} more) missing: no run of {args.experiment} at scale "
                          f"{cfg['scale']} has finished")
    runs, curves = aggregate.load_runs(done)
    n_seeds = len(seeds(cfg, args.experiment))
    tables = _scale_dir(cfg) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    runs.to_csv(tables / f"{args.experiment}_runs.csv", index=False)
    aggregate.curve_stats(curves).to_csv(tables / f"{args.experiment}_curves.csv", index=False)
    aggregate.comparison_rows(args.experiment, exp, runs, cfg["scale"], expected_seeds=n_seeds, curves=curves).to_csv(
        tables / f"{args.experiment}_comparison.csv", index=False)
    record = aggregate.provenance_record(runs)
    if missing:
        record.update(partial=True, missing_runs=[str(Path(m).parent) for m in missing])
    if other:
        record["left_out_other_settings"] = {str(d): changed for d, changed in other.items()}
        print(f"{args.experiment}: left out {len(other)} finished run(s) made with other settings than the config's "
              f"now (first: {next(iter(other))}: {'; '.join(next(iter(other.values()))[:3])})", file=sys.stderr)
    (tables / f"{args.experiment}_provenance.json").write_text(json.dumps(record, indent=2))
    print(f"{args.experiment}: aggregated {len(runs)} runs into {tables}"
          + (f" (PARTIAL: {len(missing)} of {len(dirs)} runs not finished)" if missing else ""))
    return 0


def _rejudge_from_table(args: argparse.Namespace) -> int:
    """``aggregate --from-table``: rewrite ``<experiment>_comparison.csv`` from the committed ``_runs.csv``.

    For a clone without run folders (they are not committed at quick scale) whose claims, reported values or
    tolerances changed in config.yaml: the verdicts are judged again without training anything. Refused where
    the table's runs were made with other settings than the config resolves now (their config hashes), and for
    ``reach`` claims, which need each run's whole curve.
    """
    import pandas as pd

    from biocredit import aggregate
    from biocredit.config import config_hash, resolve_run

    cfg = _load(args)  # with the rule registry: a run's config hash includes its rule's defaults
    exp = cfg["experiments"][args.experiment]
    tables = _scale_dir(cfg) / "tables"
    runs_csv = tables / f"{args.experiment}_runs.csv"
    if not runs_csv.is_file():
        raise ConfigError(f"{runs_csv}: missing; aggregate from the run folders first (without --from-table)")
    reach = [c for c in exp.get("claims", []) if "reach" in c]
    if reach:
        raise ConfigError(f"experiments.{args.experiment}.claims: {reach[0]['text']!r} is a 'reach' claim, which needs "
                          f"each run's whole curve; {runs_csv.name} keeps only the final numbers: aggregate from "
                          "the run folders (without --from-table)")
    runs = pd.read_csv(runs_csv)
    stale = [(r.method, r.seed) for r in runs.itertuples()
             if r.method not in exp["methods"]
             or config_hash(resolve_run(cfg, args.experiment, r.method, int(r.seed))) != r.config_hash]
    if stale:
        m, s = stale[0]
        raise ConfigError(f"{runs_csv}: the run {m} seed {s} (and {len(stale) - 1} more) was made with other settings "
                          "than config.yaml resolves now; --from-table only judges finished runs again: retrain, "
                          "or aggregate from the run folders")
    prov_path = tables / f"{args.experiment}_provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    aggregate.comparison_rows(args.experiment, exp, runs, cfg["scale"],
                              expected_seeds=len(seeds(cfg, args.experiment))).to_csv(
        tables / f"{args.experiment}_comparison.csv", index=False)
    print(f"{args.experiment}: judged {len(runs)} runs again from {runs_csv}"
          + (" (PARTIAL, as when aggregated)" if prov.get("partial") else ""))
    return 0


def figure_data_path(cfg: Mapping[str, Any], experiment: str, figure: str) -> Path:
    """Where a figure drawn from the runs' weights keeps what it shows (committed with the tables)."""
    return _scale_dir(cfg) / "figure_data" / f"{experiment}_{figure}.npz"


def _weight_figures(cfg: Mapping[str, Any], experiment: str, figure: str | None) -> list[Mapping[str, Any]]:
    exp = cfg["experiments"][experiment]
    figs = [f for f in exp.get("figures", []) if f["kind"] in WEIGHT_FIGURE_KINDS and figure in (None, f["name"])]
    if figure and not figs:
        raise ConfigError(f"experiments.{experiment}.figures: no figure {figure!r} drawn from weights; those are: "
                          + (", ".join(f["name"] for f in exp.get("figures", []) if f["kind"] in WEIGHT_FIGURE_KINDS)
                             or "none"))
    return figs


def _check_final_weights(cfg: Mapping[str, Any], experiment: str, method: str, seed: int, ckpt: Path,
                         figure: str) -> None:
    """A weight figure shows final weights of the config's settings: not a run still training (e.g. one being
    extended to a longer length) nor one made with other settings. One line naming the checkpoint otherwise."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    then = state.get("run_config") or {}
    if state.get("status") == "running":
        raise ConfigError(f"{ckpt}: still training (epoch {state.get('epoch')} of {then.get('epochs', '?')}); figure "
                          f"{figure} is drawn from final weights: let the run finish (the same `train` resumes it)")
    changed = settings_changed(cfg, experiment, method, seed, then) if then else []
    if changed:
        raise ConfigError(f"{ckpt}: made with other settings than the config's now ({'; '.join(changed[:3])}); figure "
                          f"{figure} would mix them: retrain it (Snakemake reruns it), or draw with those settings "
                          "(--set ...)")


def cmd_figure_data(args: argparse.Namespace) -> int:
    """Read the seed-0 checkpoints once and keep what a weight figure shows (see figures.figure_data)."""
    from biocredit.config import run_dir
    from biocredit.figures import figure_data, save_figure_data

    cfg = _load(args)
    exp = cfg["experiments"][args.experiment]
    first_seed = seeds(cfg, args.experiment)[0]
    for f in _weight_figures(cfg, args.experiment, args.figure):
        dirs = {m: run_dir(Path(cfg["results_dir"]), cfg["scale"], args.experiment, m, first_seed)
                for m in f.get("methods") or exp["methods"]}
        for m, d in dirs.items():
            ckpt = Path(d) / "checkpoint.pt"
            if not ckpt.is_file():
                raise ConfigError(f"{ckpt}: missing; figure {f['name']} is drawn from the "
                                  f"final weights of seed {first_seed}: train that run first (snakemake)")
            _check_final_weights(cfg, args.experiment, m, first_seed, ckpt, f["name"])
        arrays, meta = figure_data(exp, f, dirs, Path(cfg.get("data", {}).get("dir", "data")))
        print(save_figure_data(figure_data_path(cfg, args.experiment, f["name"]), arrays, meta))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    import pandas as pd

    from biocredit.figures import plot_curves, plot_weight_figure

    cfg = _load(args, rules=False)
    exp = cfg["experiments"][args.experiment]
    names = [f["name"] for f in exp.get("figures", [])]
    if args.figure and args.figure not in names:
        raise ConfigError(f"--figure {args.figure}: experiments.{args.experiment}.figures has no such figure; "
                          f"known: {', '.join(names) or 'none'}")
    tables, figs = _scale_dir(cfg) / "tables", _scale_dir(cfg) / "figures"
    for name in ("curves.csv", "provenance.json"):
        if not (tables / f"{args.experiment}_{name}").is_file():
            raise ConfigError(f"{tables / f'{args.experiment}_{name}'}: missing; aggregate the runs first: python -m "
                              f"biocredit aggregate --experiment {args.experiment} --scale {cfg['scale']}")
    stats = pd.read_csv(tables / f"{args.experiment}_curves.csv")
    prov = json.loads((tables / f"{args.experiment}_provenance.json").read_text())
    note = figure_note(cfg["scale"], prov, args.experiment)
    for f in exp.get("figures", []):
        if args.figure and f["name"] != args.figure:
            continue
        stem = figs / f"{args.experiment}_{f['name']}"
        if f["kind"] in WEIGHT_FIGURE_KINDS:  # drawn from the runs' final weights, kept by `figure-data`
            data = figure_data_path(cfg, args.experiment, f["name"])
            if not data.is_file():
                raise ConfigError(f"{data}: missing; make it from the runs' checkpoints first: python -m biocredit "
                                  f"figure-data --experiment {args.experiment} --figure {f['name']} (with this "
                                  "command's --config/--scale/--set)")
            paths = plot_weight_figure(data, stem, weight_figure_note(cfg["scale"], data, tables, args.experiment)
                                       or note, title=f.get("title"))
        else:
            paths = plot_curves(stats, exp, f, stem, note)
        for p in paths:
            print(p)
    return 0


def cmd_analysis(args: argparse.Namespace) -> int:
    """An analysis computed from update equations (no training runs): figure and/or summary + comparison row."""
    import pandas as pd

    from biocredit import dynamics
    from biocredit.aggregate import COMPARISON_COLUMNS

    cfg = _load(args)
    if args.analysis not in cfg.get("analyses", {}):
        raise ConfigError(f"analyses.{args.analysis}: no such analysis; known: {', '.join(cfg.get('analyses', {}))}")
    a = cfg["analyses"][args.analysis]
    tables, figs = _scale_dir(cfg) / "tables", _scale_dir(cfg) / "figures"
    tables.mkdir(parents=True, exist_ok=True)
    kw = {"T": a.get("T", 1.0), "B": a.get("B", 1.0), "start": tuple(a.get("start", (0.01, 0.01))),
          "eta": a.get("eta", 0.01), "n_examples": a.get("n_examples", 1000), "seed": a.get("seed", 0)}
    if args.part in ("all", "figure"):
        for p in dynamics.plot_dynamics(figs / f"{args.analysis}_{a['name']}", **kw):
            print(p)
    if args.part == "figure":
        return 0
    summary = dynamics.summarise_dynamics(**kw)
    (tables / f"{args.analysis}_summary.json").write_text(json.dumps(summary, indent=2))
    row = dict.fromkeys(COMPARISON_COLUMNS, "")
    exp_, sim = summary["expected"], summary["fa_rule"]
    row.update({
        "experiment": args.analysis, "figure": a.get("figure", ""), "method": "feedback_alignment",
        "claim": "a trajectory from near (0, 0) ends on the stable branch W0·W = T with W > 0 (sign of B)",
        "metric": "W0·W", "source": a["source"], "n": 1, "n_diverged": 0, "scale": cfg["scale"], "epochs": 0,
        "statistic": f"expected flow ends at W0 = {exp_['W0']:.3f}, W = {exp_['W']:.3f} (W0·W = {exp_['W0_W']:.4f}); "
                     f"FA rule ends at W0 = {sim['W0']:.3f}, W = {sim['W']:.3f} (W0·W = {sim['W0_W']:.4f})",
        # both ends on the stable part of W0·W = T AND on the branch whose W has B's sign (the W < 0 branch is
        # stable too where W0 < -1: landing there does not make the claim hold)
        "verdict": "holds" if all(s["on_stable_branch"] and s["W_same_sign_as_B"] for s in (exp_, sim))
                   else "does NOT hold",
    })
    pd.DataFrame([row], columns=COMPARISON_COLUMNS).to_csv(tables / f"{args.analysis}_comparison.csv", index=False)
    return 0


def _training_time(prov: dict) -> str:
    """The provenance line's training time: the jobs' own wall time (an ensemble job's once), and beside it the
    sum over runs where that differs (each seed of an ensemble job records the whole job's time). Tables
    aggregated before the jobs' time was recorded give the sum over runs, named as such."""
    runs = prov["wall_seconds_total"]
    jobs = prov.get("job_seconds_total")
    if jobs is None:
        return (f"training wall time {runs:.0f} s summed over runs (where seeds trained as one ensemble, each "
                "counts the whole job's time)")
    if abs(runs - jobs) <= 0.01 * max(runs, 1.0):
        return f"training wall time {jobs:.0f} s"
    return f"training wall time {jobs:.0f} s of jobs ({runs:.0f} s summed over runs: seeds trained as one ensemble)"


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from biocredit.aggregate import to_markdown
    from biocredit.tracking import WandbRun, resolve_mode

    cfg = _load(args, rules=False)
    tables, figs = _scale_dir(cfg) / "tables", _scale_dir(cfg) / "figures"
    # Experiments not aggregated at this scale (paper scale is often run a few experiments at a time) are
    # named at the end of the table instead of failing the whole comparison; Snakemake's compare has them all.
    names = [e for e in [*cfg["experiments"], *cfg.get("analyses", {})] if (tables / f"{e}_comparison.csv").exists()]
    absent = [e for e in [*cfg["experiments"], *cfg.get("analyses", {})] if e not in names]
    if not names:
        raise ConfigError(f"{tables}: no experiment has been aggregated at scale {cfg['scale']}; run "
                          f"`snakemake --config scale={cfg['scale']}` (or aggregate an experiment) first")
    table = pd.concat([pd.read_csv(tables / f"{e}_comparison.csv") for e in names], ignore_index=True)
    table.to_csv(tables / "paper_comparison.csv", index=False)
    provs = {e: json.loads((tables / f"{e}_provenance.json").read_text()) for e in cfg["experiments"] if e in names}
    lines = [f"- {e}: {p['runs']} runs" + (f" (PARTIAL: {len(p['missing_runs'])} more not finished: training or not started)" if p.get("partial")
                                          else "") + f", seeds {p['seeds']}, commit {', '.join(_short(c) for c in p['git_commits'])}, "
             f"device {', '.join(p['devices'])}, torch {', '.join(p['torch'])}, "
             f"{_training_time(p)}" for e, p in provs.items()]
    header = (f"# Our numbers beside the papers' (scale: {cfg['scale']})\n\n"
              "Generated by `snakemake` from config.yaml; values marked [recalled] in the source column are the "
              "papers' numbers as remembered, not re-read.\n\n")
    if absent:
        lines.append(f"- not aggregated at this scale (no table yet): {', '.join(absent)}")
    (tables / "paper_comparison.md").write_text(header + to_markdown(table, "Provenance:\n" + "\n".join(lines)))
    wcfg = cfg.get("wandb", {})
    with WandbRun(wandb_dir=_scale_dir(cfg) / "wandb", project=wcfg.get("project", "biocredit"),
                  entity=wcfg.get("entity"), mode=resolve_mode(wcfg.get("mode")), name=f"aggregate-{cfg['scale']}",
                  group="aggregate", job_type="aggregate", config={"scale": cfg["scale"], "provenance": provs},
                  tags=[cfg["scale"]]) as run:
        run.log_table("paper_comparison", table)
        run.log_images({p.stem: p for p in sorted(figs.glob("*.png"))})
    print(tables / "paper_comparison.md")
    return 0


def cmd_sync_wandb(args: argparse.Namespace) -> int:
    from biocredit.tracking import sync_offline_runs

    cfg = _load(args)
    root = Path(args.dir) if args.dir else _scale_dir(cfg) / "wandb"  # where this scale's jobs write them
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder to search for offline W&B runs; pass --scale (or --dir) for the "
                          "results the runs were written with")
    try:
        synced = sync_offline_runs(root, dry_run=args.dry_run)
    except RuntimeError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    print(f"{'would sync' if args.dry_run else 'synced'} {len(synced)} offline W&B run(s) under {root}")
    return 0


def cmd_progress(args: argparse.Namespace) -> int:
    from biocredit import progress

    cfg = _load(args)
    for line in progress.report(cfg, args.experiment or list(cfg["experiments"])):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="biocredit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="validate config.yaml and count the runs of the chosen scale")
    _common(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("prepare-data", help="copy/download a dataset into the data folder and verify its hashes")
    _common(p)
    p.add_argument("dataset", choices=["mnist", "fashion_mnist", "cifar10"])
    p.add_argument("--data-dir", help="data folder; given, the config file is not read (data.dir otherwise)")
    p.add_argument("--mirror", help="local mirror folder (data.mirror otherwise; BIOCREDIT_DATA_MIRROR wins)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="allow torchvision's downloader (data.download otherwise; default: allowed)")
    p.set_defaults(func=cmd_prepare_data)
    p = sub.add_parser("train", help="train one experiment × method × seed (or several seeds at once)")
    _common(p)
    p.add_argument("--experiment", required=True)
    p.add_argument("--method", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=_seed)
    which.add_argument("--seeds", type=_seed_list, metavar="A-B|A,B,...",
                       help="train these seeds in one process, as one stacked ensemble where the rule and task "
                            "allow (synthetic tasks), else one after another; e.g. --seeds 0-19")
    p.add_argument("--out", help="run folder (default: <results_dir>/<scale>/runs/<experiment>/<method>/seed<N>)")
    p.set_defaults(func=cmd_train)
    for name, func, helptext in (("aggregate", cmd_aggregate, "collect one experiment's runs into tables"),
                                 ("figures", cmd_figures, "draw one experiment's figures from its tables")):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("--experiment", required=True)
        if name == "figures":
            p.add_argument("--figure", help="draw only this figure (a name from the experiment's figures)")
        else:
            p.add_argument("--partial", action="store_true",
                           help="aggregate the runs that have finished so far (a long paper-scale experiment in "
                                "progress); every verdict then says how many of the scale's seeds it rests on")
            p.add_argument("--from-table", action="store_true",
                           help="read no run folder: judge the claims and reported values again from the committed "
                                "<experiment>_runs.csv (after editing claims or tolerances in config.yaml)")
        p.set_defaults(func=func)
    p = sub.add_parser("select-length", help="choose an experiment's training length by its stopping rule "
                                            "(config length_selection): train the selection run, write the record")
    _common(p)
    p.add_argument("--experiment", required=True)
    p.add_argument("--report-only", action="store_true",
                   help="do not train: write the record from the selection run's metrics so far")
    p.set_defaults(func=cmd_select_length)
    p = sub.add_parser("figure-data", help="keep what the figures drawn from weights show (receptive fields, "
                                          "filters, reconstructions), read from the first seed's checkpoints")
    _common(p)
    p.add_argument("--experiment", required=True)
    p.add_argument("--figure", help="only this figure (a name from the experiment's figures)")
    p.set_defaults(func=cmd_figure_data)
    p = sub.add_parser("analysis", help="compute an analysis of update equations (e.g. the 1-1-1 FA dynamics)")
    _common(p)
    p.add_argument("--analysis", required=True)
    p.add_argument("--part", choices=("all", "tables", "figure"), default="all",
                   help="the figure (figures/<analysis>_<name>.png/.pdf), the tables (summary and comparison row) "
                        "or both (default)")
    p.set_defaults(func=cmd_analysis)
    p = sub.add_parser("progress", help="where the scale's training stands: finished, part-way and missing runs "
                                        "per experiment × method, and the training time left (read-only)")
    _common(p)
    p.add_argument("--experiment", action="append", help="only this experiment (repeatable; default: all)")
    p.set_defaults(func=cmd_progress)
    p = sub.add_parser("compare", help="write paper_comparison.{csv,md} and log it with the figures to W&B")
    _common(p)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("sync-wandb", help="upload every offline W&B run (needs `wandb login` or WANDB_API_KEY)")
    _common(p)
    p.add_argument("--dir", help="folder to search for offline runs (default: <results_dir>/<scale>/wandb, where "
                                 "that scale's training jobs write them)")
    p.add_argument("--dry-run", action="store_true", help="only list the runs")
    p.set_defaults(func=cmd_sync_wandb)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:  # bad input: one line, no traceback
        print(f"biocredit: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
