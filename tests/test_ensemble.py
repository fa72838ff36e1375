"""Many seeds at once (biocredit.ensemble): every seed of a stacked ensemble ends with exactly the files and
numbers of its separate run, gets its own W&B run, and a killed ensemble job resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_CONFIG, kill_after_first_checkpoint, read_metrics, run_cli, write_config

from biocredit import cli
from biocredit.config import ensemble_seeds, load_config, resolve_run, run_dir
from biocredit.ensemble import train_ensemble, train_seeds, why_not_ensemble
from biocredit.rules import RULES
from biocredit.tracking import find_offline_runs, read_offline_history, read_offline_run
from biocredit.train import train

SEEDS = [0, 1, 2]


def synthetic_config(tmp_path: Path, wandb_mode: str = "disabled", **scale: Any) -> dict:
    """config.yaml at scale smoke for the synthetic experiments: 3 seeds, 2 epochs (so a reshuffle), a few
    hundred examples, rows inside epochs, one CPU thread, results in tmp."""
    overrides: dict[str, Any] = {"scale": "smoke", "device": "cpu", "threads": 1, "results_dir": str(tmp_path / "results"),
                                 "wandb.mode": wandb_mode}
    for exp, n in (("lillicrap_linear", 300), ("lillicrap_pinv", 300), ("lillicrap_teacher", 400)):
        settings = {"epochs": 2, "seeds": len(SEEDS), "train_subset": n, "test_subset": 200, **scale}
        overrides.update({f"experiments.{exp}.scales.smoke.{k}": v for k, v in settings.items()})
    overrides["experiments.lillicrap_teacher.train.eval_every_examples"] = 100  # rows inside the epoch too
    overrides["experiments.lillicrap_teacher.train.angle_every"] = 7
    return load_config(REPO_CONFIG, overrides)


def image_config(tmp_path: Path, **scale: Any) -> dict:
    """config.yaml at scale smoke for two MNIST experiments: 3 seeds, 2 epochs, a few hundred images, Lillicrap's
    train error on a per-seed random subset, DTP's net with its 10k held-out images; one CPU thread."""
    overrides: dict[str, Any] = {"scale": "smoke", "device": "cpu", "threads": 1, "results_dir": str(tmp_path / "results"),
                                 "wandb.mode": "disabled"}
    for exp, extra in (("lillicrap_mnist", {"train_eval_subset": 200}), ("lee_dtp_mnist", {})):
        settings = {"epochs": 2, "seeds": len(SEEDS), "train_subset": 600, "test_subset": 300, **extra, **scale}
        overrides.update({f"experiments.{exp}.scales.smoke.{k}": v for k, v in settings.items()})
    overrides["experiments.lillicrap_mnist.train.angle_every"] = 7
    overrides["experiments.lee_dtp_mnist.train.batch_size"] = 50
    return load_config(REPO_CONFIG, overrides)


def folder(cfg: dict, exp: str, method: str, seed: int, root: str = "separate") -> Path:
    return Path(cfg["results_dir"]) / root / exp / method / f"seed{seed}"


def train_both(cfg: dict, exp: str, method: str, data_dir: str | Path = "data",
               **ensemble_kw: Any) -> tuple[list[dict], list[dict]]:
    """Each seed alone (train()) and all seeds as one ensemble (train_ensemble()); returns both summaries."""
    run_cfgs = [resolve_run(cfg, exp, method, s) for s in SEEDS]
    wb = {"mode": cfg["wandb"]["mode"]}
    alone = [train(rc, folder(cfg, exp, method, rc["seed"]), data_dir, device="cpu", wandb_cfg=wb, threads=1)
             for rc in run_cfgs]
    together = train_ensemble(run_cfgs, [folder(cfg, exp, method, s, "ensemble") for s in SEEDS], data_dir,
                              device="cpu", wandb_cfg=wb, threads=1, **ensemble_kw)
    return alone, together


