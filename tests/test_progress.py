"""`biocredit progress`: what a scale's run folders say is finished, part-way, to extend, of other settings or
missing, and the training time left, on real (tiny) MNIST runs and their real checkpoints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import mnist_experiment

from biocredit import cli
from biocredit.config import run_dir
from biocredit.progress import cell_progress, report, seconds_left

EXP = mnist_experiment()
METHOD = "fa"

pytestmark = pytest.mark.usefixtures("wandb_offline")


def states(cfg: dict) -> list[tuple[str, int, int]]:
    return [(r.state, r.epoch, r.epochs) for r in cell_progress(cfg, EXP, METHOD)]


def with_scale(cfg: dict, **kw) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["experiments"][EXP]["scales"]["smoke"].update(kw)
    return cfg


def test_progress_follows_runs_from_missing_to_finished_killed_extended_and_changed(small_config, config_file,
                                                                                 capsys):
    cfg = with_scale(small_config, seeds=2, epochs=2)
    if METHOD not in cfg["experiments"][EXP]["methods"]:
        pytest.skip(f"{EXP} has no method {METHOD}")
    assert states(cfg) == [("not started", 0, 2), ("not started", 0, 2)]
    assert seconds_left(cell_progress(cfg, EXP, METHOD)) == (0.0, 2)  # nothing measured: no estimate

    path = config_file(cfg)
    for seed in (0, 1):
        assert cli.main(["train", "--config", str(path), "--experiment", EXP, "--method", METHOD,
                         "--seed", str(seed)]) == 0
    assert states(cfg) == [("finished", 2, 2), ("finished", 2, 2)]
    assert seconds_left(cell_progress(cfg, EXP, METHOD)) == (0.0, 0)

    # seed 1 as a job killed after epoch 1 leaves it: a running checkpoint, no summary.json
    d1 = run_dir(Path(cfg["results_dir"]), "smoke", EXP, METHOD, 1)
    st = torch.load(d1 / "checkpoint.pt", weights_only=False)
    torch.save({**st, "status": "running", "epoch": 1, "rows": st["rows"][:2]}, d1 / "checkpoint.pt")
    (d1 / "summary.json").unlink()
    runs = cell_progress(cfg, EXP, METHOD)
    assert [(r.state, r.epoch) for r in runs] == [("finished", 2), ("training", 1)]
    per_epoch = runs[1].seconds_per_epoch
    assert per_epoch and per_epoch == pytest.approx(st["rows"][1]["epoch_seconds"] + st["rows"][1]["eval_seconds"])
    assert seconds_left(runs) == (pytest.approx(per_epoch), 0)  # one epoch left, at its own measured time

    # the config now asks for 4 epochs: both continue from their checkpoints (train.continues)
    longer = with_scale(cfg, epochs=4)
    assert states(longer) == [("to extend", 2, 4), ("to extend", 1, 4)]

    # another learning rate: seed 0's finished run is of other settings, and its checkpoint continues nothing
    other = copy.deepcopy(cfg)
    other["experiments"][EXP]["train"]["lr"] = 0.5
    runs = cell_progress(other, EXP, METHOD)
    assert [r.state for r in runs] == ["other settings", "not started"]
    assert "lr" in runs[0].detail and "0.5" in runs[0].detail

    lines = report(cfg, [EXP])
    text = "\n".join(lines)
    assert f"  {METHOD}" in text and "finished 1/2, training 1" in text
    assert "seed 1: training, epoch 1/2 (50 %)" in text and "last written" in text
    assert lines[-1].startswith("total: 1/") and "training left ≈" in lines[-1]

    # the CLI prints the same report; an unknown experiment is one line naming it, exit 2
    assert cli.main(["progress", "--config", str(path), "--experiment", EXP]) == 0
    assert "seed 1: training, epoch 1/2" in capsys.readouterr().out
    assert cli.main(["progress", "--config", str(path), "--experiment", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--experiment nope: no such experiment" in err[0]


def test_an_ensemble_jobs_checkpoint_counts_for_its_seeds_and_its_epochs_once(small_config, config_file):
    """An ensemble job checkpoints every seed in one file beside the seed folders: its seeds read as training
    at the job's epoch, and the time left counts the job's remaining epochs once, not once per seed."""
    cfg = with_scale(small_config, seeds=2, epochs=2)
    if METHOD not in cfg["experiments"][EXP]["methods"]:
        pytest.skip(f"{EXP} has no method {METHOD}")
    path = config_file(cfg)
    for seed in (0, 1):
        assert cli.main(["train", "--config", str(path), "--experiment", EXP, "--method", METHOD,
                         "--seed", str(seed)]) == 0
    dirs = [run_dir(Path(cfg["results_dir"]), "smoke", EXP, METHOD, s) for s in (0, 1)]
    sts = [torch.load(d / "checkpoint.pt", weights_only=False) for d in dirs]
    for d in dirs:  # the job took the folders over: no summaries, no checkpoints of their own yet
        (d / "summary.json").unlink()
        (d / "checkpoint.pt").unlink()
    # the bookkeeping an ensemble checkpoint holds (biocredit.ensemble), at epoch 1 of 2
    torch.save({"seeds": [0, 1], "status": "running", "epoch": 1,
                "config_hashes": [st["config_hash"] for st in sts], "run_configs": [st["run_config"] for st in sts],
                "rows": [st["rows"][:2] for st in sts]}, dirs[0].parent / "checkpoint-seeds0-1.pt")
    runs = cell_progress(cfg, EXP, METHOD)
    assert [(r.state, r.epoch) for r in runs] == [("training", 1), ("training", 1)]
    assert runs[0].job == runs[1].job == str(dirs[0].parent / "checkpoint-seeds0-1.pt")
    left, unknown = seconds_left(runs)
    assert unknown == 0 and left == pytest.approx(runs[0].seconds_per_epoch)  # one epoch of one job


def test_epoch_time_spreads_an_evaluation_over_the_epochs_its_row_covers():
    """A run evaluated every 10th epoch (Lee et al.'s discrete and stochastic nets) writes a row, and pays an
    evaluation, every 10 epochs: its epoch costs the training seconds plus a tenth of the evaluation."""
    from biocredit.progress import epoch_seconds

    every_10th = [{"epoch": "0", "epoch_seconds": "", "eval_seconds": "10"}] + [
        {"epoch": str(e), "epoch_seconds": "2.0", "eval_seconds": "10.0"} for e in range(10, 60, 10)]
    assert epoch_seconds(every_10th) == pytest.approx(3.0)
    every_epoch = [{"epoch": e, "epoch_seconds": 2.0 if e else float("nan"), "eval_seconds": 1.0} for e in range(4)]
    assert epoch_seconds(every_epoch) == pytest.approx(3.0)
    assert epoch_seconds(every_epoch[:1]) is None  # only the evaluation before training: nothing measured


def test_partial_tables_say_how_the_workflow_trains_the_rest(small_config):
    """Tables made by `aggregate --partial` name the workflow target that trains the runs they lack; complete
    tables only say how many runs they hold."""
    tables = Path(small_config["results_dir"]) / "smoke" / "tables"
    tables.mkdir(parents=True)
    hint = f"`snakemake --config scale=smoke {EXP}` trains the rest"
    (tables / f"{EXP}_provenance.json").write_text(json.dumps({"runs": 1, "partial": True}))
    head = next(line for line in report(small_config, [EXP]) if line.startswith(EXP))
    assert "hold 1 run(s) (partial: " in head and hint in head, head
    (tables / f"{EXP}_provenance.json").write_text(json.dumps({"runs": 4}))
    head = next(line for line in report(small_config, [EXP]) if line.startswith(EXP))
    assert head.endswith("hold 4 run(s)") and hint not in head, head


def test_runs_only_the_tables_hold_count_as_finished_until_another_run_of_the_experiment_must_train(small_config):
    """A clone: the committed tables hold every run (method, seed, config hash) and there are no run folders.
    The workflow trains nothing, and progress says so; once one run's settings change, the workflow retrains the
    whole experiment (its aggregation needs every run folder), and progress counts those runs as to train."""
    import pandas as pd

    from biocredit.config import config_hash, resolve_run, seeds

    cfg = with_scale(small_config, seeds=2, epochs=2)
    methods = list(cfg["experiments"][EXP]["methods"])
    tables = Path(cfg["results_dir"]) / "smoke" / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame([{"method": m, "seed": s, "config_hash": config_hash(resolve_run(cfg, EXP, m, s))}
                  for m in methods for s in seeds(cfg, EXP)]).to_csv(tables / f"{EXP}_runs.csv", index=False)
    lines = report(cfg, [EXP])
    assert "finished 2/2 (2 only in the tables: no run folder)" in "\n".join(lines)
    assert lines[-1].startswith(f"total: {2 * len(methods)}/{2 * len(methods)} runs finished; training left ≈ 0 s")

    # another label is no training setting: still nothing to train
    relabelled = copy.deepcopy(cfg)
    relabelled["experiments"][EXP]["methods"][METHOD]["label"] = "another name"
    assert report(relabelled, [EXP])[-1] == lines[-1]
    # another setting of one method's rule: its runs are not the tables' any more, and every other run of the
    # experiment trains again with them
    other = copy.deepcopy(cfg)
    other["experiments"][EXP]["methods"][METHOD].setdefault("params", {})["feedback_init"] = {
        "distribution": "uniform", "scale": 3.0}
    lines = report(other, [EXP])
    text = "\n".join(lines)
    assert f"({2 * (len(methods) - 1)} run(s) the tables hold have no run folder and train again" in text, text
    assert "only in the tables" not in text
    assert lines[-1].startswith(f"total: 0/{2 * len(methods)} runs finished")
    # a table of another run's settings, or none, counts nothing as finished
    (tables / f"{EXP}_runs.csv").unlink()
    assert report(cfg, [EXP])[-1].startswith(f"total: 0/{2 * len(methods)} runs finished")
