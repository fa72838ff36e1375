"""Tests of biocredit.tracking (W&B behind a small interface that never fails or slows training).

No test touches the internet: every W&B environment variable is cleared, HOME points at a temporary folder
and WANDB_BASE_URL at a closed local port.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from biocredit import tracking
from biocredit.tracking import WandbRun, WandbWarning

CLOSED_PORT_URL = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def isolated_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No credentials, no real server, no user home; a fresh W&B session per test."""
    for key in list(os.environ):
        if key.startswith("WANDB_"):
            monkeypatch.delenv(key)
    # set by tracking itself (os.environ.setdefault): make monkeypatch restore them afterwards
    for key in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", CLOSED_PORT_URL)
    monkeypatch.setattr(tracking, "_online_failed", None)
    monkeypatch.setattr(tracking, "OFFLINE_RETRY_PAUSE_S", 0.0)
    yield home
    tracking.shutdown()  # forget session credentials and the service started with this test's env


def make_run(wandb_dir: Path, **overrides) -> WandbRun:
    kwargs = dict(
        wandb_dir=wandb_dir,
        project="biocredit-test",
        entity=None,
        mode="offline",
        name="lillicrap_mnist-fa-s0",
        group="lillicrap_mnist",
        job_type="train",
        config={"lr": 1e-3, "net": {"sizes": [784, 1000, 10]}, "method": "fa", "seed": 0},
        tags=["smoke", "fa"],
        summaries={"test_error": "min,last", "train_loss": "min,last", "angle_*": "last"},
    )
    kwargs.update(overrides)
    return WandbRun(**kwargs)


def wandb_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, WandbWarning)]


TEST_ERRORS = [9.5, 5.25, 4.0, 3.5, 3.75]


def test_offline_run_records_history_config_summary_and_metadata(tmp_path: Path, isolated_wandb: Path):
    wandb_dir = tmp_path / "results" / "wandb"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = make_run(wandb_dir)
        for epoch, err in enumerate(TEST_ERRORS):
            loss = float("nan") if epoch == 4 else 1.0 / (epoch + 1)
            run.log({"epoch": epoch, "test_error": err, "train_loss": loss})
        run.summary({"final_test_error": TEST_ERRORS[-1]})
        run.finish()
        run.finish()  # idempotent
    assert wandb_warnings(caught) == []
    assert run.mode == "offline" and run.run_id

    runs = tracking.find_offline_runs(tmp_path)
    assert runs == [run.run_dir]
    assert run.run_dir.name.startswith("offline-run-") and run.run_dir.name.endswith(run.run_id)

    rows = [r for r in tracking.read_offline_history(run.run_dir) if "test_error" in r]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["test_error"] for r in rows] == TEST_ERRORS
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["train_loss"] == 1.0 and math.isnan(rows[4]["train_loss"])  # non-finite logged as-is

    recorded = tracking.read_offline_run(run.run_dir)
    assert recorded["config"] == {"lr": 1e-3, "net": {"sizes": [784, 1000, 10]}, "method": "fa", "seed": 0}
    meta = recorded["run"]
    assert (meta["id"], meta["project"], meta["name"], meta["group"], meta["job_type"]) == (
        run.run_id,
        "biocredit-test",
        "lillicrap_mnist-fa-s0",
        "lillicrap_mnist",
        "train",
    )
    assert meta["tags"] == ["smoke", "fa"]
    assert recorded["summary"]["final_test_error"] == TEST_ERRORS[-1]
    assert recorded["summary"]["test_error"] == {"min": 3.5, "last": 3.75}
    assert recorded["exit_code"] == 0
    metrics = {m.get("name") or m.get("glob_name"): m for m in recorded["metrics"]}
    assert metrics["*"]["step_metric"] == "epoch"
    assert metrics["angle_*"]["summary"] == {"last": True}

    # W&B's own cache stays under the results folder, not in the (CI / read-only) home. The folder itself is
    # made by W&B's service process when it first needs it (under load, possibly after this line), so the
    # test checks where W&B is told to put it, and that nothing landed in the home.
    assert Path(os.environ["WANDB_CACHE_DIR"]) == wandb_dir / ".cache"
    assert not (isolated_wandb / ".cache").exists() and not (isolated_wandb / ".local").exists()


