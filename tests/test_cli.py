"""``python -m biocredit``: bad input ends with exit code 2 and one line on stderr, before any compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import MNIST_FILES, REPO_CONFIG, method_with_rule, mnist_experiment, one_line, run_cli

from biocredit import cli
from biocredit.config import resolve_run

EXP = mnist_experiment()


def test_prepare_data_without_mirror_or_download_names_the_missing_files(tmp_path: Path, cli_env: dict[str, str]):
    empty_mirror = tmp_path / "empty_mirror"
    empty_mirror.mkdir()
    env = {**cli_env, "BIOCREDIT_DATA_MIRROR": str(empty_mirror)}
    data_dir = tmp_path / "data"
    proc = run_cli("prepare-data", "mnist", "--config", str(REPO_CONFIG), "--set", "data.download=false",
                   "--set", f"data.dir={data_dir}", env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert "Traceback" not in line
    assert "missing" in line and all(name in line for name in MNIST_FILES), line
    assert str(empty_mirror) in line, "the message does not say which mirror was searched"
    assert "BIOCREDIT_DATA_MIRROR" in line and "download" in line, "the message names no fix"
    assert not (data_dir / "MNIST" / "verified.json").exists()


def test_train_with_an_unknown_experiment_exits_2_naming_it(tmp_path: Path, cli_env: dict[str, str]):
    results = tmp_path / "results"
    proc = run_cli("train", "--config", str(REPO_CONFIG), "--set", f"results_dir={results}",
                   "--experiment", "lillicrap_mnits", "--method", "bp", "--seed", "0",
                   env=cli_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert "lillicrap_mnits" in line and EXP in line, "the message does not list the known experiments"
    assert not results.exists(), "an unknown experiment still created a results folder"


def test_train_with_an_unknown_method_exits_2_listing_the_methods(capsys: pytest.CaptureFixture[str], tmp_path):
    methods = yaml.safe_load(REPO_CONFIG.read_text())["experiments"][EXP]["methods"]
    rc = cli.main(["train", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path / 'results'}",
                   "--experiment", EXP, "--method", "dtp", "--seed", "0"])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert "dtp" in line and all(m in line for m in methods)
    assert not (tmp_path / "results").exists()


def test_train_on_unprepared_data_exits_2_saying_how_to_prepare(capsys: pytest.CaptureFixture[str], tmp_path):
    bp = method_with_rule(yaml.safe_load(REPO_CONFIG.read_text()), EXP, "backprop")
    rc = cli.main(["train", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path / 'results'}",
                   "--set", f"data.dir={tmp_path / 'nodata'}", "--set", "device=cpu", "--scale", "smoke",
                   "--experiment", EXP, "--method", bp, "--seed", "0"])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert "mnist" in line and "prepare-data" in line


@pytest.mark.parametrize("seed, words", [("-1", "a seed is 0 or more"), ("one", "expected a whole number")])
def test_train_with_a_negative_or_non_numeric_seed_exits_2_before_any_folder(capsys, tmp_path, seed: str, words: str):
    # before: --seed -1 trained into a folder "seed-1", which --seeds A-B and the Snakefile cannot name
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path / 'results'}",
                  "--experiment", EXP, "--method", "bp", "--seed", seed])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--seed" in line and repr(seed) in line and words in line, line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", ["aggregate", "figures", "figure-data", "select-length", "progress"])
def test_every_command_names_an_unknown_experiment_in_one_line(capsys, tmp_path, command: str):
    # before: aggregate and figures ended in a KeyError traceback
    rc = cli.main([command, "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path / 'results'}",
                   "--experiment", "lillicrap_mnits"])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("biocredit: --experiment lillicrap_mnits: no such experiment") and EXP in line, line
    assert not (tmp_path / "results").exists()


def test_figures_before_aggregation_exits_2_naming_the_table_and_the_command(capsys, tmp_path):
    rc = cli.main(["figures", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
                   "--experiment", EXP])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    table = tmp_path / "smoke" / "tables" / f"{EXP}_curves.csv"
    assert f"{table}: missing" in line and f"biocredit aggregate --experiment {EXP} --scale smoke" in line, line
    assert not (tmp_path / "smoke" / "figures").exists()


def test_train_on_a_device_this_machine_lacks_exits_2_before_any_run_folder(capsys, tmp_path):
    # cuda:99 is missing on every machine: "CUDA is not available" without a GPU, the device count with one
    rc = cli.main(["train", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path / 'results'}",
                   "--set", "device=cuda:99", "--scale", "smoke", "--experiment", EXP, "--method", "bp", "--seed", "0"])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("biocredit: device: 'cuda:99'") and ("not available" in line or "CUDA device(s)" in line)
    assert not (tmp_path / "results").exists()


def test_train_into_a_folder_that_cannot_be_made_exits_2_naming_it(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    rc = cli.main(["train", "--config", str(REPO_CONFIG), "--set", "device=cpu", "--scale", "smoke",
                   "--experiment", EXP, "--method", "bp", "--seed", "0", "--out", str(blocker / "run")])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"biocredit: {blocker / 'run'}: cannot make the run folder") and "set --out" in line, line


def test_figures_of_an_unknown_figure_exits_2_listing_the_figures(capsys, tmp_path):
    # before: exit 0 and nothing drawn
    figures = [f["name"] for f in yaml.safe_load(REPO_CONFIG.read_text())["experiments"][EXP]["figures"]]
    rc = cli.main(["figures", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}",
                   "--experiment", EXP, "--figure", "fig9"])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("biocredit: --figure fig9: ") and all(f in line for f in figures), line


def test_sync_wandb_of_a_folder_that_does_not_exist_exits_2_naming_it(capsys, tmp_path):
    # before: "synced 0 offline W&B run(s)", exit 0, for a mistyped --dir
    rc = cli.main(["sync-wandb", "--config", str(REPO_CONFIG), "--dir", str(tmp_path / "resluts"), "--dry-run"])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"biocredit: {tmp_path / 'resluts'}: no such folder") and "--dir" in line, line


def test_set_without_equals_sign_is_one_line(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["validate", "--config", str(REPO_CONFIG), "--set", "scale"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--set" in line and "KEY=VALUE" in line


def test_aggregate_before_training_exits_2_naming_a_missing_run(capsys: pytest.CaptureFixture[str], tmp_path):
    rc = cli.main(["aggregate", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
                   "--experiment", EXP])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert "summary.json" in line and "missing" in line


def _finished_run(d: Path, method: str, seed: int, error: float, run_config: dict | None = None) -> None:
    import json

    d.mkdir(parents=True)
    (d / "metrics.csv").write_text(f"epoch,examples_seen,test_error,angle_dh_1\n0,0,1.0,90.0\n1,300,{error},30.0\n")
    (d / "summary.json").write_text(json.dumps({
        "experiment": "lillicrap_linear", "method": method, "rule": method, "seed": seed, "scale": "smoke",
        "status": "completed", "epochs_done": 1, "epochs": 1, "final": {"epoch": 1, "test_error": error, "angle_dh_1": 30.0},
        "best_test_error": error, "wall_seconds": 1.0,
        "provenance": {"config_hash": "h", "git_commit": "c", "device": "cpu", "torch": "t", "n_train": 300, "n_test": 200},
        **({"run_config": run_config} if run_config else {})}))


def test_partial_aggregation_of_a_run_in_progress_says_how_many_seeds_each_verdict_rests_on(capsys, tmp_path):
    """A long paper-scale experiment can be tabulated while it trains: --partial aggregates the finished runs and
    marks every verdict that rests on fewer seeds than the scale's; without it, aggregate refuses in one line."""
    import json

    import pandas as pd

    runs = tmp_path / "smoke" / "runs" / "lillicrap_linear"
    _finished_run(runs / "bp" / "seed0", "bp", 0, 1e-3)
    _finished_run(runs / "bp" / "seed1", "bp", 1, 2e-3)
    _finished_run(runs / "fa" / "seed0", "fa", 0, 3e-3)
    args = ["aggregate", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
            "--experiment", "lillicrap_linear"]
    assert cli.main(args) == 2
    line = one_line(capsys.readouterr().err)
    assert "missing" in line and "--partial" in line
    assert cli.main([*args, "--partial"]) == 0
    assert "PARTIAL" in capsys.readouterr().out
    tables = tmp_path / "smoke" / "tables"
    prov = json.loads((tables / "lillicrap_linear_provenance.json").read_text())
    assert prov["partial"] is True and prov["runs"] == 3 and len(prov["missing_runs"]) == 5  # 4 methods x 2 seeds
    table = pd.read_csv(tables / "lillicrap_linear_comparison.csv")
    verdicts = dict(zip(table["claim"], table["verdict"], strict=True))
    angle = next(v for c, v in verdicts.items() if "angle" in c)
    assert angle.startswith("partial (fa 1 of 2 seeds): holds"), angle
    below = next(v for c, v in verdicts.items() if "BP and FA both end below" in c)
    assert below.startswith("no finished run of shallow, node_perturbation"), below


