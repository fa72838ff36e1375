"""End to end: the real Snakemake workflow on a tiny copy of config.yaml (scale smoke), its report, its rerun
logic and its lint. One full run is shared by the module; the dry runs never change its outputs."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import MIRROR, REPO, REPO_CONFIG, method_with_rule, mnist_experiment

from biocredit.aggregate import caption_lines
from biocredit.config import WEIGHT_FIGURE_KINDS, ensemble_seeds
from biocredit.data import DATASET_FOLDERS, FOLDER_TO_DATASET
from biocredit.tracking import find_offline_runs, read_offline_run

pytestmark = pytest.mark.slow

SMOKE = {"epochs": 2, "seeds": 1, "train_subset": 300, "test_subset": 200}
ENSEMBLE_SEEDS = 2  # synthetic experiments with train.ensemble_seeds: two seeds, so that they train as ensembles


@dataclass
class Workflow:
    root: Path
    config: dict
    env: dict[str, str]

    @property
    def results(self) -> Path:
        return Path(self.config["results_dir"]) / self.config["scale"]

    def snakemake(self, *args: str, configfile: Path | None = None, timeout: float = 300, python: str = sys.executable,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [python, "-m", "snakemake", "--cores", "2", "-s", str(REPO / "Snakefile"),
               "--configfile", str(configfile or self.root / "config.yaml"), "--directory", str(self.root), *args]
        return subprocess.run(cmd, cwd=self.root, env=env or self.env, capture_output=True, text=True, timeout=timeout)


def referenced_methods(exp: dict) -> set[str]:
    """The methods an experiment's reported numbers, claims and figures name (empty: none named)."""
    names = {r["method"] for r in exp.get("reported", [])}
    for claim in exp.get("claims", []):
        names.update(claim.get("lower", []), claim.get("higher", []))
    for fig in exp.get("figures", []):
        names.update(fig.get("methods", []))
    return names & set(exp["methods"])


def tiny_config(root: Path) -> dict:
    """config.yaml at scale smoke, shrunk further (one seed, a few hundred examples, only the methods that
    reported numbers, claims or figures name), with data and results inside ``root``."""
    cfg = yaml.safe_load(REPO_CONFIG.read_text())
    cfg.update(scale="smoke", device="cpu", results_dir=str(root / "results"))
    cfg["data"] = {**cfg.get("data", {}), "dir": str(root / "data"), "download": False}
    cfg["wandb"] = {**cfg.get("wandb", {}), "mode": "offline"}
    for name, exp in list(cfg["experiments"].items()):
        folder = DATASET_FOLDERS.get(exp["dataset"])
        if folder is not None and not (MIRROR / folder).is_dir():  # not in the offline mirror: cannot run here
            del cfg["experiments"][name]
            continue
        keep = referenced_methods(exp)
        if keep:  # a sweep's other members are the same jobs again: leave them out to stay fast
            exp["methods"] = {m: spec for m, spec in exp["methods"].items() if m in keep}
        smoke = exp["scales"]["smoke"]
        smoke.update(epochs=min(smoke["epochs"], SMOKE["epochs"]),
                     seeds=ENSEMBLE_SEEDS if exp.get("train", {}).get("ensemble_seeds") else SMOKE["seeds"])
        if folder is not None:  # image datasets: a few hundred examples
            smoke.update(train_subset=SMOKE["train_subset"], test_subset=SMOKE["test_subset"])
            if exp.get("valid_size"):  # the validation error on as many held-out images
                smoke["valid_subset"] = SMOKE["test_subset"]
        task = exp.get("task", {})  # synthetic tasks: as few examples
        for key, n in (("n_train", SMOKE["train_subset"]), ("n_test", SMOKE["test_subset"])):
            if key in task:
                task[key] = min(task[key], n)
    return cfg


def new_workflow(root: Path) -> Workflow:
    """A working directory holding the tiny config.yaml (nothing run yet)."""
    cfg = tiny_config(root)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Workflow(root, cfg, workflow_env(root))


