# Config validation (one line per problem, before any job runs), paths, and the run list.
import functools
import json
import os
import shlex
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from biocredit.config import (SCHEMA_PATH, WEIGHT_FIGURE_KINDS, ConfigError, config_hash, ensemble_seeds,
                              resolve_run, seeds, seeds_label)
from biocredit.selection import selection_run_config
from biocredit.progress import table_hashes
from biocredit.config import validate as biocredit_validate
from biocredit.data import DATASET_FOLDERS, FOLDER_TO_DATASET

if isinstance(config.get("ensembles"), str):  # --config ensembles=false arrives as a string
    config["ensembles"] = yaml.safe_load(config["ensembles"])
try:
    biocredit_validate(config, "config (config.yaml + --config/--configfile)")
except ConfigError as e:
    raise WorkflowError(str(e)) from None
validate(config, str(SCHEMA_PATH))

SCALE = config["scale"]
RESULTS = f"{config['results_dir']}/{SCALE}"
DATA = config.get("data", {}).get("dir", "data")
EXPERIMENTS = list(config["experiments"])
ANALYSES = list(config.get("analyses", {}))
# Jobs run the interpreter that runs Snakemake, by its name (python3, ...) with its folder first on PATH: the rules'
# command text, which Snakemake's "code" rerun trigger compares, then names no absolute path, so a venv rebuilt
# elsewhere, or a second checkout's, leaves finished jobs finished. SLURM jobs parse this file again and do the same.
PY = Path(sys.executable).name
_bin, _path = str(Path(sys.executable).parent), os.environ.get("PATH", "")
if _path.split(os.pathsep)[0] != _bin:
    os.environ.update(PATH=os.pathsep.join(filter(None, [_bin, _path])))  # sets PATH, never requires it

# Every job reads the merged config (config.yaml + command-line overrides) from one file, rewritten only
# when its content changes. Reruns are driven by each job's `params` (its resolved settings), so touching
# one experiment in config.yaml reruns only what depends on that experiment.
MERGED_CONFIG = Path(RESULTS) / "config.merged.yaml"
_text = yaml.safe_dump(dict(config), sort_keys=False)


# Written when the workflow starts, before any job: not by a dry run (`snakemake -n --config ...` plans with other
# settings and leaves results/ as it is) nor by the jobs of a cluster, which parse this file again.
onstart:
    if not MERGED_CONFIG.exists() or MERGED_CONFIG.read_text() != _text:
        MERGED_CONFIG.parent.mkdir(parents=True, exist_ok=True)
        MERGED_CONFIG.write_text(_text)


CLI = f"{PY} -m biocredit {{subcommand}} --config {MERGED_CONFIG}"


def cli(subcommand):
    return CLI.format(subcommand=subcommand)


def experiment_cfg(experiment):
    return config["experiments"][experiment]


def run_summaries(experiment):
    return expand(
        f"{RESULTS}/runs/{experiment}/{{method}}/seed{{seed}}/summary.json",
        method=list(experiment_cfg(experiment)["methods"]),
        seed=seeds(config, experiment),
    )


@functools.cache
def awaited_runs(experiment):
    """The runs that the experiment's tables lack, or hold with other settings than the config's now, and that
    have no run folder: their summaries, which the experiment's target and `all` also ask for.

    Snakemake does not rerun a job whose outputs exist only because an input is missing (a missing input is not
    "newer"), so tables without their run folders answer "Nothing to be done" to anything: partial tables, such
    as the committed paper-scale MNIST ones, would never train the rest, and in a clone (run folders are not
    committed) a changed learning rate or seed count would redraw the figures from the old tables. Asked for,
    these runs train, and the aggregation, figures and comparison follow them as usual; the aggregation then
    needs every run of the experiment, so in a clone the experiment trains afresh. Tables whose runs all match
    the config ask for nothing, so a clone of finished results trains nothing. A run whose folder exists is left
    to Snakemake's own triggers (its job's params are the run's settings)."""
    table = Path(RESULTS) / "tables" / f"{experiment}_runs.csv"
    if not table.is_file():  # no tables yet: the targets need them, and they need every run
        return []
    have = table_hashes(config, experiment)  # unreadable: as if it held none of the runs
    awaited = []
    for method in experiment_cfg(experiment)["methods"]:
        for seed in seeds(config, experiment):
            summary = f"{RESULTS}/runs/{experiment}/{method}/seed{seed}/summary.json"
            if not Path(summary).exists() and \
                    have.get((method, seed)) != config_hash(resolve_run(config, experiment, method, seed)):
                awaited.append(summary)
    return awaited


def ensemble_methods(experiment):
    """The methods of an experiment whose seeds train together in one job (rule train_ensemble_<experiment>)."""
    return [m for m in experiment_cfg(experiment)["methods"] if ensemble_seeds(config, experiment, m)]


