"""The training length chosen by a stopping rule on held-out training images (biocredit.selection).

The rule on known curves; the config checks; a real selection run (MNIST from the mirror, a tiny subset at a
learning rate that overfits in tens of epochs) through Snakemake and then the CLI; and the stop that a
resumed run honours without training further.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, REPO_CONFIG, one_line, run_cli

from biocredit.config import ConfigError, load_config
from biocredit.selection import centred_average, overfit_onset, stop_rule

EXP = "lillicrap_mnist"


def test_centred_average_is_undefined_where_the_window_is_incomplete():
    out = centred_average([1.0, 2.0, 6.0, 4.0, 5.0], 3)
    assert math.isnan(out[0]) and math.isnan(out[-1])
    assert out[1:4] == [3.0, 4.0, 5.0]
    assert centred_average([2.0, 7.0], 1) == [2.0, 7.0]
    with pytest.raises(ValueError, match="odd"):
        centred_average([1.0, 2.0], 4)


def u_curve(n: int, bottom: int) -> list[float]:
    """A validation curve falling to ``bottom`` and rising after, with an alternating wiggle of +-0.3."""
    return [abs(e - bottom) * 0.1 + 2.0 + (0.3 if e % 2 else -0.3) for e in range(n + 1)]


def test_the_rule_finds_the_smoothed_minimum_and_fires_only_after_the_patience():
    epochs = list(range(81))
    vals = u_curve(80, bottom=40)
    r = overfit_onset(epochs, vals, smooth=5, patience=30)
    # raw minimum is at an even epoch next to 40 (the wiggle); the centred average of 5 puts it at 40 exactly
    assert r["selected_epoch"] == 40 and r["last_smoothed_epoch"] == 78 and r["fired"]
    assert r["best_smoothed"] == pytest.approx(sum(vals[38:43]) / 5)
    # 38 epochs past the minimum: a patience of 39 has not run out yet
    assert not overfit_onset(epochs, vals, smooth=5, patience=39)["fired"]
    # the same curve cut before the patience: not fired, best-so-far reported
    cut = overfit_onset(epochs[:60], vals[:60], smooth=5, patience=30)
    assert cut["selected_epoch"] == 40 and not cut["fired"]
    # a curve that keeps falling never fires; epoch 0 (the untrained net) is never selected
    falling = [10.0 - 0.01 * e for e in range(200)]
    falling[0] = 0.0
    r = overfit_onset(list(range(200)), falling, smooth=1, patience=5)
    assert r["selected_epoch"] == 199 and not r["fired"]


def test_the_rule_refuses_curves_measured_every_few_epochs():
    with pytest.raises(ValueError, match="one validation measurement per epoch"):
        overfit_onset([0, 10, 20, 30], [1.0, 0.5, 0.4, 0.6], smooth=1, patience=1)


def test_the_stop_test_reads_the_metric_named_by_the_block():
    rows = [{"epoch": e, "valid_error": v, "train_error": 0.0} for e, v in enumerate(u_curve(30, bottom=10))]
    stop = stop_rule({"metric": "valid_error", "smooth": 5, "patience": 15})
    assert stop(rows[:27]) is None  # last smoothed epoch 24: 14 past the minimum (10)
    assert "lowest at epoch 10, 15 epochs back" in stop(rows[:28])
    assert stop_rule({"metric": "valid_loss", "patience": 1})(rows) is None  # absent metric: NaN, never fires


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("seed", 3, "length_selection.seed: 3 is an evaluation seed"),
    ("method", "nope", "length_selection.method: 'nope' is not a method"),
    ("smooth", 20, "length_selection.smooth: 20 must be odd"),
    ("metric", "test_error", "length_selection.metric"),
    ("sets", "huge", "length_selection.sets: 'huge' is not a scale"),
])
def test_a_bad_length_selection_block_is_one_line_naming_the_key(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(REPO_CONFIG, {f"experiments.{EXP}.length_selection.{key}": value})
    assert fragment in one_line(str(err.value))


def test_the_committed_record_and_the_paper_length_agree():
    """Once the rule has fired, the scale it sets must train for the selected length."""
    cfg = yaml.safe_load(REPO_CONFIG.read_text())
    for name, exp in cfg["experiments"].items():
        sel = exp.get("length_selection")
        if not sel or not sel.get("sets"):
            continue
        record = REPO / "results" / sel["sets"] / "length_selection" / name / "length_selection.json"
        # `sets` is written once the rule has fired, with the record committed beside it
        assert record.is_file(), f"{name}: length_selection.sets is {sel['sets']!r} but {record} is not there"
        rec = json.loads(record.read_text())
        assert rec["rule"] == {**sel, "smooth": sel.get("smooth", 1)}, f"{record}: made with another rule"
        if rec["status"] == "selected":
            assert exp["scales"][sel["sets"]]["epochs"] == rec["selected_epoch"], (
                f"{record} selected {rec['selected_epoch']} epochs; scales.{sel['sets']}.epochs says otherwise")


# A tiny selection that overfits within ~50 epochs (~20 s): 300 training images at lr 0.01, 1000 held out.
TINY = {"scales.smoke.train_subset": 300, "scales.smoke.test_subset": 200, "train.lr": 0.01,
        "length_selection.valid_size": 1000, "length_selection.smooth": 3, "length_selection.patience": 5,
        "length_selection.max_epochs": 150}


def tiny_selection_config(root: Path) -> Path:
    cfg = yaml.safe_load(REPO_CONFIG.read_text())
    cfg.update(scale="smoke", device="cpu", threads=1, results_dir=str(root / "results"))
    cfg["data"] = {**cfg.get("data", {}), "dir": str(root / "data"), "download": False}
    cfg["wandb"] = {**cfg.get("wandb", {}), "mode": "offline"}
    cfg["experiments"] = {EXP: cfg["experiments"][EXP]}
    for dotted, v in TINY.items():
        node = cfg["experiments"][EXP]
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def check_record(out: Path) -> dict:
    """The record agrees with a smoothing of metrics.csv done here, and the run stopped when the rule said."""
    rec = json.loads((out / "length_selection.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    m = pd.read_csv(out / "metrics.csv")
    m = m[m["epoch"] > 0]
    assert m["epoch"].tolist() == list(range(1, len(m) + 1))
    assert not any(c.startswith("test_") for c in rec["at_selected_epoch"])  # the rule never reads the test set
    smoothed = m["valid_error"].rolling(3, center=True).mean()
    best = int(m["epoch"][smoothed.idxmin()])
    assert rec["status"] == "selected" and rec["selected_epoch"] == best
    assert rec["best_smoothed"] == pytest.approx(smoothed.min())
    # stopped at the first epoch where the smoothed minimum (1 epoch of look-ahead) was 5 epochs back
    assert summary["status"] == "stopped" and summary["epochs_done"] == best + 5 + 1 == rec["epochs_done"]
    assert summary["epochs_done"] < TINY["length_selection.max_epochs"]
    assert "lowest at epoch" in summary["stop_reason"]
    assert summary["run_config"]["valid_size"] == 1000 and summary["seed"] == 100
    assert (out / "length_selection.png").stat().st_size > 0 and (out / "length_selection.pdf").exists()
    return rec


def test_an_experiment_without_a_block_is_refused_in_one_line(tmp_path: Path, cli_env: dict):
    proc = run_cli("select-length", "--experiment", "lillicrap_linear", env=cli_env, cwd=REPO)
    assert proc.returncode == 2
    assert "experiments.lillicrap_linear.length_selection: not set" in one_line(proc.stderr)


def test_a_resumed_run_whose_rule_had_fired_stops_without_training(small_config: dict, wandb_offline, tmp_path,
                                                                  one_thread):
    from biocredit.config import resolve_run
    from biocredit.train import train

    run_cfg = resolve_run(small_config, EXP, "bp", 0)
    run_cfg["epochs"] = 5
    out = tmp_path / "run"

    class Crash(Exception):
        pass

    def crash_at_3(rows):
        if rows[-1]["epoch"] == 3:
            raise Crash  # after epoch 3's checkpoint: a process that died there
        return None

    with pytest.raises(Crash):
        train(run_cfg, out, small_config["data"]["dir"], device="cpu", stop_when=crash_at_3)
    seen = []
    summary = train(run_cfg, out, small_config["data"]["dir"], device="cpu",
                    stop_when=lambda rows: seen.append(len(rows)) or "fired")
    assert seen == [4]  # asked once, on the rows of epochs 0..3, before any training
    assert summary["status"] == "stopped" and summary["epochs_done"] == 3 and summary["stop_reason"] == "fired"
    assert len(pd.read_csv(out / "metrics.csv")) == 4


def test_snakemake_selects_the_length_and_leaves_it_out_of_all(tmp_path: Path, cli_env: dict, mirror: Path):
    """The real selection run (prepared data, W&B offline) through Snakemake's `length_selection` target, which
    `all` leaves out; then the CLI on the finished run trains nothing and refuses other settings in one line."""
    config = tiny_selection_config(tmp_path)
    base = [sys.executable, "-m", "snakemake", "--cores", "1", "-s", str(REPO / "Snakefile"), "--configfile",
            str(config), "--directory", str(tmp_path)]
    dry = subprocess.run([*base, "-n"], cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "select_length" not in dry.stdout
    proc = subprocess.run([*base, "length_selection"], cwd=tmp_path, env=cli_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "results" / "smoke" / "length_selection" / EXP
    rec = check_record(out)
    log = (tmp_path / "results" / "smoke" / "logs" / "length_selection" / f"{EXP}.log").read_text()
    assert f"selected: epoch {rec['selected_epoch']}" in log, log[-2000:]
    wandb_runs = list((tmp_path / "results" / "smoke" / "wandb").glob("wandb/offline-run-*"))
    assert len(wandb_runs) == 1  # logged like any run
    again = subprocess.run([*base, "-n", "length_selection"], cwd=tmp_path, env=cli_env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # The command itself, again: it trains nothing and writes the same record; other settings are refused.
    again = run_cli("select-length", "--config", str(config), "--experiment", EXP, env=cli_env, cwd=tmp_path)
    assert again.returncode == 0 and json.loads((out / "length_selection.json").read_text()) == rec
    assert "epoch" not in again.stderr and f"selected: epoch {rec['selected_epoch']}" in again.stdout
    other = run_cli("select-length", "--config", str(config), "--experiment", EXP, "--set",
                    f"experiments.{EXP}.length_selection.valid_size=2000", env=cli_env, cwd=tmp_path)
    assert other.returncode == 2 and "a finished selection run of other settings" in one_line(other.stderr)