def assert_seeds_as_separate_runs(cfg: dict, exp: str, method: str, alone: list[dict], together: list[dict]) -> list:
    """Every seed's metrics.csv, summary and final checkpoint from the ensemble equal its separate run's, bitwise;
    returns the seeds' metrics rows."""
    rows = []
    for s, a, b in zip(SEEDS, alone, together, strict=True):
        mine = read_metrics(folder(cfg, exp, method, s, "ensemble") / "metrics.csv")
        ref = read_metrics(folder(cfg, exp, method, s) / "metrics.csv")
        assert len(ref) >= 3 and mine == ref, f"seed {s}: the ensemble's metrics.csv differs from the separate run's"
        rows.append(ref)
        assert b["status"] == a["status"] == "completed"
        assert without_times(b["final"]) == without_times(a["final"]) and b["best_test_error"] == a["best_test_error"]
        assert b["provenance"]["config_hash"] == a["provenance"]["config_hash"]
        assert b["provenance"]["ensemble_size"] == len(SEEDS) and b["run_config"] == a["run_config"]
        ck_a = torch.load(folder(cfg, exp, method, s) / "checkpoint.pt", weights_only=False)
        ck_b = torch.load(folder(cfg, exp, method, s, "ensemble") / "checkpoint.pt", weights_only=False)
        assert ck_a["net"].keys() == ck_b["net"].keys()
        for k in ck_a["net"]:
            assert torch.equal(ck_a["net"][k], ck_b["net"][k]), f"seed {s}: final {k} differs"
        assert torch.equal(ck_a["generator"], ck_b["generator"]), "the rule drew a different amount of noise"
    assert rows[0] != rows[1] != rows[2], "the seeds gave the same numbers"
    assert not list((Path(cfg["results_dir"]) / "ensemble" / exp / method).glob("checkpoint-seeds*.pt")), \
        "the ensemble checkpoint was left behind after a finished run"
    return rows


def without_times(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.endswith("seconds")}


@pytest.mark.parametrize(("exp", "method"), [
    ("lillicrap_linear", "fa"),  # Δh and ΔW angles to BP on every 10th example, rows every 100
    ("lillicrap_linear", "bp"),  # autograd on stacked weights
    ("lillicrap_linear", "node_perturbation"),  # noise from each seed's own generator
    ("lillicrap_linear", "shallow"),
    ("lillicrap_pinv", "w0_0001"),  # the pseudo-backprop angle (pinv of stacked W)
    ("lillicrap_teacher", "fa4"),  # 4-layer tanh net with biases, shuffled order per seed and epoch
    ("lillicrap_teacher", "bp4"),
])
def test_every_seed_of_an_ensemble_gets_the_numbers_of_its_separate_run(tmp_path, one_thread, exp, method):
    cfg = synthetic_config(tmp_path)
    alone, together = train_both(cfg, exp, method)
    rows = assert_seeds_as_separate_runs(cfg, exp, method, alone, together)
    if exp == "lillicrap_linear" and method == "fa":
        assert {"angle_dh_1", "angle_dW_1", "angle_dh_1_sd"} <= set(rows[0][-1])
    if exp == "lillicrap_pinv":
        assert "angle_dh_pbp_1" in rows[0][-1]
    if exp == "lillicrap_linear":  # train.early_rows {until: 50, every: 5}, then a row every 100 examples
        seen = [int(r["examples_seen"]) for r in rows[0]]
        assert seen[:13] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 100, 200] and seen[-1] == 600
        if method == "fa":  # the angle on every one of the first 50 examples: each early window has five
            assert all(r["angle_dh_1"] and r["angle_dh_1_sd"] for r in rows[0][1:11])