def workflow_env(root: Path) -> dict[str, str]:
    """This process's environment for a workflow in ``root``: W&B offline (its settings in ``root``), the mirror."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", BIOCREDIT_DATA_MIRROR=str(MIRROR), WANDB_CONFIG_DIR=str(root / ".wandb"))
    return env


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Workflow:
    wf = new_workflow(tmp_path_factory.mktemp("workflow"))
    proc = wf.snakemake(timeout=600)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return wf


def figures(wf: Workflow) -> dict[str, str]:
    """{file stem: caption} of every figure the config asks for (experiments' figures and analyses)."""
    out = {f"{name}_{fig['name']}": fig["caption"]
           for name, exp in wf.config["experiments"].items() for fig in exp.get("figures", [])}
    out.update({f"{name}_{analysis['name']}": analysis["caption"]
                for name, analysis in wf.config.get("analyses", {}).items()})
    return out


#: Every figure of Lillicrap et al. 2016 the workflow regenerates (file stems under results/<scale>/figures/).
LILLICRAP_FIGURES = {
    "lillicrap_linear_fig1_nse", "lillicrap_linear_fig1_angle", "lillicrap_mnist_fig2a_test_error",
    "lillicrap_mnist_fig2b_angle", "lillicrap_mnist_figS_receptive_fields", "lillicrap_teacher_fig2c_nse",
    "lillicrap_111_fig3_dynamics", "lillicrap_pinv_fig4_pinv",
}


def figure_paths(wf: Workflow) -> list[Path]:
    return [wf.results / "figures" / f"{stem}.{ext}" for stem in figures(wf) for ext in ("png", "pdf")]


def test_workflow_draws_every_figure_and_writes_the_comparison(workflow: Workflow):
    paths = figure_paths(workflow)
    assert paths, "config.yaml lists no figure"
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000, f"{p} missing or empty"
        assert p.read_bytes()[:4] == (b"\x89PNG" if p.suffix == ".png" else b"%PDF"), f"{p} is not a {p.suffix}"
    # every figure of Lillicrap et al. (issue: "a smoke-scale workflow run produces every figure"), named here so
    # that a figure dropped from config.yaml fails rather than goes unchecked
    assert LILLICRAP_FIGURES <= set(figures(workflow)), LILLICRAP_FIGURES - set(figures(workflow))
    # ... and each shows data: a curve figure has finite values of every metric for every method it draws (a
    # metric no run logged would still give a figure, saying "no finished run"); a figure of weights or images
    # has finite, non-constant values
    for name, exp in workflow.config["experiments"].items():
        curves = pd.read_csv(workflow.results / "tables" / f"{name}_curves.csv")
        for fig in exp.get("figures", []):
            if fig["kind"] == "curves":
                for method in fig.get("methods") or list(exp["methods"]):
                    for metric in fig.get("metrics") or [fig["metric"]]:
                        values = curves.loc[curves["method"] == method, f"{metric}_mean"]
                        assert np.isfinite(values).any(), f"{name}_{fig['name']}: no {metric} of {method} to draw"
            else:
                with np.load(workflow.results / "figure_data" / f"{name}_{fig['name']}.npz") as data:
                    shown = data["z" if "z" in data.files else "images"].astype(np.float32)
                assert np.isfinite(shown).all() and shown.std() > 0, f"{name}_{fig['name']}: nothing to show"

    tables = workflow.results / "tables"
    table = pd.read_csv(tables / "paper_comparison.csv")
    md = (tables / "paper_comparison.md").read_text()
    exps = workflow.config["experiments"]
    is_claim = table["claim"].notna() & (table["claim"] != "")
    for name, exp in exps.items():
        rows = table[table["experiment"] == name]
        reported = rows[~is_claim[rows.index]]
        assert sorted(reported["method"]) == sorted(r["method"] for r in exp.get("reported", [])), name
        for _, row in reported.iterrows():
            assert math.isfinite(row["ours_mean"]), f"no number for {name} / {row['method']}"
            assert row["n"] == exp["scales"]["smoke"]["seeds"] and row["scale"] == "smoke"
        assert set(rows.loc[is_claim[rows.index], "claim"]) == {c["text"] for c in exp.get("claims", [])}, name
        assert name in md
        assert (tables / f"{name}_provenance.json").is_file()
    for name in workflow.config.get("analyses", {}):
        assert (table["experiment"] == name).any(), f"analysis {name} missing from the comparison"


def test_workflow_draws_the_lee_cifar10_and_autoencoder_figures_and_probes_the_code(workflow: Workflow):
    """Lee et al. 2015 §3.4-3.5: the CIFAR-10 curves, the auto-encoder's reconstructions and filters (drawn from
    the runs' final weights) and the linear probe's test error in every auto-encoder run's summary."""
    exps = workflow.config["experiments"]
    if "lee_dtp_cifar10" not in exps or "lee_dtp_autoencoder" not in exps:
        pytest.skip("CIFAR-10 or MNIST missing from the data mirror")
    for stem in ("lee_dtp_cifar10_error", "lee_dtp_cifar10_angle_dW", "lee_dtp_autoencoder_reconstructions",
                 "lee_dtp_autoencoder_features"):
        png = workflow.results / "figures" / f"{stem}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", png
    for method in exps["lee_dtp_autoencoder"]["methods"]:
        summary = json.loads((workflow.results / "runs" / "lee_dtp_autoencoder" / method / "seed0" /
                              "summary.json").read_text())
        assert 0 <= summary["final"]["probe_test_error"] <= 100, summary["final"]
    table = pd.read_csv(workflow.results / "tables" / "paper_comparison.csv")
    assert (table["metric"] == "probe_test_error").any()


def test_synthetic_cells_train_as_one_ensemble_job_each_and_the_switch_turns_it_off(workflow: Workflow):
    cells = [(name, m) for name, exp in workflow.config["experiments"].items()
             if exp.get("train", {}).get("ensemble_seeds") for m in exp["methods"]]
    assert cells, "config.yaml marks no experiment for ensembles"
    for name, method in cells:
        assert (workflow.results / "logs" / "train" / name / method / f"seeds0-{ENSEMBLE_SEEDS - 1}.log").is_file()
        for seed in range(ENSEMBLE_SEEDS):
            summary = yaml.safe_load((workflow.results / "runs" / name / method / f"seed{seed}" / "summary.json").read_text())
            assert summary["seed"] == seed and summary["provenance"]["ensemble_size"] == ENSEMBLE_SEEDS
    proc = workflow.snakemake("-n", "--forceall", "--config", "ensembles=false")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out)
    assert not any(rule.startswith("train_ensemble") for rule in counts), counts
    n_runs = sum(len(e["methods"]) * e["scales"]["smoke"]["seeds"] for e in workflow.config["experiments"].values())
    assert counts["train"] == n_runs
    # ensembles=all: every cell with a stacked form, image data too (Lillicrap's MNIST, for a GPU), one job per cell
    proc = workflow.snakemake("-n", "--forceall", "--config", "ensembles=all")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out)
    every = {**workflow.config, "ensembles": "all"}
    stacked = {(n, m) for n, e in workflow.config["experiments"].items() for m in e["methods"] if ensemble_seeds(every, n, m)}
    assert {("lillicrap_mnist", m) for m in workflow.config["experiments"]["lillicrap_mnist"]["methods"]} <= stacked
    for name in workflow.config["experiments"]:
        assert counts.get(f"train_ensemble_{name}", 0) == sum(1 for n, _ in stacked if n == name), (name, counts)
    assert counts["train"] == n_runs - sum(workflow.config["experiments"][n]["scales"]["smoke"]["seeds"] for n, _ in stacked)