def test_several_sequential_runs_in_one_process_get_their_own_folders(tmp_path: Path):
    ids = []
    for seed in range(3):
        run = make_run(tmp_path, name=f"run-s{seed}", config={"seed": seed})
        run.log({"epoch": 0, "test_error": float(seed)})
        run.finish()
        ids.append(run.run_id)
    runs = tracking.find_offline_runs(tmp_path)
    assert len(runs) == 3 and len(set(ids)) == 3
    for run_dir in runs:
        recorded = tracking.read_offline_run(run_dir)
        seed = recorded["config"]["seed"]
        assert recorded["run"]["name"] == f"run-s{seed}"
        assert [r["test_error"] for r in recorded["history"]] == [float(seed)]


def test_context_manager_finishes_with_exit_code_1_on_exception(tmp_path: Path):
    with pytest.raises(ZeroDivisionError):
        with make_run(tmp_path) as run:
            run.log({"epoch": 0, "test_error": 1.0})
            1 / 0  # noqa: B018
    assert not run.active
    assert tracking.read_offline_run(run.run_dir)["exit_code"] == 1


def test_given_run_id_is_used(tmp_path: Path):
    run = make_run(tmp_path, run_id="abc123xy")
    run.finish()
    assert run.run_id == "abc123xy" and run.run_dir.name.endswith("-abc123xy")


@pytest.mark.parametrize(
    ("env", "config_mode", "expected"),
    [
        (None, None, "offline"),
        (None, "online", "online"),
        (None, "disabled", "disabled"),
        ("offline", "online", "offline"),
        ("online", "offline", "online"),
        ("disabled", "online", "disabled"),
        ("dryrun", "online", "offline"),
        (" Online ", None, "online"),
        ("", "disabled", "disabled"),
    ],
)
def test_wandb_mode_env_overrides_config_and_default_is_offline(monkeypatch, env, config_mode, expected):
    if env is not None:
        monkeypatch.setenv("WANDB_MODE", env)
    assert tracking.resolve_mode(config_mode) == expected


def test_unknown_mode_warns_and_uses_offline(monkeypatch):
    with pytest.warns(WandbWarning, match="unknown"):
        assert tracking.resolve_mode("sometimes") == "offline"
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.warns(WandbWarning, match="WANDB_MODE"):
        assert tracking.resolve_mode("online") == "offline"


def test_online_without_api_key_falls_back_to_offline_with_exactly_one_warning(tmp_path: Path):
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = make_run(tmp_path, mode="online")
        run.log({"epoch": 0, "test_error": 2.5})
        run.finish()
        second = make_run(tmp_path, mode="online")  # the failure is remembered: straight to offline, silently
        second.finish()
    elapsed = time.monotonic() - start
    messages = wandb_warnings(caught)
    assert len(messages) == 1, messages
    assert "online" in messages[0] and "offline" in messages[0] and "\n" not in messages[0]
    assert run.mode == "offline" and second.mode == "offline"
    assert [r["test_error"] for r in tracking.read_offline_history(run.run_dir)] == [2.5]
    assert len(tracking.find_offline_runs(tmp_path)) == 2
    assert elapsed < 40, f"online fallback took {elapsed:.1f} s"


def test_online_with_unreachable_server_falls_back_after_the_init_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)  # a well-formed key, but the server is a closed port
    monkeypatch.setattr(tracking, "INIT_TIMEOUT_S", 2.0)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = make_run(tmp_path, mode="online")
        run.log({"epoch": 0, "test_error": 1.5})
        run.finish()
    elapsed = time.monotonic() - start
    assert len(wandb_warnings(caught)) == 1
    assert run.mode == "offline"
    assert tracking.find_offline_runs(tmp_path) == [run.run_dir]
    assert [r["test_error"] for r in tracking.read_offline_history(run.run_dir)] == [1.5]
    assert elapsed < 20, f"online fallback took {elapsed:.1f} s"