def test_the_finer_start_measures_more_and_changes_no_training_number(tmp_path, one_thread):
    """early_rows adds rows and angle measurements within the first 50 examples; the weights, the losses at every
    row both runs write, and the angles of windows after the start are those of a run without it."""
    cfg = synthetic_config(tmp_path)
    fine = resolve_run(cfg, "lillicrap_linear", "fa", 0)
    coarse = resolve_run(cfg, "lillicrap_linear", "fa", 0)
    del coarse["train"]["early_rows"]
    wb = {"mode": "disabled"}
    train(fine, tmp_path / "fine", "data", device="cpu", wandb_cfg=wb, threads=1)
    train(coarse, tmp_path / "coarse", "data", device="cpu", wandb_cfg=wb, threads=1)
    a, b = read_metrics(tmp_path / "fine" / "metrics.csv"), read_metrics(tmp_path / "coarse" / "metrics.csv")
    assert [r["examples_seen"] for r in b][:3] == ["0", "100", "200"] and len(a) == len(b) + 10
    by_seen = {r["examples_seen"]: r for r in a}
    angles = ("angle_dh_1", "angle_dh_1_sd", "angle_dW_1", "angle_dW_1_sd")
    for r in b:
        mine = by_seen[r["examples_seen"]]
        keep = [k for k in r if not (r["examples_seen"] == "100" and k in angles)]  # window 1-100 vs 51-100
        assert {k: mine[k] for k in keep} == {k: r[k] for k in keep}
    assert by_seen["100"]["angle_dh_1"] != b[1]["angle_dh_1"]
    ck_a = torch.load(tmp_path / "fine" / "checkpoint.pt", weights_only=False)["net"]
    ck_b = torch.load(tmp_path / "coarse" / "checkpoint.pt", weights_only=False)["net"]
    assert all(torch.equal(ck_a[k], ck_b[k]) for k in ck_a)
    # the first five examples: FA's feedback B and BP's Wᵀ are unrelated yet, so their updates are ~orthogonal
    assert 75 < float(a[1]["angle_dh_1"]) < 105 and float(a[-1]["angle_dh_1"]) < 60


@pytest.mark.parametrize(("exp", "method"), [
    ("lillicrap_mnist", "bp"),  # autograd through the seed-by-seed layers
    ("lillicrap_mnist", "fa"),  # sigmoid output units (10 × 10 per minibatch), Δh angles every 7th minibatch
    ("lillicrap_mnist", "sparse_fa"),  # masks of W and B per seed
    ("lillicrap_mnist", "shallow"),
    ("lee_dtp_mnist", "bp"),  # tanh/softmax, cross-entropy, centred RMSprop, held-out images, fixed order
])
def test_every_seed_of_an_image_ensemble_gets_the_numbers_of_its_separate_run(tmp_path, one_thread, mnist_dir, exp,
                                                                            method):
    cfg = image_config(tmp_path)
    alone, together = train_both(cfg, exp, method, mnist_dir)
    rows = assert_seeds_as_separate_runs(cfg, exp, method, alone, together)
    if method in ("fa", "sparse_fa"):
        assert {"angle_dh_1", "angle_dW_1"} <= set(rows[0][-1])
    if exp == "lee_dtp_mnist":
        assert rows[0][-1]["valid_error"]


def test_batched_image_layers_as_on_cuda_agree_with_separate_runs_to_float_rounding(tmp_path, one_thread, mnist_dir):
    """seedwise off: one batched product and one sigmoid over all seeds, the arithmetic a GPU runs."""
    cfg = image_config(tmp_path)
    train_both(cfg, "lillicrap_mnist", "fa", mnist_dir, seedwise=False)
    for s in SEEDS:
        mine = read_metrics(folder(cfg, "lillicrap_mnist", "fa", s, "ensemble") / "metrics.csv")
        ref = read_metrics(folder(cfg, "lillicrap_mnist", "fa", s) / "metrics.csv")
        assert [r.keys() for r in mine] == [r.keys() for r in ref] and len(ref) == 3
        for a, b in zip(mine, ref, strict=True):
            for key in ("train_loss", "test_loss", "angle_dh_1", "angle_dW_1"):
                if b.get(key):
                    assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), (s, key, b["epoch"])
            for key in ("train_error", "test_error"):  # % of 200 / 300 images: a flipped image is 0.5 / 0.33
                assert abs(float(a[key]) - float(b[key])) <= 0.5, (s, key, b["epoch"])