def test_aggregate_leaves_out_runs_made_with_other_settings_and_says_which(capsys, tmp_path):
    """A training length changed after runs finished (Lillicrap's 300 -> 1846 epochs): those runs are not the
    config's runs now. Without --partial one line names a run and the setting; with it they are left out, listed in
    the provenance, and the table rests on the runs made with today's settings."""
    import json

    import pandas as pd

    from biocredit.config import load_config

    exp, longer = "lillicrap_linear", {"experiments.lillicrap_linear.scales.smoke.epochs": 3}
    then, now = load_config(REPO_CONFIG, {"scale": "smoke"}), load_config(REPO_CONFIG, {"scale": "smoke", **longer})
    runs = tmp_path / "smoke" / "runs" / exp
    for m in then["experiments"][exp]["methods"]:
        for s in range(then["experiments"][exp]["scales"]["smoke"]["seeds"]):
            made = now if (m, s) == ("bp", 0) else then  # one run made with the new length, the others before
            _finished_run(runs / m / f"seed{s}", m, s, 1e-3 * (s + 1), resolve_run(made, exp, m, s))
    args = ["aggregate", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
            "--experiment", exp, "--set", "experiments.lillicrap_linear.scales.smoke.epochs=3"]
    assert cli.main(args) == 2
    line = one_line(capsys.readouterr().err)
    assert "other settings" in line and "epochs: 1 -> 3" in line and "summary.json" in line, line
    assert cli.main([*args, "--partial"]) == 0
    assert "left out 7 finished run(s) made with other settings" in capsys.readouterr().err
    tables = tmp_path / "smoke" / "tables"
    prov = json.loads((tables / f"{exp}_provenance.json").read_text())
    assert prov["runs"] == 1 and len(prov["left_out_other_settings"]) == 7
    table = pd.read_csv(tables / f"{exp}_comparison.csv")
    angle = next(v for c, v in zip(table["claim"], table["verdict"], strict=True) if "angle" in str(c))
    assert angle.startswith("no finished run of fa"), angle  # FA's runs were made with the old length
    # with the settings they were made with, the seven aggregate (bp seed 0 is now the odd one out)
    assert cli.main([*args[:-2], "--partial"]) == 0
    assert json.loads((tables / f"{exp}_provenance.json").read_text())["runs"] == 7


