"""benchmarks/lr_sweep.py: hyper-parameter choices on a selection seed, read on held-out data (issue #3)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mnist_experiment

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "lr_sweep.py"


def sweep(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_held_out_sweep_chooses_by_the_validation_error_its_runs_logged_and_resumes(tmp_path, cli_env, mnist_dir):
    exp = mnist_experiment()
    runs = tmp_path / "runs"
    args = (exp, "0.05,0.3", "bp", "--key", "net.init.scale", "--scale", "smoke",
            "--set", f"experiments.{exp}.scales.smoke.epochs=2", "--set", f"data.dir={mnist_dir}",
            "--valid-size", "300", "--runs", str(runs))
    p = sweep(*args, env=cli_env)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [ln.split() for ln in p.stdout.splitlines() if ln.startswith("bp ")]
    chosen = {float(ln[2]): float(ln[5]) for ln in lines if ln[1] == "net.init.scale"}
    assert set(chosen) == {0.05, 0.3}
    for value, printed in chosen.items():
        run = runs / exp / "bp" / f"net.init.scale={value:g}"
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
        last = rows[-1]
        # the number the choice reads is the held-out error of the last epoch, not the test error
        assert printed == pytest.approx(float(last["valid_error"]), rel=1e-4)
        assert last["valid_error"] != last["test_error"]
        rc = json.loads((run / "summary.json").read_text())["run_config"]
        assert rc["seed"] == 100 and rc["valid_size"] == 300 and rc["net"]["init"]["scale"] == value
    best = [ln for ln in lines if ln[1] == "BEST"]
    assert float(best[0][3]) == min(chosen, key=chosen.get)
    # the two initial scales really are different runs
    assert chosen[0.05] != chosen[0.3]
    assert (runs / exp / "bp" / "sweep_net_init_scale.png").stat().st_size > 0  # the curves behind the choice
    again = sweep(*args, env=cli_env)  # kept runs are finished: the same numbers, no retraining
    assert again.returncode == 0 and again.stdout == p.stdout
    assert "epoch 1/2" not in again.stderr


def test_a_key_outside_the_run_config_is_one_clear_line_before_any_training(tmp_path, cli_env, mnist_dir):
    exp = mnist_experiment()
    p = sweep(exp, "0.1", "bp", "--key", "net.nope.scale", "--scale", "smoke", "--set", f"data.dir={mnist_dir}",
              env=cli_env)
    assert p.returncode != 0
    assert "--key net.nope.scale" in p.stderr and "epoch" not in p.stderr


def test_by_speed_chooses_the_rate_whose_error_falls_fastest_not_the_lowest_final(tmp_path, cli_env):
    """``--by speed``: the choice reads the mean over the run's rows of log10(max(error, floor)), recomputed here
    from each kept run's metrics.csv; with a floor above both runs' final errors the final error cannot decide,
    only how fast each got there. The curves of a synthetic task (rows every k examples) are drawn too."""
    import math

    runs = tmp_path / "runs"
    p = sweep("lillicrap_linear", "0.002,0.01", "bp", "--scale", "smoke", "--by", "speed", "--floor", "1e-3",
              "--runs", str(runs), env=cli_env)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [ln.split() for ln in p.stdout.splitlines() if ln.startswith("bp ")]
    scores = {float(ln[2]): float(ln[-1]) for ln in lines if ln[1] == "lr" and ln[-2] == "speed"}
    assert set(scores) == {0.002, 0.01}
    for lr, printed in scores.items():
        rows = [r for r in csv.DictReader((runs / "lillicrap_linear" / "bp" / f"train.lr={lr:g}" / "metrics.csv").open())
                if float(r["examples_seen"]) > 0]
        expected = sum(math.log10(max(float(r["train_error"]), 1e-3)) for r in rows) / len(rows)
        assert printed == pytest.approx(expected, abs=1e-3)
    best = float(next(ln for ln in lines if ln[1] == "BEST")[3])
    assert best == min(scores, key=scores.get) == 0.01  # the larger stable rate learns faster
    assert (runs / "lillicrap_linear" / "bp" / "sweep_train_lr.png").stat().st_size > 0