def dataset_marker(experiment, outputs=None, runs=False):
    """The verified.json that rule prepare_data writes for the experiment's dataset (none for synthetic tasks).

    Marked ancient: the data are checked against fixed SHA-256 hashes, so a verified.json rewritten with the same
    content (a re-verification after a file's mtime changed, a second checkout sharing the data folder) must not
    make every finished run of that dataset look out of date. A missing verified.json still runs prepare_data.

    With ``outputs`` (the files a job writes), a verified.json that does not exist yet is asked for only by a job
    that has one of them missing and, for a training job (``runs``), only where the experiment's tables are
    missing or await runs (:func:`awaited_runs`: the runs that will train). A job that is done does not read the
    data again, and `ancient` does not stop Snakemake from rerunning every job whose input another job is about
    to make: in a clone or on a new machine without the data folder, prepare_data would otherwise retrain every
    finished (committed) run, and train every run that complete committed tables no longer need. An existing
    verified.json stays an input of every job, so the set of inputs Snakemake recorded for a finished job does
    not change (that too would rerun it). A job that runs without it (--forcerun, or a changed setting, on a
    machine whose data were never prepared) stops at once with the loader's line naming `prepare-data`."""
    folder = DATASET_FOLDERS.get(experiment_cfg(experiment)["dataset"])
    if not folder:
        return []
    marker = f"{DATA}/{folder}/verified.json"
    if outputs is None or Path(marker).exists():
        return [ancient(marker)]
    if all(Path(o).exists() for o in outputs):
        return []
    if runs and Path(RESULTS, "tables", f"{experiment}_comparison.csv").exists() and not awaited_runs(experiment):
        return []
    return [ancient(marker)]


class DataSourceFlags:
    """data.mirror and data.download as prepare-data flags (BIOCREDIT_DATA_MIRROR still wins inside).

    Not a rerun trigger (Snakemake compares only built-in parameter values): the data are verified against fixed
    SHA-256 hashes, so where they came from never makes them out of date. It must not be one: a prepare_data job
    that reruns while its verified.json exists makes Snakemake 9.27 skip every job downstream of that ancient()
    input, even one with reasons of its own (a changed setting, a missing run), in that invocation
    (`DAG.update_needrun`: the dependants are masked, then passed over because their only updated input is
    ancient)."""

    def __init__(self, data):
        flags = [f"--mirror {shlex.quote(str(data['mirror']))}"] if data.get("mirror") else []
        self.flags = " ".join(flags + ["--download" if data.get("download", True) else "--no-download"])

    def __str__(self):
        return self.flags

    __repr__ = __str__


def data_source_flags():
    return DataSourceFlags(config.get("data", {}))


def figure_cfg(w):
    return next(f for f in experiment_cfg(w.experiment)["figures"] if f["name"] == w.fig)


class ComparisonRows:
    """What a caption in the report lists: comparison rows (all of a table's, or those about the metrics a figure
    draws), read when the report is rendered (`snakemake --report`), after `aggregate` wrote them. A parameter of
    this class is not one of Snakemake's rerun triggers (it compares only built-in values), so a new verdict never
    redraws a figure."""

    RST_SPECIAL = "\\`*_|[]<>:"

    def __init__(self, path, metrics=None):
        self.path = Path(path)
        self.metrics = None if metrics is None else list(metrics)

    def __repr__(self):  # the report lists every job's parameters: no memory address there
        return f"comparison rows of {self.path}" + ("" if self.metrics is None else f" about {', '.join(self.metrics)}")

    def lines(self):
        if not self.path.is_file():
            return []
        import pandas as pd

        from biocredit.aggregate import caption_lines

        # each line is one bullet of reStructuredText: escape what it would read as markup
        return ["".join(f"\\{c}" if c in self.RST_SPECIAL else c for c in line)
                for line in caption_lines(pd.read_csv(self.path), self.metrics)]


def figure_metrics(fig):
    """The metrics whose comparison rows a figure's caption lists: those it draws (none for a figure of weights or
    images) and its `caption_metrics`."""
    drawn = [] if fig["kind"] in WEIGHT_FIGURE_KINDS else list(fig.get("metrics") or [fig["metric"]])
    return drawn + list(fig.get("caption_metrics", []))


def comparison_rows(w):
    """A figure's caption: the rows of its experiment's comparison about what the figure draws."""
    return ComparisonRows(f"{RESULTS}/tables/{w.experiment}_comparison.csv", figure_metrics(figure_cfg(w)))


def all_comparison_rows(w):
    """The caption of an experiment's (or analysis's) comparison table: every row."""
    name = getattr(w, "experiment", None) or w.analysis
    return ComparisonRows(f"{RESULTS}/tables/{name}_comparison.csv")


def figure_inputs(w):
    """The experiment's tables and, for a figure drawn from weights, the data that rule figure_data keeps."""
    inputs = {
        "curves": f"{RESULTS}/tables/{w.experiment}_curves.csv",
        "provenance": f"{RESULTS}/tables/{w.experiment}_provenance.json",
    }
    if figure_cfg(w)["kind"] in WEIGHT_FIGURE_KINDS:
        inputs["data"] = f"{RESULTS}/figure_data/{w.experiment}_{w.fig}.npz"
    return inputs


def analysis_figure_files(analysis):
    """An analysis's figure (PNG and PDF), named after the paper's figure (config `analyses.<analysis>.name`)."""
    stem = f"{RESULTS}/figures/{analysis}_{config['analyses'][analysis]['name']}"
    return [f"{stem}.png", f"{stem}.pdf"]


def figure_files(experiment):
    return expand(
        f"{RESULTS}/figures/{experiment}_{{fig}}.{{ext}}",
        fig=[f["name"] for f in experiment_cfg(experiment).get("figures", [])],
        ext=["png", "pdf"],
    )


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),
    analysis="|".join(ANALYSES) or "^$",
    seed=r"\d+",
    method=r"[A-Za-z0-9_]+",