def test_broken_wandb_init_warns_once_and_everything_becomes_a_noop(tmp_path, monkeypatch):
    import pandas as pd
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb service exploded")

    monkeypatch.setattr(wandb, "init", broken_init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make_run(tmp_path) as run:
            run.log({"epoch": 0, "test_error": 1.0})
            run.summary({"final": 1.0})
            run.log_table("table", pd.DataFrame({"a": [1]}))
            run.log_images({"img": tmp_path / "missing.png"})
        run.finish()
    messages = wandb_warnings(caught)
    assert len(messages) == 1 and "wandb service exploded" in messages[0] and "without W&B" in messages[0]
    assert (run.mode, run.run_id, run.run_dir, run.active) == ("disabled", None, None, False)
    assert tracking.find_offline_runs(tmp_path) == []


def test_an_offline_start_the_service_refuses_once_is_retried_with_a_fresh_id(tmp_path, monkeypatch):
    import wandb

    real_init, ids = wandb.init, []

    def flaky_init(*args, **kwargs):
        ids.append(kwargs["id"])
        if len(ids) == 1:
            raise RuntimeError("WandbServiceConnectionError: failed to connect to the service")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", flaky_init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = make_run(tmp_path, run_id="firsttry1")
        run.log({"epoch": 0, "test_error": 2.5})
        run.finish()
    assert wandb_warnings(caught) == []
    assert len(ids) == 2 and ids[0] == "firsttry1" and ids[1] != ids[0]
    assert (run.mode, run.run_id) == ("offline", ids[1])
    assert [r["test_error"] for r in tracking.read_offline_history(run.run_dir)] == [2.5]


def test_failing_wandb_calls_warn_once_and_training_carries_on(tmp_path: Path):
    run = make_run(tmp_path)
    real_log = run._run.log

    def flaky_log(*args, **kwargs):
        raise OSError("broken pipe to wandb-core")

    run._run.log = flaky_log
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            run.log({"epoch": epoch, "test_error": 1.0})
        run.log_images({"img": tmp_path / "missing.png"})
        run._run.log = real_log
        run.log({"epoch": 3, "test_error": 0.5})
        run.finish()
    messages = wandb_warnings(caught)
    assert len(messages) == 1 and "broken pipe" in messages[0]
    assert [r["epoch"] for r in tracking.read_offline_history(run.run_dir)] == [3]


def test_disabled_mode_creates_nothing(tmp_path: Path):
    with make_run(tmp_path / "wandb", mode="disabled") as run:
        run.log({"epoch": 0, "test_error": 1.0})
        run.summary({"x": 1})
    assert (run.mode, run.run_id, run.run_dir) == ("disabled", None, None)
    assert not (tmp_path / "wandb").exists()


def test_tables_and_images_are_logged(tmp_path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    png = tmp_path / "curve.png"
    fig.savefig(png)
    plt.close(fig)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make_run(tmp_path / "w") as run:
            run.log({"epoch": 0, "test_error": 1.0})
            run.log_table("results", pd.DataFrame({"method": ["bp", "fa"], "test_error": [2.4, 2.1]}))
            run.log_images({"fig2a": png})
    assert wandb_warnings(caught) == []
    rows = tracking.read_offline_history(run.run_dir)
    table = next(r for r in rows if "results._type" in r or "results" in r)
    image = next(r for r in rows if "fig2a._type" in r or "fig2a" in r)
    assert table.get("epoch") == 0 and image.get("epoch") == 0  # the step metric is filled in by W&B


def test_find_offline_runs_is_recursive_and_ignores_folders_without_a_log(tmp_path: Path):
    good = tmp_path / "quick" / "wandb" / "mnist" / "wandb" / "offline-run-20250101_000000-aaaa1111"
    good.mkdir(parents=True)
    (good / "run-aaaa1111.wandb").write_bytes(b"")
    empty = tmp_path / "wandb" / "offline-run-20250101_000001-bbbb2222"
    empty.mkdir(parents=True)
    online = tmp_path / "wandb" / "run-20250101_000002-cccc3333"
    online.mkdir(parents=True)
    (online / "run-cccc3333.wandb").write_bytes(b"")
    assert tracking.find_offline_runs(tmp_path) == [good]
    assert tracking.find_offline_runs(tmp_path / "nowhere") == []


def test_sync_dry_run_lists_the_offline_runs(tmp_path: Path, capsys):
    for seed in range(2):
        make_run(tmp_path, config={"seed": seed}).finish()
    listed = tracking.sync_offline_runs(tmp_path, dry_run=True)
    assert listed == tracking.find_offline_runs(tmp_path) and len(listed) == 2
    out = capsys.readouterr().out
    assert "2 offline run(s)" in out and all(str(p) in out for p in listed)


def test_sync_without_api_key_raises_a_one_line_error(tmp_path: Path):
    make_run(tmp_path).finish()
    with pytest.raises(RuntimeError) as info:
        tracking.sync_offline_runs(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "WANDB_API_KEY" in message and "wandb login" in message


def test_sync_runs_wandb_sync_once_per_offline_run(tmp_path: Path, monkeypatch, capsys):
    for seed in range(2):
        make_run(tmp_path, config={"seed": seed}).finish()
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    calls: list[list[str]] = []

    def fake_run(cmd, check=False):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(tracking.subprocess, "run", fake_run)
    synced = tracking.sync_offline_runs(tmp_path)
    assert synced == tracking.find_offline_runs(tmp_path)
    assert calls == [[sys.executable, "-m", "wandb", "sync", str(p)] for p in synced]
    assert "[2/2]" in capsys.readouterr().out

    monkeypatch.setattr(
        tracking.subprocess, "run", lambda cmd, check=False: subprocess.CompletedProcess(cmd, 1)
    )
    with pytest.raises(RuntimeError, match="failed for 2 of 2"):
        tracking.sync_offline_runs(tmp_path)


def test_summary_specs_map_to_what_wandb_accepts():
    assert tracking._summary_ops("min,last") == "min,last"
    assert tracking._summary_ops("best, LAST, copy, median") == "min,last"
    assert tracking._summary_ops("bogus") is None


def test_truncated_transaction_log_reads_back_the_complete_records(tmp_path: Path):
    run = make_run(tmp_path)
    for epoch in range(50):
        run.log({"epoch": epoch, "test_error": float(epoch)})
    run.finish()
    log_file = next(run.run_dir.glob("*.wandb"))
    data = log_file.read_bytes()
    log_file.write_bytes(data[: len(data) // 2])
    rows = tracking.read_offline_history(run.run_dir)
    assert 0 < len(rows) < 50
    assert [r["epoch"] for r in rows] == list(range(len(rows)))


def test_python_exits_promptly_even_with_an_unfinished_run(tmp_path: Path):
    script = f"""
from pathlib import Path
from biocredit.tracking import WandbRun
kw = dict(wandb_dir=Path({str(tmp_path)!r}), project="p", entity=None, mode="offline", group="g",
          job_type="train", config={{}})
first = WandbRun(name="first", **kw)
first.log({{"epoch": 0, "test_error": 1.0}})
first.finish()
second = WandbRun(name="second", **kw)
second.log({{"epoch": 0, "test_error": 2.0}})
# no finish(): wandb's atexit hook must finish it without hanging
"""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 30
    runs = tracking.find_offline_runs(tmp_path)
    assert len(runs) == 2
    by_name = {tracking.read_offline_run(r)["run"]["name"]: r for r in runs}
    assert [r["test_error"] for r in tracking.read_offline_history(by_name["second"])] == [2.0]


def test_a_stale_service_address_in_the_environment_is_dropped_and_a_fresh_service_started(tmp_path, monkeypatch):
    """wandb keeps its service's address in WANDB_SERVICE; an address left behind by a service that is gone
    (torn down, killed, or restored by a test's monkeypatch) made every later start fail."""
    from wandb.sdk.lib.service.service_token import UnixServiceToken

    dead = UnixServiceToken(parent_pid=os.getpid(), path=str(tmp_path / "no-such-socket")).env_value
    monkeypatch.setenv(tracking.SERVICE_ENV, dead)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = make_run(tmp_path)
        run.log({"epoch": 0, "test_error": 1.25})
        run.finish()
    assert wandb_warnings(caught) == []
    assert run.mode == "offline"
    assert [r["test_error"] for r in tracking.read_offline_history(run.run_dir)] == [1.25]
    live = os.environ.get(tracking.SERVICE_ENV)
    assert live and live != dead
    tracking.shutdown()
    assert tracking.SERVICE_ENV not in os.environ, "shutdown left the stopped service's address behind"