def test_a_diverging_ensemble_records_each_seed_as_its_separate_run_does(tmp_path, one_thread):
    cfg = synthetic_config(tmp_path)
    cfg["experiments"]["lillicrap_linear"]["methods"]["bp"]["train"]["lr"] = 0.2  # blows up within the epoch
    alone, together = train_both(cfg, "lillicrap_linear", "bp")
    assert [a["status"] for a in alone] == [b["status"] for b in together]
    assert "diverged" in {a["status"] for a in alone}
    for s, a, b in zip(SEEDS, alone, together, strict=True):
        assert a["diverged_at_epoch"] == b["diverged_at_epoch"]
        assert (read_metrics(folder(cfg, "lillicrap_linear", "bp", s, "ensemble") / "metrics.csv")
                == read_metrics(folder(cfg, "lillicrap_linear", "bp", s) / "metrics.csv"))


def test_each_seed_of_an_ensemble_logs_its_own_wandb_offline_run(tmp_path, one_thread, wandb_offline):
    cfg = synthetic_config(tmp_path, wandb_mode="offline")
    wandb_dir = tmp_path / "wandb"
    run_cfgs = [resolve_run(cfg, "lillicrap_linear", "fa", s) for s in SEEDS]
    outs = [folder(cfg, "lillicrap_linear", "fa", s) for s in SEEDS]
    summaries = train_ensemble(run_cfgs, outs, "data", device="cpu", wandb_cfg={"mode": "offline"},
                               wandb_dir=wandb_dir, threads=1)
    runs = {read_offline_run(r)["run"]["name"]: r for r in find_offline_runs(wandb_dir)}
    assert sorted(runs) == [f"lillicrap_linear-fa-seed{s}" for s in SEEDS]
    for s, out, summary in zip(SEEDS, outs, summaries, strict=True):
        record = read_offline_run(runs[f"lillicrap_linear-fa-seed{s}"])
        assert Path(summary["wandb_run_dir"]) == runs[f"lillicrap_linear-fa-seed{s}"]
        assert record["run"]["group"] == "lillicrap_linear" and record["exit_code"] == 0
        assert record["config"]["provenance"]["config_hash"] == summary["provenance"]["config_hash"]
        history = [r for r in read_offline_history(runs[f"lillicrap_linear-fa-seed{s}"]) if "test_error" in r]
        metrics = read_metrics(out / "metrics.csv")
        assert [int(r["examples_seen"]) for r in history] == [int(r["examples_seen"]) for r in metrics]
        for logged, row in zip(history, metrics, strict=True):
            for key in ("test_error", "train_error", "angle_dh_1"):
                if row.get(key):
                    assert logged[key] == float(row[key]), (s, key, row["examples_seen"])