def test_compare_tabulates_the_aggregated_experiments_and_names_the_others(capsys, tmp_path, monkeypatch):
    """Paper scale is run a few experiments at a time: compare joins the tables that exist and lists the rest."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs = tmp_path / "smoke" / "runs" / "lillicrap_linear"
    for m in ("bp", "fa", "shallow", "node_perturbation"):
        for s in (0, 1):
            _finished_run(runs / m / f"seed{s}", m, s, 1e-3 if m in ("bp", "fa") else 0.3)
    common = ["--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke"]
    assert cli.main(["compare", *common]) == 2
    assert "no experiment has been aggregated" in one_line(capsys.readouterr().err)
    assert cli.main(["aggregate", *common, "--experiment", "lillicrap_linear"]) == 0
    assert cli.main(["compare", *common]) == 0
    md = (tmp_path / "smoke" / "tables" / "paper_comparison.md").read_text()
    assert "| lillicrap_linear (Fig. 1) |" in md and "lillicrap_mnist (" not in md
    assert "not aggregated at this scale (no table yet): lillicrap_mnist" in md


def test_figure_data_before_training_exits_2_naming_the_missing_checkpoint(capsys, tmp_path):
    rc = cli.main(["figure-data", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
                   "--experiment", "lillicrap_mnist", "--figure", "figS_receptive_fields"])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert "checkpoint.pt" in line and "missing" in line and "seed 0" in line


def test_figure_data_refuses_weights_still_training_or_of_other_settings(capsys, tmp_path):
    """The receptive fields are final weights of today's settings: not a run being extended to a longer length
    (Lillicrap's 300 -> 1846 epochs), nor one made with the old length."""
    import torch

    from biocredit.config import load_config

    exp = "lillicrap_mnist"
    then = load_config(REPO_CONFIG, {"scale": "smoke"})
    args = ["figure-data", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
            "--experiment", exp, "--figure", "figS_receptive_fields",
            "--set", f"experiments.{exp}.scales.smoke.epochs=3"]
    for m in ("bp", "fa", "sparse_fa"):
        d = tmp_path / "smoke" / "runs" / exp / m / "seed0"
        d.mkdir(parents=True)
        torch.save({"status": "completed", "epoch": 1, "run_config": resolve_run(then, exp, m, 0)}, d / "checkpoint.pt")
    assert cli.main(args) == 2
    line = one_line(capsys.readouterr().err)
    assert "bp/seed0/checkpoint.pt" in line and "other settings" in line and "epochs: 1 -> 3" in line, line
    now = load_config(REPO_CONFIG, {"scale": "smoke", f"experiments.{exp}.scales.smoke.epochs": 3})
    torch.save({"status": "running", "epoch": 2, "run_config": resolve_run(now, exp, "bp", 0)},
               tmp_path / "smoke" / "runs" / exp / "bp" / "seed0" / "checkpoint.pt")
    assert cli.main(args) == 2
    line = one_line(capsys.readouterr().err)
    assert "bp/seed0/checkpoint.pt" in line and "still training (epoch 2 of 3)" in line, line


def test_figure_data_of_a_curve_figure_exits_2_listing_the_weight_figures(capsys, tmp_path):
    rc = cli.main(["figure-data", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
                   "--experiment", "lillicrap_mnist", "--figure", "fig2a_test_error"])
    assert rc == 2
    assert "figS_receptive_fields" in one_line(capsys.readouterr().err)


def test_a_weight_figure_without_its_data_exits_2_saying_how_to_make_it(capsys, tmp_path):
    import json

    tables = tmp_path / "smoke" / "tables"
    tables.mkdir(parents=True)
    (tables / "lillicrap_mnist_curves.csv").write_text("method,epoch,metric,mean,sd,n\n")
    (tables / "lillicrap_mnist_provenance.json").write_text(json.dumps(
        {"seeds": [0], "git_commits": ["c"], "devices": ["cpu"], "config_hashes": ["h"]}))
    rc = cli.main(["figures", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
                   "--experiment", "lillicrap_mnist", "--figure", "figS_receptive_fields"])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert "lillicrap_mnist_figS_receptive_fields.npz" in line and "figure-data" in line
    assert not (tmp_path / "smoke" / "figures").exists() or not any((tmp_path / "smoke" / "figures").iterdir())


def test_claims_are_judged_again_from_the_committed_runs_table_without_any_run_folder(capsys, tmp_path):
    """``aggregate --from-table``: a clone without run folders (quick scale commits only tables) judges edited
    claims and tolerances again from ``<experiment>_runs.csv``; the committed comparison comes back byte for byte.
    It refuses, in one line and writing nothing, where the runs were made with other settings than the config
    resolves now, and for a 'reach' claim (which needs each run's whole curve)."""
    import shutil

    import pandas as pd

    repo_tables = REPO_CONFIG.parent / "results" / "quick" / "tables"
    tables = tmp_path / "quick" / "tables"
    tables.mkdir(parents=True)
    for exp in ("lillicrap_mnist", "lillicrap_linear"):
        for kind in ("runs.csv", "provenance.json", "comparison.csv"):
            shutil.copy(repo_tables / f"{exp}_{kind}", tables)
    args = ["aggregate", "--from-table", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}",
            "--scale", "quick", "--experiment", "lillicrap_mnist"]
    committed = (tables / "lillicrap_mnist_comparison.csv").read_bytes()
    (tables / "lillicrap_mnist_comparison.csv").unlink()
    runs = pd.read_csv(tables / "lillicrap_mnist_runs.csv")
    assert cli.main(args) == 0, capsys.readouterr().err
    assert f"judged {len(runs)} runs again" in capsys.readouterr().out
    assert (tables / "lillicrap_mnist_comparison.csv").read_bytes() == committed
    assert not (tmp_path / "quick" / "runs").exists()

    # an edited claim is judged again from the table's final test errors: turned round, "FA ends below BP" reads
    # "BP ends below FA", which holds exactly when the committed runs' BP mean is below FA's
    claims = yaml.safe_load(REPO_CONFIG.read_text())["experiments"]["lillicrap_mnist"]["claims"]
    k = next(i for i, c in enumerate(claims) if c["text"].startswith("FA ends below BP"))
    assert cli.main([*args, "--set", f"experiments.lillicrap_mnist.claims.{k}.lower=[bp]",
                     "--set", f"experiments.lillicrap_mnist.claims.{k}.higher=[fa]"]) == 0
    table = pd.read_csv(tables / "lillicrap_mnist_comparison.csv")
    row = table[table["claim"].str.startswith("FA ends below BP")].iloc[0]
    means = runs.groupby("method")["final_test_error"].mean()
    assert row["verdict"] == ("holds" if means["bp"] < means["fa"] else "does NOT hold"), row
    assert row["statistic"] == f"bp {means['bp']:.4g}; fa {means['fa']:.4g}", row["statistic"]

    # a training setting changed since: the table's runs are not this config's runs
    (tables / "lillicrap_mnist_comparison.csv").write_bytes(committed)
    assert cli.main([*args, "--set", "experiments.lillicrap_mnist.train.lr=0.01"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "lillicrap_mnist_runs.csv" in line and "other settings" in line and "retrain" in line
    assert (tables / "lillicrap_mnist_comparison.csv").read_bytes() == committed

    linear = [a if a != "lillicrap_mnist" else "lillicrap_linear" for a in args]
    assert cli.main(linear) == 2
    line = one_line(capsys.readouterr().err)
    assert "'reach' claim" in line and "lillicrap_linear.claims" in line and "without --from-table" in line