def test_workflow_logs_every_run_and_the_aggregate_to_wandb_offline(workflow: Workflow):
    runs = {read_offline_run(r)["run"]["name"]: r for r in find_offline_runs(workflow.results / "wandb")}
    assert "aggregate-smoke" in runs, sorted(runs)
    for name, exp in workflow.config["experiments"].items():
        for method in exp["methods"]:
            for seed in range(exp["scales"]["smoke"]["seeds"]):
                assert f"{name}-{method}-seed{seed}" in runs, sorted(runs)
    aggregate = read_offline_run(runs["aggregate-smoke"])
    assert aggregate["run"]["group"] == "aggregate" and aggregate["exit_code"] == 0
    logged = {k: v for row in aggregate["history"] for k, v in row.items()}  # nested keys come back joined by '.'
    table = pd.read_csv(workflow.results / "tables" / "paper_comparison.csv")
    assert logged.get("paper_comparison._type") == "table-file", "the comparison table was not logged"
    assert logged.get("paper_comparison.nrows") == len(table)
    for png in (p for p in figure_paths(workflow) if p.suffix == ".png"):
        assert logged.get(f"{png.stem}._type") == "image-file", f"figure {png.stem} was not logged"


def caption_fragments(caption: str) -> list[str]:
    """Plain-text stretches of a caption (the report escapes symbols such as ± and may rewrap HTML specials)."""
    return [f.strip() for f in re.split(r"[^A-Za-z0-9 .,;:%()=]+", caption) if len(f.strip()) >= 12]


