"""The training loop on real MNIST (tiny subsets): determinism, resume after a kill, divergence, W&B offline logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import kill_after_first_checkpoint, method_with_rule, mnist_experiment, read_metrics, run_cli

from biocredit import cli
from biocredit.config import run_dir
from biocredit.tracking import find_offline_runs, read_offline_history, read_offline_run

EXP = mnist_experiment()

pytestmark = pytest.mark.usefixtures("wandb_offline")


def train(cfg_path: Path, method: str, seed: int, out: Path | None = None) -> int:
    """``biocredit train`` in this process (the CLI's own code path, without interpreter start-up)."""
    args = ["train", "--config", str(cfg_path), "--experiment", EXP, "--method", method, "--seed", str(seed)]
    return cli.main(args + (["--out", str(out)] if out else []))


def default_run_dir(cfg: dict, method: str, seed: int) -> Path:
    return run_dir(Path(cfg["results_dir"]), cfg["scale"], EXP, method, seed)


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(small_config, config_file, tmp_path):
    fa = method_with_rule(small_config, EXP, "feedback_alignment")
    path = config_file(small_config)
    assert train(path, fa, 0) == 0
    assert train(path, fa, 0, out=tmp_path / "again") == 0
    assert train(path, fa, 1, out=tmp_path / "seed1") == 0

    first = read_metrics(default_run_dir(small_config, fa, 0) / "metrics.csv")
    again = read_metrics(tmp_path / "again" / "metrics.csv")
    other = read_metrics(tmp_path / "seed1" / "metrics.csv")
    epochs = small_config["experiments"][EXP]["scales"]["smoke"]["epochs"]
    assert [r["epoch"] for r in first] == [str(e) for e in range(epochs + 1)]
    assert any(k.startswith("angle_dh_") for k in first[-1]), "FA rows carry no angle to backprop"
    assert first == again, "the same seed gave different numbers"
    for a, b in zip(first, other, strict=True):  # every row differs: other init, other B, other order
        assert a != b, f"seeds 0 and 1 gave the same row at epoch {a['epoch']}"
    s0 = json.loads((default_run_dir(small_config, fa, 0) / "summary.json").read_text())
    s1 = json.loads((tmp_path / "seed1" / "summary.json").read_text())
    assert s0["status"] == s1["status"] == "completed"
    assert s0["provenance"]["config_hash"] != s1["provenance"]["config_hash"]


def test_training_lowers_the_error_and_writes_provenance(small_config, config_file):
    bp = method_with_rule(small_config, EXP, "backprop")
    cfg = small_config
    cfg["experiments"][EXP]["scales"]["smoke"]["epochs"] = 3
    assert train(config_file(cfg), bp, 0) == 0
    rows = read_metrics(default_run_dir(cfg, bp, 0) / "metrics.csv", drop=())
    assert float(rows[-1]["train_error"]) < float(rows[0]["train_error"])
    assert all(float(r["epoch_seconds"]) > 0 for r in rows[1:])
    summary = json.loads((default_run_dir(cfg, bp, 0) / "summary.json").read_text())
    assert summary["final"]["test_error"] == pytest.approx(float(rows[-1]["test_error"]))
    assert summary["best_test_error"] == pytest.approx(min(float(r["test_error"]) for r in rows))
    prov = summary["provenance"]
    assert prov["n_train"] == cfg["experiments"][EXP]["scales"]["smoke"]["train_subset"]
    assert prov["device"] == "cpu" and prov["seed"] == 0 and prov["git_commit"] and prov["config_hash"]
    # peak memory of the job: a process that imported torch and trained holds well over 50 MB; no CUDA here
    assert summary["memory"]["peak_rss_mb"] > 50 and "cuda_peak_mb" not in summary["memory"]


def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(small_config, config_file, cli_env, tmp_path):
    fa = method_with_rule(small_config, EXP, "feedback_alignment")
    cfg = small_config
    # ~0.5 s per epoch: the kill lands after epoch 1 and well before epoch 6 ends
    cfg["experiments"][EXP]["scales"]["smoke"].update(epochs=6, train_subset=1000, test_subset=200)
    path = config_file(cfg)
    folder = default_run_dir(cfg, fa, 0)
    args = ["train", "--config", str(path), "--experiment", EXP, "--method", fa, "--seed", "0"]

    kill_after_first_checkpoint(args, folder / "checkpoint.pt", tmp_path / "first.log", cli_env, tmp_path, timeout=180)
    assert not (folder / "summary.json").exists(), "the run finished before the kill: the test proved nothing"
    killed_at = torch.load(folder / "checkpoint.pt", weights_only=False)
    assert killed_at["status"] == "running" and 1 <= killed_at["epoch"] < 6

    rerun = run_cli(*args, env=cli_env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from the checkpoint of epoch {killed_at['epoch']}" in rerun.stderr
    assert "epoch 1/6" not in rerun.stderr, "the rerun trained epoch 1 again"

    assert train(path, fa, 0, out=tmp_path / "uninterrupted") == 0
    resumed = read_metrics(folder / "metrics.csv")
    assert [r["epoch"] for r in resumed] == [str(e) for e in range(7)]
    assert resumed == read_metrics(tmp_path / "uninterrupted" / "metrics.csv")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    # the provenance names both processes that trained it: the epochs each covered and the code each ran
    segments = summary["provenance"]["segments"]
    assert [(g["from_epoch"], g["to_epoch"]) for g in segments] == [(0, killed_at["epoch"]), (killed_at["epoch"], 6)]
    assert all(g["git_commit"] == summary["provenance"]["git_commit"] for g in segments)
    assert [g["ensemble_size"] for g in segments] == [1, 1]  # train() trains one seed per process
    assert [g["threads"] for g in segments] == [cfg["threads"]] * 2  # the CPU threads each process trained on
    assert summary["provenance"]["git_commits"] == [summary["provenance"]["git_commit"]]
    alone = json.loads((tmp_path / "uninterrupted" / "summary.json").read_text())["provenance"]["segments"]
    assert [(g["from_epoch"], g["to_epoch"]) for g in alone] == [(0, 6)]


def test_a_finished_run_given_more_epochs_continues_and_equals_a_longer_run_from_scratch(small_config, config_file,
                                                                                         tmp_path, capfd):
    fa = method_with_rule(small_config, EXP, "feedback_alignment")
    cfg = small_config
    assert train(config_file(cfg), fa, 0) == 0  # 2 epochs (SMALL_SCALE)
    folder = default_run_dir(cfg, fa, 0)
    capfd.readouterr()
    cfg["experiments"][EXP]["scales"]["smoke"]["epochs"] = 4
    longer = config_file(cfg, "longer.yaml")
    assert train(longer, fa, 0) == 0
    err = capfd.readouterr().err
    assert "extending the finished run of 2 epochs to 4" in err and "epoch 1/4" not in err
    assert train(longer, fa, 0, out=tmp_path / "scratch") == 0
    extended = read_metrics(folder / "metrics.csv")
    assert [r["epoch"] for r in extended] == [str(e) for e in range(5)]
    assert extended == read_metrics(tmp_path / "scratch" / "metrics.csv")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs"] == summary["epochs_done"] == 4 and summary["status"] == "completed"
    assert [(g["from_epoch"], g["to_epoch"]) for g in summary["provenance"]["segments"]] == [(0, 2), (2, 4)]
    # fewer epochs, or another setting, is not an extension: a fresh run
    cfg["experiments"][EXP]["scales"]["smoke"]["epochs"] = 3
    assert train(config_file(cfg, "shorter.yaml"), fa, 0) == 0
    assert "ignoring a checkpoint" in capfd.readouterr().err
    assert len(read_metrics(folder / "metrics.csv")) == 4
    cfg["experiments"][EXP]["scales"]["smoke"]["epochs"] = 5
    cfg["experiments"][EXP]["train"]["lr"] = 0.002
    assert train(config_file(cfg, "other.yaml"), fa, 0) == 0
    assert "ignoring a checkpoint" in capfd.readouterr().err


def test_an_interrupted_run_resumes_under_a_new_length_it_has_not_passed(small_config, tmp_path, capfd, one_thread):
    from biocredit.config import resolve_run
    from biocredit.train import train as train_run

    bp = method_with_rule(small_config, EXP, "backprop")
    run_cfg = resolve_run(small_config, EXP, bp, 0)
    data_dir = small_config["data"]["dir"]

    class Crash(Exception):
        pass

    def crash_after(epoch):
        def stop(rows):
            if rows[-1]["epoch"] == epoch:
                raise Crash  # after that epoch's checkpoint: a process that died there
        return stop

    with pytest.raises(Crash):
        train_run({**run_cfg, "epochs": 6}, tmp_path / "run", data_dir, device="cpu", stop_when=crash_after(2))
    capfd.readouterr()
    summary = train_run({**run_cfg, "epochs": 3}, tmp_path / "run", data_dir, device="cpu")
    assert "resuming from the checkpoint of epoch 2 (the run's length changed from 6 to 3 epochs)" in capfd.readouterr().err
    train_run({**run_cfg, "epochs": 3}, tmp_path / "scratch", data_dir, device="cpu")
    assert summary["epochs_done"] == 3
    assert read_metrics(tmp_path / "run" / "metrics.csv") == read_metrics(tmp_path / "scratch" / "metrics.csv")
    # an interrupted run already past the new length is not cut back: a fresh run
    with pytest.raises(Crash):
        train_run({**run_cfg, "epochs": 6}, tmp_path / "past", data_dir, device="cpu", stop_when=crash_after(3))
    capfd.readouterr()
    train_run({**run_cfg, "epochs": 2}, tmp_path / "past", data_dir, device="cpu")
    assert "ignoring a checkpoint" in capfd.readouterr().err


def test_a_run_that_restarts_a_folder_removes_the_old_summary_before_writing_rows(small_config, tmp_path, one_thread):
    """A folder holds one run: a run of other settings trained afresh there (or a finished run extended) that
    dies before its end must not leave the earlier run's summary.json beside its own metrics.csv."""
    from biocredit.config import resolve_run
    from biocredit.train import train as train_run

    bp = method_with_rule(small_config, EXP, "backprop")
    run_cfg = resolve_run(small_config, EXP, bp, 0)
    data_dir, out = small_config["data"]["dir"], tmp_path / "run"
    train_run({**run_cfg, "epochs": 1}, out, data_dir, device="cpu")
    assert (out / "summary.json").exists()

    class Crash(Exception):
        pass

    def crash(rows):
        raise Crash

    for other in ({**run_cfg, "epochs": 2}, {**run_cfg, "train": {**run_cfg["train"], "lr": run_cfg["train"]["lr"] / 2}}):
        train_run({**run_cfg, "epochs": 1}, out, data_dir, device="cpu")  # finished, summary written
        with pytest.raises(Crash):
            train_run(other, out, data_dir, device="cpu", stop_when=crash)
        assert not (out / "summary.json").exists()
        assert read_metrics(out / "metrics.csv")  # the new run's rows are there


def test_a_diverging_run_is_recorded_as_diverged_and_exits_0(small_config, config_file):
    bp = method_with_rule(small_config, EXP, "backprop")
    cfg = small_config
    exp = cfg["experiments"][EXP]
    exp["net"].update(hidden_activation="relu", output_activation="linear")  # unbounded: a huge step blows up
    exp["loss"] = "squared_error"
    exp["train"]["lr"] = 1.0e3
    exp["scales"]["smoke"]["epochs"] = 3
    assert train(config_file(cfg), bp, 0) == 0

    folder = default_run_dir(cfg, bp, 0)
    summary = json.loads((folder / "summary.json").read_text())
    rows = read_metrics(folder / "metrics.csv")
    assert summary["status"] == "diverged"
    assert summary["diverged_at_epoch"] == int(rows[-1]["epoch"]) == summary["epochs_done"]
    assert summary["diverged_at_epoch"] < 3, "training went on after the divergence"
    assert math.isnan(float(rows[-1]["test_error"])) and math.isnan(float(rows[-1]["train_loss"]))
    assert all(math.isfinite(float(r["test_error"])) for r in rows[:-1])
    assert summary["final"]["test_error"] is None  # NaN is written as null: summary.json stays strict JSON
    assert math.isfinite(summary["best_test_error"])
    assert torch.load(folder / "checkpoint.pt", weights_only=False)["status"] == "diverged"


def test_wandb_offline_run_holds_the_logged_metrics(small_config, config_file):
    fa = method_with_rule(small_config, EXP, "feedback_alignment")
    assert train(config_file(small_config), fa, 0) == 0
    folder = default_run_dir(small_config, fa, 0)
    wandb_dir = Path(small_config["results_dir"]) / small_config["scale"] / "wandb"
    runs = find_offline_runs(wandb_dir)
    assert len(runs) == 1, runs
    summary = json.loads((folder / "summary.json").read_text())
    assert Path(summary["wandb_run_dir"]) == runs[0]

    record = read_offline_run(runs[0])
    assert record["run"]["name"] == f"{EXP}-{fa}-seed0" and record["run"]["group"] == EXP
    assert record["config"]["provenance"]["config_hash"] == summary["provenance"]["config_hash"]
    assert record["exit_code"] == 0
    assert record["summary"]["peak_rss_mb"] == summary["memory"]["peak_rss_mb"] > 0
    history = [r for r in read_offline_history(runs[0]) if "test_error" in r]
    metrics = read_metrics(folder / "metrics.csv")
    assert [int(r["epoch"]) for r in history] == [int(r["epoch"]) for r in metrics]
    for logged, row in zip(history, metrics, strict=True):
        for key in ("test_error", "train_error", "test_loss", "train_loss"):
            assert logged[key] == float(row[key]), (key, row["epoch"])


def test_each_run_folder_keeps_one_wandb_run_through_kills_copies_and_retraining(tmp_path):
    """Found 2026-12-03: a process killed before its first checkpoint left its W&B run behind (the checkpoint
    still named the run before it), and a results folder copied elsewhere had the original's run deleted."""
    import shutil

    from biocredit.train import WANDB_RECORD, open_tracker

    run_cfg = {"experiment": EXP, "method": "fa", "seed": 0, "scale": "smoke", "rule": "feedback_alignment",
               "train": {}}
    out, wandb_dir = tmp_path / "results" / "run", tmp_path / "results" / "wandb"
    out.mkdir(parents=True)
    rows = [{"epoch": e, "test_error": 50.0 - e} for e in range(3)]

    def segment(old: str | None, done: int, out_dir: Path = out, wdir: Path = wandb_dir) -> Path:
        tracker = open_tracker(run_cfg, {}, {"mode": "offline"}, wdir, old, rows[:done], out_dir)
        tracker.log(rows[done])  # then killed: exit code 1, and no checkpoint names this run
        tracker.finish(exit_code=1)
        return Path(tracker.run_dir)

    first = segment(None, 0)  # its checkpoint (epoch 1) names `first`
    second = segment(str(first), 1)  # killed before its first checkpoint: only the record names `second`
    assert find_offline_runs(wandb_dir) == [second]
    third = segment(str(first), 1)  # resumes from the same checkpoint, which still names `first`
    assert find_offline_runs(wandb_dir) == [third], "the run killed before its checkpoint was left behind"
    assert json.loads((out / WANDB_RECORD).read_text()) == {"wandb_run_dirs": [third.name]}
    assert [r["epoch"] for r in read_offline_history(third)] == [0, 1]

    # a copy of the results resumed elsewhere replaces its own copy of the run, never the original
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "results", copy)
    fourth = segment(str(third), 2, copy / "run", copy / "wandb")
    assert find_offline_runs(wandb_dir) == [third] and find_offline_runs(copy / "wandb") == [fourth]


def test_a_fresh_start_over_another_runs_checkpoint_replaces_its_wandb_run(small_config, config_file):
    fa = method_with_rule(small_config, EXP, "feedback_alignment")
    wandb_dir = Path(small_config["results_dir"]) / small_config["scale"] / "wandb"
    assert train(config_file(small_config), fa, 0) == 0
    small_config["experiments"][EXP]["train"]["lr"] *= 2  # other settings: the folder is trained afresh
    assert train(config_file(small_config, "other.yaml"), fa, 0) == 0
    runs = find_offline_runs(wandb_dir)
    assert len(runs) == 1, runs
    summary = json.loads((default_run_dir(small_config, fa, 0) / "summary.json").read_text())
    assert Path(summary["wandb_run_dir"]) == runs[0]
    record = read_offline_run(runs[0])
    assert record["config"]["train"]["lr"] == small_config["experiments"][EXP]["train"]["lr"]
    # W&B's summary keeps the best and the last test error, and every segment that trained the run
    last = read_metrics(default_run_dir(small_config, fa, 0) / "metrics.csv")[-1]
    assert record["summary"]["test_error"]["last"] == float(last["test_error"])
    assert record["summary"]["test_error"]["min"] == summary["best_test_error"]
    assert record["summary"]["segments"] == summary["provenance"]["segments"]


def test_train_eval_subset_measures_train_error_on_a_fixed_subset_and_changes_nothing_else(
        small_config, config_file, tmp_path):
    from biocredit.config import resolve_run
    from biocredit.figures import _load_final_net
    from biocredit.train import evaluate, load_task, train_eval_indices

    bp = method_with_rule(small_config, EXP, "backprop")
    full = config_file(small_config, "full.yaml")
    n = small_config["experiments"][EXP]["scales"]["smoke"]["train_subset"]
    k = n // 4
    small_config["experiments"][EXP]["scales"]["smoke"]["train_eval_subset"] = k
    sub = config_file(small_config, "subset.yaml")
    assert train(full, bp, 0, out=tmp_path / "full") == 0
    assert train(sub, bp, 0, out=tmp_path / "sub") == 0
    a, b = read_metrics(tmp_path / "full" / "metrics.csv"), read_metrics(tmp_path / "sub" / "metrics.csv")
    # training and the test curve are untouched; only the logged train numbers are measured on k examples
    assert [(r["test_error"], r["test_loss"]) for r in a] == [(r["test_error"], r["test_loss"]) for r in b]
    assert [r["train_loss"] for r in a] != [r["train_loss"] for r in b]

    idx = train_eval_indices(n, k, 0)
    assert len(idx) == k == len(set(idx.tolist())) and int(idx.max()) < n
    assert torch.equal(idx, train_eval_indices(n, k, 0)) and not torch.equal(idx, train_eval_indices(n, k, 1))
    net, run_cfg = _load_final_net(tmp_path / "sub")
    assert run_cfg["train_eval_subset"] == k
    task = load_task(resolve_run(small_config, EXP, bp, 0), small_config["data"]["dir"], torch.device("cpu"))
    on_subset = evaluate(net, task.x_train[idx], task.t_train[idx], task.labels_train[idx], run_cfg["loss"])
    assert float(b[-1]["train_error"]) == pytest.approx(on_subset["error"])
    assert float(b[-1]["train_loss"]) == pytest.approx(on_subset["loss"], rel=1e-5)


def test_eval_every_epochs_writes_rows_every_kth_epoch_and_resumes_mid_window(small_config, config_file, tmp_path,
                                                                               monkeypatch):
    """Rows after epochs 3 and 4 (the last) only; each row's angles cover every epoch since the previous row;
    a run stopped after epoch 1 (checkpointed, no row) resumes and ends as an uninterrupted one."""
    import biocredit.train as train_module

    fa = method_with_rule(small_config, EXP, "feedback_alignment")
    small_config["experiments"][EXP]["scales"]["smoke"].update(epochs=4, eval_every_epochs=3)
    path = config_file(small_config)
    assert train(path, fa, 0, out=tmp_path / "whole") == 0
    whole = read_metrics(tmp_path / "whole" / "metrics.csv")
    assert [r["epoch"] for r in whole] == ["0", "3", "4"]
    assert whole[1]["angle_dh_1"] != ""
    assert float(read_metrics(tmp_path / "whole" / "metrics.csv", drop=())[1]["epoch_seconds"]) > 0

    real_log = train_module._log

    def stop_after_epoch_1(msg: str) -> None:
        real_log(msg)
        if "epoch 1/4" in msg:
            raise KeyboardInterrupt("stopped for the test")

    monkeypatch.setattr(train_module, "_log", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(path, fa, 0, out=tmp_path / "stopped")
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and state["status"] == "running" and [r["epoch"] for r in state["rows"]] == [0]
    assert state["window"]["epochs"] == 1 and state["window"]["angle_sums"], "the window's angles were not saved"
    monkeypatch.setattr(train_module, "_log", real_log)
    assert train(path, fa, 0, out=tmp_path / "stopped") == 0
    assert read_metrics(tmp_path / "stopped" / "metrics.csv") == whole


def test_a_commit_is_dirty_for_uncommitted_code_but_not_for_regenerated_results(tmp_path):
    """Provenance: a workflow that rewrites results/ (or the README) must not mark its own later runs dirty;
    an edit to the code or the config must."""
    import subprocess

    from biocredit.train import commit_of

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    assert commit_of(tmp_path) == "unknown"
    git("init", "-q")
    for rel in ("src/biocredit/x.py", "results/quick/tables/t.csv", "README.md", "config.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("a\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = commit_of(tmp_path)
    assert len(head) == 40 and not head.endswith("-dirty")
    (tmp_path / "results/quick/tables/t.csv").write_text("b\n")
    (tmp_path / "README.md").write_text("b\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert commit_of(tmp_path) == head
    (tmp_path / "config.yaml").write_text("b\n")
    assert commit_of(tmp_path) == head + "-dirty"
    (tmp_path / "config.yaml").write_text("a\n")
    (tmp_path / "src/biocredit/x.py").write_text("b\n")
    assert commit_of(tmp_path) == head + "-dirty"