def test_a_killed_ensemble_job_resumes_and_ends_as_separate_uninterrupted_runs(tmp_path, cli_env, one_thread):
    # ~0.3-0.8 s per epoch for 3 seeds of the 4-layer teacher (1,000 per-example updates each): the kill lands
    # after epoch 1 (the checkpoint is polled every 0.05 s) and well before epoch 5
    cfg = synthetic_config(tmp_path, epochs=5, train_subset=1000, test_subset=200)
    path = write_config(cfg, tmp_path / "config.yaml")
    args = ["train", "--config", str(path), "--experiment", "lillicrap_teacher", "--method", "fa4", "--seeds", "0-2"]
    cell = Path(cfg["results_dir"]) / "smoke" / "runs" / "lillicrap_teacher" / "fa4"
    ckpt = cell / "checkpoint-seeds0-2.pt"

    kill_after_first_checkpoint(args, ckpt, tmp_path / "first.log", cli_env, tmp_path, timeout=240)
    assert not any((cell / f"seed{s}" / "summary.json").exists() for s in SEEDS), "finished before the kill"
    killed_at = torch.load(ckpt, weights_only=False)["epoch"]
    assert 1 <= killed_at < 5

    rerun = run_cli(*args, env=cli_env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from the checkpoint of epoch {killed_at}" in rerun.stderr
    assert "epoch 1/5" not in rerun.stderr, "the rerun trained epoch 1 again"
    assert not ckpt.exists()
    for s in SEEDS:
        assert cli.main(["train", "--config", str(path), "--experiment", "lillicrap_teacher", "--method", "fa4",
                         "--seed", str(s), "--out", str(tmp_path / f"alone{s}")]) == 0
        resumed = read_metrics(cell / f"seed{s}" / "metrics.csv")
        assert [r["epoch"] for r in resumed if "." not in r["epoch"]] == [str(e) for e in range(6)]
        assert resumed == read_metrics(tmp_path / f"alone{s}" / "metrics.csv"), f"seed {s} differs after the resume"
        summary = json.loads((cell / f"seed{s}" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == s
        segments = [(g["from_epoch"], g["to_epoch"]) for g in summary["provenance"]["segments"]]
        assert segments == [(0, killed_at), (killed_at, 5)], segments


def test_rules_and_tasks_without_a_stacked_form_train_one_seed_at_a_time(tmp_path, one_thread):
    cfg = synthetic_config(tmp_path)
    assert why_not_ensemble(resolve_run(cfg, "lee_dtp_mnist", "dtp", 0)) is not None
    assert "stochastic" in why_not_ensemble(resolve_run(cfg, "lee_dtp_stochastic", "bp_st", 0))  # sampled units
    assert "input_noise" in why_not_ensemble(resolve_run(cfg, "lee_dtp_autoencoder", "bp", 0))  # denoising
    assert why_not_ensemble(resolve_run(cfg, "lillicrap_mnist", "fa", 0)) is None  # image data, a plain net
    assert not ensemble_seeds(cfg, "lee_dtp_mnist", "dtp")
    assert ensemble_seeds(cfg, "lillicrap_teacher", "fa4")
    assert not ensemble_seeds({**cfg, "ensembles": False}, "lillicrap_teacher", "fa4")
    with pytest.raises(TypeError):
        RULES["difference_target_prop"].stack([])
    # switched off: the same files through train() one seed after another (no ensemble checkpoint, no size)
    run_cfgs = [resolve_run(cfg, "lillicrap_linear", "shallow", s) for s in SEEDS]
    outs = [folder(cfg, "lillicrap_linear", "shallow", s) for s in SEEDS]
    summaries = train_seeds(run_cfgs, outs, "data", device="cpu", wandb_cfg={"mode": "disabled"}, ensemble=False)
    assert [s["seed"] for s in summaries] == SEEDS and all("ensemble_size" not in s["provenance"] for s in summaries)


def test_the_ensemble_switch_is_kept_out_of_the_run_config():
    cfg = load_config(REPO_CONFIG)
    assert cfg["experiments"]["lillicrap_linear"]["train"]["ensemble_seeds"] is True
    assert "ensemble_seeds" not in resolve_run(cfg, "lillicrap_linear", "fa", 0)["train"]


def test_seeds_on_the_command_line_accept_ranges_and_lists():
    assert cli._seed_list("0-3") == [0, 1, 2, 3]
    assert cli._seed_list("0-2,5,2") == [0, 1, 2, 5]
    assert cli._seed_list("7") == [7]


def test_train_with_seeds_writes_every_seeds_default_run_folder(tmp_path, one_thread):
    cfg = synthetic_config(tmp_path)
    path = write_config(cfg, tmp_path / "config.yaml")
    assert cli.main(["train", "--config", str(path), "--experiment", "lillicrap_pinv", "--method", "w0_01",
                     "--seeds", "0-2"]) == 0
    for s in SEEDS:
        d = run_dir(Path(cfg["results_dir"]), "smoke", "lillicrap_pinv", "w0_01", s)
        summary = json.loads((d / "summary.json").read_text())
        assert summary["seed"] == s and summary["provenance"]["ensemble_size"] == len(SEEDS)
        assert [g["ensemble_size"] for g in summary["provenance"]["segments"]] == [len(SEEDS)]
        assert (d / "metrics.csv").is_file() and (d / "checkpoint.pt").is_file()


def test_an_ensemble_continues_the_seeds_own_checkpoints_to_a_longer_run(tmp_path, one_thread, mnist_dir):
    """The paper's length, once chosen, is longer than the runs already made: finished seeds are extended, not
    retrained, and end as runs of the new length from scratch; one seed without a checkpoint makes all restart."""
    exp, method = "lillicrap_mnist", "fa"
    short, long = image_config(tmp_path, epochs=1), image_config(tmp_path, epochs=3)
    outs = [folder(long, exp, method, s, "ensemble") for s in SEEDS]
    kw = dict(device="cpu", wandb_cfg={"mode": "disabled"}, threads=1)
    train_ensemble([resolve_run(short, exp, method, s) for s in SEEDS], outs, mnist_dir, **kw)
    alone = [train(resolve_run(long, exp, method, s), folder(long, exp, method, s), mnist_dir, **kw) for s in SEEDS]

    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("biocredit.ensemble._log", logs.append)
        together = train_ensemble([resolve_run(long, exp, method, s) for s in SEEDS], outs, mnist_dir, **kw)
    assert any("continuing every seed's own checkpoint of epoch 1 to 3 epochs" in m for m in logs), logs
    assert not any("epoch 1/3" in m for m in logs), "epoch 1 was trained again"
    assert_seeds_as_separate_runs(long, exp, method, alone, together)
    for summary in together:
        assert [(g["from_epoch"], g["to_epoch"]) for g in summary["provenance"]["segments"]] == [(0, 1), (1, 3)]

    # seed 2 without a checkpoint: an ensemble continues all its seeds or none
    (outs[2] / "checkpoint.pt").unlink()
    longer = image_config(tmp_path, epochs=4)
    logs.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("biocredit.ensemble._log", logs.append)
        train_ensemble([resolve_run(longer, exp, method, s) for s in SEEDS], outs, mnist_dir, **kw)
    assert any("training every seed from epoch 0: seed(s) 2 have no checkpoint to continue" in m for m in logs), logs
    assert any("epoch 1/4" in m for m in logs)


def test_a_killed_ensemble_resumes_under_a_new_length(tmp_path, one_thread, mnist_dir):
    exp, method = "lillicrap_mnist", "bp"
    cfg, longer = image_config(tmp_path, epochs=3), image_config(tmp_path, epochs=4)
    outs = [folder(cfg, exp, method, s, "ensemble") for s in SEEDS]
    kw = dict(device="cpu", wandb_cfg={"mode": "disabled"}, threads=1)

    def die_after_epoch_1(msg: str) -> None:
        if "epoch 1/3" in msg:
            assert not any((d / "summary.json").exists() for d in outs), "an earlier run's summary stands"
            raise KeyboardInterrupt
    outs[0].mkdir(parents=True)
    (outs[0] / "summary.json").write_text("{}")  # left by an earlier run of other settings
    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr("biocredit.ensemble._log", die_after_epoch_1)
        train_ensemble([resolve_run(cfg, exp, method, s) for s in SEEDS], outs, mnist_dir, **kw)
    assert torch.load(outs[0].parent / "checkpoint-seeds0-2.pt", weights_only=False)["epoch"] == 1

    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("biocredit.ensemble._log", logs.append)
        together = train_ensemble([resolve_run(longer, exp, method, s) for s in SEEDS], outs, mnist_dir, **kw)
    assert any("resuming from the checkpoint of epoch 1 (the runs' length changed to 4 epochs)" in m for m in logs)
    alone = [train(resolve_run(longer, exp, method, s), folder(longer, exp, method, s), mnist_dir, **kw) for s in SEEDS]
    assert_seeds_as_separate_runs(longer, exp, method, alone, together)