def test_report_embeds_every_figure_with_its_caption(workflow: Workflow):
    report = workflow.root / "report.html"
    proc = workflow.snakemake("--report", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = report.read_text()
    for stem, caption in figures(workflow).items():
        assert f"{stem}.png" in html
        fragments = caption_fragments(caption)
        assert fragments, f"caption of {stem} too short to check"
        for fragment in fragments:
            assert fragment in html, f"caption text {fragment!r} of {stem} not in the report"
    assert "paper_comparison.csv" in html
    # each experiment's own table of what we got beside the paper, in the experiment's category with its figures
    assert "What we got beside what the paper reports, for" in html
    tables = [*workflow.config["experiments"], *workflow.config.get("analyses", {})]
    for name in tables:
        assert f"{name}_comparison.csv" in html
    # each figure's caption lists the rows about what it draws (the paper's number, ours, the verdict, the source),
    # and each comparison table's caption lists all its rows: every row is a list item of some caption
    assert "What we got beside what the paper reports, at this scale" in html
    # a figure of weights draws no number: its caption says so instead of listing the experiment's test errors
    assert "This figure draws no number or claim that the comparison checks" in html
    for experiment in tables:
        rows = pd.read_csv(workflow.results / "tables" / f"{experiment}_comparison.csv")
        assert len(rows), f"{experiment}: an empty comparison"
        for line in caption_lines(rows):
            fragments = caption_fragments(line)
            for fragment in fragments:
                assert fragment in html, f"{experiment}: {fragment!r} of its comparison is in no caption"
            if fragments and line.startswith(fragments[0]):  # one item of a list, not run-on text
                assert f"<li>{fragments[0]}" in html, f"{experiment}: {line!r} is not a list item of a caption"


def test_a_finished_workflow_has_nothing_to_do(workflow: Workflow):
    proc = workflow.snakemake("-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Nothing to be done" in out, f"a second run would redo jobs:\n{out[-3000:]}"


def stamp_in_path_order(root: Path, paths: list[Path]) -> None:
    """Give ``paths`` strictly increasing mtimes in the order of their paths relative to ``root``, as a git
    checkout writes them (so results/*/tables/ ends up newer than results/*/figures/, whatever the DAG says)."""
    t0 = 1_700_000_000
    for k, p in enumerate(sorted(paths, key=lambda q: q.relative_to(root).as_posix())):
        os.utime(p, (t0 + k, t0 + k))


def committed_outputs(results: Path) -> list[Path]:
    """What the repository commits of a scale's results (.gitignore: runs/, logs/, wandb/ are not)."""
    keep = ("tables", "figures", "figure_data")
    return [p for p in results.rglob("*") if p.is_file() and p.relative_to(results).parts[0] in keep]


def test_a_fresh_clone_redraws_its_figures_from_committed_files_alone(workflow: Workflow, tmp_path: Path):
    """A clone has the committed tables, figures and figure data but no run folders (checkpoints), and git sets
    file times in path order, so the tables look newer than the figures. The workflow must redraw from what is
    committed: no training, aggregation or checkpoint reading, every figure drawn, and then nothing to do."""
    clone = new_workflow(tmp_path)
    for p in committed_outputs(workflow.results):
        dest = clone.results / p.relative_to(workflow.results)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    weight_figs = [f"{name}_{f['name']}" for name, exp in clone.config["experiments"].items()
                   for f in exp.get("figures", []) if f["kind"] in WEIGHT_FIGURE_KINDS]
    assert weight_figs, "config.yaml draws no figure from weights"
    for stem in weight_figs:
        assert (clone.results / "figure_data" / f"{stem}.npz").is_file(), stem
    stamp_in_path_order(clone.root, [clone.root / "config.yaml", *committed_outputs(clone.results)])
    assert not (clone.results / "runs").exists() and not (clone.root / "data").exists()

    proc = clone.snakemake("-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out)
    assert counts.get("figures"), "the path-order times should make the figures look out of date"
    assert not {"train", "prepare_data", "aggregate", "figure_data"} & set(counts), counts
    assert not any(rule.startswith("train_ensemble") for rule in counts), counts

    proc = clone.snakemake()
    assert proc.returncode == 0, f"a fresh clone's workflow failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for p in committed_outputs(workflow.results):  # redrawn the same, byte for byte: a clean `git status`
        assert (clone.results / p.relative_to(workflow.results)).read_bytes() == p.read_bytes(), p.name
    proc = clone.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]

    # a changed learning rate in the clone trains that experiment (its tables hold runs of the old rate) instead
    # of redrawing its figures from the old tables; found 2026-12-03: it planned the figures only
    exp_name, fa, exp, out = plan_with_fa_lr_tripled(clone)
    trained = set(re.findall(r"Training (\S+) / (\S+) / seed (\d+)", out))
    every_run = {(exp_name, m, str(s)) for m in exp["methods"] for s in range(exp["scales"]["smoke"]["seeds"])}
    assert trained == every_run, trained  # the aggregation needs them all: none is in the clone
    assert job_counts(out).get("prepare_data") == 1 and job_counts(out).get("aggregate") == 1, out[-3000:]


def test_the_committed_quick_results_need_no_run_folders(tmp_path: Path):
    """The same for this repository's own committed quick-scale results: planned in a copy of what git tracks
    (times in path order, no run folders, no data), nothing would train, aggregate or read a checkpoint."""
    proc = subprocess.run(["git", "ls-files", "-z", "results/quick"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout:
        pytest.skip("not a git checkout with committed quick results")
    tracked = [REPO / f for f in proc.stdout.split("\0") if f]
    for p in tracked:
        dest = tmp_path / p.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    (tmp_path / "config.yaml").write_bytes(REPO_CONFIG.read_bytes())
    stamp_in_path_order(tmp_path, [p for p in tmp_path.rglob("*") if p.is_file()])
    clone = Workflow(tmp_path, {}, workflow_env(tmp_path))
    proc = clone.snakemake("-n", "--config", "scale=quick")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out) if "Job stats:" in out else {}
    assert not {"train", "prepare_data", "aggregate", "figure_data"} & set(counts), counts
    assert not any(rule.startswith("train_ensemble") for rule in counts), counts


def test_partial_tables_ask_for_the_runs_they_lack(workflow: Workflow, tmp_path: Path):
    """Tables that `aggregate --partial` made while runs still train (the committed paper-scale MNIST ones) must
    not answer the experiment's target or `all` with "Nothing to be done": Snakemake reruns no job whose outputs
    exist because an input is missing, so without more the lacking runs would never train. Here a clone holds
    every run but one, its tables made by the real `aggregate --partial`, times in path order as git sets them,
    and no data folder: the data are prepared for the lacking run, and that must not retrain the finished ones."""
    exp_name = mnist_experiment(workflow.config)
    clone = new_workflow(tmp_path)
    for p in committed_outputs(workflow.results):
        dest = clone.results / p.relative_to(workflow.results)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    runs = sorted(p.parent for p in (workflow.results / "runs" / exp_name).glob("*/seed*/summary.json"))
    assert len(runs) >= 2, runs
    lacking, finished = runs[0], runs[1:]
    for run in finished:
        shutil.copytree(run, clone.results / run.relative_to(workflow.results))
    proc = subprocess.run([sys.executable, "-m", "biocredit", "aggregate", "--experiment", exp_name, "--partial",
                           "--config", str(clone.root / "config.yaml")], cwd=clone.root, env=clone.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    provenance = json.loads((clone.results / "tables" / f"{exp_name}_provenance.json").read_text())
    assert provenance["partial"] is True and len(provenance["missing_runs"]) == 1, provenance
    stamp_in_path_order(clone.root, [p for p in clone.root.rglob("*") if p.is_file()])  # runs/ older than tables/

    for target in ([exp_name], []):  # the experiment's target, then `all`
        proc = clone.snakemake("-n", *target)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert "Nothing to be done" not in out, f"{target or 'all'}: the lacking run is never trained\n{out[-3000:]}"
        counts = job_counts(out)
        assert counts.get("train") == 1 and counts.get("aggregate") == 1, (target, counts)
        assert counts.get("prepare_data") == 1, (target, counts)
        trained = re.findall(r"Training (\S+) / (\S+) / seed (\d+)", out)
        assert set(trained) == {(exp_name, lacking.parent.name, lacking.name.removeprefix("seed"))}, trained

    # once aggregated in full (here: the lacking run back in place), the tables ask for nothing more
    shutil.copytree(lacking, clone.results / lacking.relative_to(workflow.results))
    proc = subprocess.run([sys.executable, "-m", "biocredit", "aggregate", "--experiment", exp_name,
                           "--config", str(clone.root / "config.yaml")], cwd=clone.root, env=clone.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = clone.snakemake("-n", exp_name)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out) if "Job stats:" in out else {}
    assert not {"train", "aggregate"} & set(counts), counts

    # a finished run forced to rerun where the data were never prepared stops with the loader's line
    forced = finished[0]
    method, seed = forced.parent.name, forced.name.removeprefix("seed")
    proc = clone.snakemake("--forcerun", "train", "--", str(clone.results / forced.relative_to(workflow.results)
                                                               / "summary.json"))
    assert proc.returncode != 0 and not (clone.root / "data").exists(), (proc.stdout + proc.stderr)[-3000:]
    log = (clone.results / "logs" / "train" / exp_name / method / f"seed{seed}.log").read_text()
    assert "not prepared" in log and f"prepare-data {clone.config['experiments'][exp_name]['dataset']}" in log, log


def test_reverifying_the_shared_data_folder_never_reruns_finished_trainings(workflow: Workflow):
    """The data folder is shared by every scale: a verified.json rewritten with the same content (new mtime), or a
    plan for another scale, must not mark the finished runs of this one out of date (a whole paper-scale CIFAR-10
    table would otherwise retrain after a quick run)."""
    data_dir = Path(workflow.config["data"]["dir"])
    markers = sorted(data_dir.glob("*/verified.json"))
    assert markers, "the workflow prepared no dataset"
    for marker in markers:  # a real re-verification: a new verified.json (new time stamp), newer than every run
        before = json.loads(marker.read_text())
        marker.unlink()
        subprocess.run([sys.executable, "-m", "biocredit", "prepare-data", FOLDER_TO_DATASET[marker.parent.name], "--data-dir", str(data_dir),
                        "--no-download"], cwd=workflow.root, env=workflow.env, check=True, capture_output=True)
        after = json.loads(marker.read_text())
        assert after["sha256"] == before["sha256"]
    proc = workflow.snakemake("-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Nothing to be done" in out, f"a newer verified.json reruns jobs:\n{out[-3000:]}"

    # the data's source (a mirror named in the config instead of the environment, download off) is no reason to
    # verify them again: that rerun would make Snakemake skip the jobs downstream of it (see DataSourceFlags)
    moved = copy.deepcopy(workflow.config)
    moved["data"] = {**moved["data"], "mirror": str(MIRROR), "download": False}
    path = workflow.root / "config_mirror.yaml"
    path.write_text(yaml.safe_dump(moved, sort_keys=False))
    proc = workflow.snakemake("-n", configfile=path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Nothing to be done" in out, f"a new data source reruns jobs:\n{out[-3000:]}"

    # another scale: its own runs are planned, but not the (scale-independent) data preparation
    proc = workflow.snakemake("-n", "--config", "scale=quick")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out)
    assert counts.get("train", 0) + sum(v for k, v in counts.items() if k.startswith("train_ensemble")) > 0
    assert "prepare_data" not in counts, out[-3000:]

    # a missing marker is prepared again before a training that needs it (finished runs do not need it)
    markers[0].rename(markers[0].with_name("verified.json.bak"))
    try:
        proc = workflow.snakemake("-n", "--config", "scale=quick")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert job_counts(out).get("prepare_data") == 1, out[-3000:]
    finally:
        markers[0].with_name("verified.json.bak").rename(markers[0])


def test_a_named_experiment_target_plans_only_that_experiment(workflow: Workflow):
    exp_name = mnist_experiment(workflow.config)
    (workflow.results / "tables" / f"{exp_name}_comparison.csv").unlink()
    proc = workflow.snakemake("-n", exp_name)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert set(re.findall(r"Aggregating the runs of (\S+)", out)) == {exp_name}, out[-3000:]
    assert "compare" not in job_counts(out)
    assert workflow.snakemake(exp_name).returncode == 0  # and restores the table for the other tests


def test_the_same_environment_at_another_path_reruns_nothing_and_runs_the_jobs(workflow: Workflow, tmp_path: Path):
    """Snakemake reruns a job whose command text changed ("code" trigger). The commands must not name the absolute
    path of the interpreter: the same environment reached through another path (a venv rebuilt elsewhere, a second
    checkout) leaves a finished workflow finished, and its jobs still run with that interpreter, even when PATH
    does not lead to it."""
    moved = tmp_path / "env-moved"
    moved.symlink_to(Path(sys.prefix), target_is_directory=True)
    python = moved / Path(sys.executable).parent.relative_to(sys.prefix) / Path(sys.executable).name
    assert subprocess.run([str(python), "-c", "import biocredit, snakemake"], timeout=60).returncode == 0
    finish = workflow.snakemake()  # finished under this interpreter (earlier tests may have left `compare` to redo)
    assert finish.returncode == 0, (finish.stdout + finish.stderr)[-3000:]

    proc = workflow.snakemake("-n", python=str(python))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Nothing to be done" in out, f"the moved interpreter would redo jobs:\n{out[-3000:]}"

    # A real job under that interpreter, with a PATH that reaches neither it nor the original environment.
    exp_name = mnist_experiment(workflow.config)
    table = workflow.results / "tables" / f"{exp_name}_comparison.csv"
    before = table.read_text()
    table.unlink()
    env = {**workflow.env, "PATH": os.pathsep.join(["/usr/bin", "/bin"])}
    proc = workflow.snakemake("-p", exp_name, python=str(python), env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"{python.name} -m biocredit aggregate" in out and str(sys.prefix) not in out, out[-3000:]
    assert table.read_text() == before


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: {rule: count}."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def plan_with_fa_lr_tripled(wf: Workflow) -> tuple[str, str, dict, str]:
    """The dry run of ``wf`` with FA's learning rate on MNIST tripled: (experiment, fa, its changed config, output)."""
    exp_name = mnist_experiment(wf.config)
    fa = method_with_rule(wf.config, exp_name, "feedback_alignment")
    changed = copy.deepcopy(wf.config)
    exp = changed["experiments"][exp_name]
    exp["methods"][fa]["train"] = {**exp["methods"][fa].get("train", {}), "lr": exp["train"]["lr"] * 3}
    path = wf.root / "config_fa_lr.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    proc = wf.snakemake("-n", configfile=path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return exp_name, fa, exp, out


def test_changing_one_methods_learning_rate_reruns_only_that_method_and_downstream(workflow: Workflow):
    exp_name, fa, exp, out = plan_with_fa_lr_tripled(workflow)
    trained = set(re.findall(r"Training (\S+) / (\S+) / seed (\d+)", out))
    seeds = range(exp["scales"]["smoke"]["seeds"])
    assert trained == {(exp_name, fa, str(s)) for s in seeds}, trained
    counts = job_counts(out)
    assert counts.get("train") == len(seeds)
    assert "prepare_data" not in counts
    assert counts.get("aggregate") == 1 and counts.get("compare") == 1
    assert counts.get("figures") == len(exp.get("figures", []))
    assert set(re.findall(r"Aggregating the runs of (\S+)", out)) == {exp_name}


def test_a_workflow_stopped_mid_training_resumes_the_run_on_a_plain_rerun(tmp_path: Path):
    """Ctrl-C in the middle of a training job, then the same command again: the default profile (its
    rerun-incomplete; found through the top-level ``profiles`` link, since Snakemake looks for profiles/default
    beside the Snakefile) reruns the job, and the job resumes from its checkpoint. Found 2026-12-03: the profile
    sat only in workflow/profiles/default, which Snakemake never reads, and the rerun stopped with
    IncompleteFilesException."""
    import signal
    import time

    import torch

    wf = new_workflow(tmp_path)
    exp_name = mnist_experiment(wf.config)
    bp = method_with_rule(wf.config, exp_name, "backprop")
    epochs = 30  # of 3,000 images (~0.3 s each on one core): long enough that it cannot end before the Ctrl-C
    wf.config["experiments"][exp_name]["scales"]["smoke"].update(epochs=epochs, train_subset=3000)
    (wf.root / "config.yaml").write_text(yaml.safe_dump(wf.config, sort_keys=False))
    run = wf.results / "runs" / exp_name / bp / "seed0"
    target = str(run / "summary.json")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "-s", str(REPO / "Snakefile"), "--configfile",
           str(wf.root / "config.yaml"), "--directory", str(wf.root), target]
    with open(tmp_path / "first.log", "w") as log:
        # its own process group, as a terminal's Ctrl-C reaches; SIGINT handled as in a terminal even where this
        # test runs from a background job of a script (which starts with SIGINT ignored, and children inherit it)
        proc = subprocess.Popen(cmd, cwd=wf.root, env=wf.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline, epoch = time.monotonic() + 300, 0
            while epoch < 1:
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint after 300 s"
                if (run / "checkpoint.pt").exists():
                    epoch = torch.load(run / "checkpoint.pt", weights_only=False)["epoch"]
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    first = (tmp_path / "first.log").read_text()
    assert "Using workflow specific profile" in first, first[-3000:]
    assert not (run / "summary.json").exists(), "the run finished before it could be stopped"
    stopped_at = torch.load(run / "checkpoint.pt", weights_only=False)["epoch"]
    assert 1 <= stopped_at < epochs

    again = wf.snakemake(target)  # the same command again, no extra flag
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    log = (wf.results / "logs" / "train" / exp_name / bp / "seed0.log").read_text()
    assert f"resuming from the checkpoint of epoch {stopped_at}" in log, log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_done"] == epochs and len(summary["provenance"]["segments"]) >= 2
    rows = pd.read_csv(run / "metrics.csv")
    assert list(rows["epoch"]) == list(range(epochs + 1)), "rows lost or written twice across the stop"


def test_snakemake_lint_is_clean(tmp_path: Path):
    proc = new_workflow(tmp_path).snakemake("--lint")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Lints for" not in out, out
