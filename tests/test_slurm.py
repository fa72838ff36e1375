"""The workflow on a real (one-node) SLURM cluster through snakemake-executor-plugin-slurm and the profile
workflow/profiles/slurm: the jobs go through sbatch/sacct and give the same numbers as a local run, and a
training killed by SLURM's time limit is resubmitted by Snakemake and resumes from its checkpoint.

The cluster (munged, MariaDB, slurmdbd, slurmctld, slurmd; see slurm_helpers.py) is started in a temporary folder
and always stopped again. It needs root and Debian's slurm-wlm/slurmdbd/munge/mariadb-server: without them the
tests are skipped with the reason, except where BIOCREDIT_REQUIRE_SLURM=1 (set by .ci/run, which installs the
packages) turns the skip into a failure.

To stay within ~4 minutes on 2 cores the Snakemake runs go at once and the config is small: the repository's
config.yaml at scale smoke, reduced to its first MNIST experiment (one seed) and the analyses, MNIST already
prepared. Runs: the time-limit run (one training, 1 minute limit on its first attempt; its job goes first), the
SLURM run of the workflow, and the local references (the same trainings with ``snakemake --cores 1``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import (
    MIRROR,
    REPO,
    REPO_CONFIG,
    WALL_TIME_COLUMNS,
    method_with_rule,
    mnist_experiment,
    read_metrics,
)
from slurm_helpers import SlurmCluster, unavailable_reason

from biocredit.config import WEIGHT_FIGURE_KINDS

pytestmark = pytest.mark.slow

PROFILE = REPO / "workflow" / "profiles" / "slurm"
REQUIRED = os.environ.get("BIOCREDIT_REQUIRE_SLURM") == "1"
# The time-limit run: 6 epochs of 10,000 MNIST examples (~2 s each), a runtime of 1 minute for the first attempt
# and 10 for the retry. Once the first checkpoint is written the test pauses the trainer (SIGSTOP): the training
# then outlasts its limit on any machine without burning the CPU the other runs need. SLURM checks limits every
# 30 s, so it kills the job (SIGCONT, SIGTERM; SIGKILL after KillWait) 60-90 s after its start: state TIMEOUT.
TIMEOUT_SCALE = {"epochs": 6, "seeds": 1, "train_subset": 10000, "test_subset": 1000}
TIMEOUT_RUNTIME = "1 if attempt == 1 else 10"  # minutes; a Snakemake resource expression (attempt = 1, 2, ...)
RUN_TIMEOUT_S = 480


def unavailable() -> str | None:
    reason = unavailable_reason()
    if reason is None and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        reason = "snakemake-executor-plugin-slurm is not installed (pip install -e '.[dev]')"
    return reason


@pytest.fixture(scope="module")
def cluster() -> SlurmCluster:
    reason = unavailable()
    if reason:
        if REQUIRED:
            pytest.fail(f"BIOCREDIT_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(f"SLURM test not run: {reason}")
    with SlurmCluster(cpus=os.cpu_count() or 2) as c:  # the machine's own cores (2 on CI)
        c.started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 120))
        yield c


@dataclass
class Run:
    root: Path
    config: dict
    proc: subprocess.Popen | None = None
    log: Path | None = None
    returncode: int | str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return Path(self.config["results_dir"]) / self.config["scale"]

    def start(self, cmd: list[str], env: dict[str, str]) -> Run:
        self.log = self.root / "snakemake.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait(self, cluster: SlurmCluster | None = None) -> str:
        """Wait for Snakemake; fail with its log (and the cluster's) if it failed. Returns the log."""
        try:
            self.returncode = self.proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop(self.proc)
            self.returncode = "timeout"
        text = self.log.read_text(errors="replace")
        if self.returncode != 0:
            where = f"\n--- cluster logs\n{cluster.logs()}" if cluster else ""
            pytest.fail(f"snakemake in {self.root} ended with {self.returncode}:\n{text[-8000:]}{where}")
        return text

    def wait_for(self, ready, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop(self.proc)
                pytest.fail(f"gave up waiting for {what}:\n{self.log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)


def stop(proc: subprocess.Popen | None) -> None:
    """Snakemake cancels its SLURM jobs on SIGTERM; SIGKILL if that takes too long."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def workflow_config(root: Path, data_dir: Path, scale: dict | None = None) -> dict:
    """config.yaml at scale smoke with its first MNIST experiment (one seed) and the analyses; data and results in
    tmp. Written to root/config.yaml."""
    cfg = yaml.safe_load(REPO_CONFIG.read_text())
    exp = mnist_experiment(cfg)
    cfg.update(scale="smoke", device="cpu", threads=1, results_dir=str(root / "results"))
    cfg["data"] = {**cfg.get("data", {}), "dir": str(data_dir), "download": False}
    cfg["wandb"] = {**cfg.get("wandb", {}), "mode": "offline"}
    cfg["experiments"] = {exp: cfg["experiments"][exp]}
    smoke = cfg["experiments"][exp]["scales"]["smoke"]
    smoke.update({"seeds": 1, "epochs": min(smoke["epochs"], 2), **(scale or {})})
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def summaries(cfg: dict, methods: list[str] | None = None) -> list[Path]:
    """summary.json of the config's training runs (seed 0 of each method, or of ``methods``)."""
    runs = Path(cfg["results_dir"]) / cfg["scale"] / "runs"
    return [runs / exp / m / "seed0" / "summary.json"
            for exp, e in cfg["experiments"].items() for m in (methods or e["methods"])]


def snakemake_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
            str(root / "config.yaml"), "--directory", str(root), *args]


def slurm_args(init_seconds: int = 10) -> list[str]:
    # The account and partition are the user's, on the command line as the profile says. The plugin's first
    # status check comes after init_seconds (default 40: long idle waits for these short jobs).
    return ["--executor", "slurm", "--workflow-profile", str(PROFILE),
            "--default-resources", "slurm_account=root", "slurm_partition=debug",
            "--slurm-init-seconds-before-status-checks", str(init_seconds)]


def run_env(root: Path, base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", BIOCREDIT_DATA_MIRROR=str(MIRROR), WANDB_CONFIG_DIR=str(root / ".wandb"))
    return env


def trainer_pids(root: Path) -> list[int]:
    """PIDs of the `python -m biocredit train` processes working on the config under ``root``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "biocredit" in argv and "train" in argv and any(a.startswith(f"{root}/") for a in argv):
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def runs(cluster: SlurmCluster, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Start every run (the tests wait for them); stop whatever is left at the end."""
    base = tmp_path_factory.mktemp("slurm_runs")
    started: dict[str, Run] = {}
    try:
        # 1. The time-limit run, first, so that its job is not queued behind the others.
        root = base / "timeout"
        cfg = workflow_config(root, mnist_dir, TIMEOUT_SCALE)
        exp = next(iter(cfg["experiments"]))
        method = method_with_rule(cfg, exp, "backprop")
        target = summaries(cfg, [method])[0]
        # A --set-resources on the command line replaces the profile's whole block: fine for this one training.
        run = started["timeout"] = Run(root, cfg, extra={"experiment": exp, "method": method, "target": target})
        run.start(snakemake_cmd(root, *slurm_args(), "--set-resources", f"train:runtime={TIMEOUT_RUNTIME}",
                                "train:mem_mb=2000", "--", str(target)), run_env(root, cluster.env))
        run.wait_for(lambda: cluster.run("squeue", "-h", "-t", "RUNNING", check=False).stdout.strip(),
                     "the time-limit run's job to start")

        # 2. The workflow on SLURM, and the local references: the same trainings on this machine.
        root = base / "slurm"
        started["slurm"] = Run(root, workflow_config(root, mnist_dir))
        started["slurm"].start(snakemake_cmd(root, *slurm_args(init_seconds=15)), run_env(root, cluster.env))
        for name, scale, methods in (("local", None, None), ("timeout_local", TIMEOUT_SCALE, [method])):
            root = base / name
            cfg = workflow_config(root, mnist_dir, scale)
            started[name] = Run(root, cfg).start(
                snakemake_cmd(root, "--cores", "1", "--", *map(str, summaries(cfg, methods))),
                run_env(root, dict(os.environ)))

        # 3. Pause the time-limited training once it has written its first checkpoint (see TIMEOUT_SCALE).
        run = started["timeout"]
        train_log = run.results / "logs" / "train" / exp / method / "seed0.log"
        run.wait_for(lambda: train_log.is_file() and re.search(r"epoch 1/\d+", train_log.read_text()),
                     "the time-limited training's first epoch")
        pids = trainer_pids(run.root)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        run.extra.update(paused=pids, log_when_paused=train_log.read_text())
        yield started
    finally:
        for run in started.values():
            stop(run.proc)


def slurm_jobs(cluster: SlurmCluster, log: str) -> list[dict[str, str]]:
    """The SLURM jobs of one Snakemake run (named after the run ID it logs), in submission order."""
    run_id = re.search(r"SLURM run ID: (\S+)", log)
    assert run_id, "no 'SLURM run ID' in the Snakemake log: did it use the slurm executor?"
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    deadline = time.monotonic() + 30  # slurmdbd may record the last job a moment after Snakemake saw it end
    while True:
        jobs = cluster.sacct("--name", run_id.group(1), "--starttime", cluster.started)
        if len(jobs) >= len(submitted) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sorted(j["JobIDRaw"] for j in jobs) == sorted(submitted), (jobs, submitted)
    print("".join(f"\n  sacct: {j['JobIDRaw']:>4} {j['State']:<10} {j['Elapsed']} of {j['Timelimit']:<9} {j['Comment']}"
                  for j in jobs))
    return sorted(jobs, key=lambda j: int(j["JobIDRaw"]))


def assert_same_runs(ours: Run, reference: Run, methods: list[str]) -> None:
    """metrics.csv (without wall-time columns) and the final test error are equal, run by run."""
    for a, b in zip(summaries(ours.config, methods), summaries(reference.config, methods), strict=True):
        name = "/".join(a.parent.parts[-3:])
        assert read_metrics(a.parent / "metrics.csv") == read_metrics(b.parent / "metrics.csv"), (
            f"{name}: metrics.csv (without {WALL_TIME_COLUMNS}) differs from the local run's")
        sa, sb = (json.loads(p.read_text()) for p in (a, b))
        assert sa["status"] == sb["status"] == "completed", name
        assert sa["final"]["test_error"] == sb["final"]["test_error"], name


def test_the_workflow_runs_through_slurm_and_matches_a_local_run(cluster: SlurmCluster, runs: dict[str, Run]):
    slurm, local = runs["slurm"], runs["local"]
    log = slurm.wait(cluster)
    local.wait()

    jobs = slurm_jobs(cluster, log)
    assert jobs and all(j["State"] == "COMPLETED" for j in jobs), jobs
    exp = next(iter(slurm.config["experiments"]))
    methods = list(slurm.config["experiments"][exp]["methods"])
    comments = [j["Comment"] for j in jobs]
    assert sorted(c for c in comments if c.startswith("rule_train_")) == sorted(
        f"rule_train_wildcards_{exp}_{m}_0" for m in methods), comments
    expected = ["aggregate", "figures", "analysis", "analysis_figure", "compare"]
    if any(f["kind"] in WEIGHT_FIGURE_KINDS for f in slurm.config["experiments"][exp].get("figures", [])):
        expected.append("figure_data")
    # Each rule ran in a SLURM job of its own (named in the job's comment) or inside the profile's postprocess group
    # job, whose comment lists its rules but is cut off ("..."), so there the Snakemake log must report the rule's
    # job finished (none of these rules is a local rule: with the slurm executor they run in SLURM jobs or not at all)
    group_jobs = [c for c in comments if c.startswith("rule_postprocess_")]
    for rule in expected:
        in_group = bool(group_jobs) and re.search(rf"Finished jobid: \d+ \(Rule: {rule}\)", log)
        assert any(rule in c for c in comments) or in_group, f"no SLURM job ran rule {rule}: {comments}"

    assert_same_runs(slurm, local, methods)
    figures = [f"{exp}_{fig['name']}" for fig in slurm.config["experiments"][exp].get("figures", [])]
    for stem in figures + [f"{name}_{a['name']}" for name, a in slurm.config.get("analyses", {}).items()]:
        for ext in ("png", "pdf"):
            assert (slurm.results / "figures" / f"{stem}.{ext}").is_file(), f"{stem}.{ext} not drawn"
    assert (slurm.results / "tables" / "paper_comparison.csv").is_file()


def test_a_training_killed_by_the_time_limit_is_resubmitted_and_resumes(cluster: SlurmCluster,
                                                                        runs: dict[str, Run]):
    run = runs["timeout"]
    log = run.wait(cluster)
    runs["timeout_local"].wait()
    exp, method = run.extra["experiment"], run.extra["method"]
    assert run.extra["paused"], "the time-limited trainer was not found to pause"

    jobs = slurm_jobs(cluster, log)
    assert [j["State"] for j in jobs] == ["TIMEOUT", "COMPLETED"], jobs
    assert {j["Comment"] for j in jobs} == {f"rule_train_wildcards_{exp}_{method}_0"}, jobs
    assert [j["Timelimit"] for j in jobs] == ["00:01:00", "00:10:00"], "runtime (per attempt) -> sbatch -t"

    # Snakemake removed the failed attempt's declared outputs (metrics.csv where it had been written yet; the list is
    # empty when the attempt died before its first metrics row) but not the checkpoint, and the retry resumed from it.
    # (srun's own messages, e.g. "srun: got SIGCONT", may land between the header and the file list on a busy machine)
    removed = re.search(r"Removing output files of failed job train since they might be corrupted:\n((?:.*\n?){1,6})", log)
    assert removed, log[-4000:]
    files = next((line for line in removed.group(1).splitlines() if line.startswith("/")), "")
    assert "checkpoint.pt" not in files and "summary.json" not in files, files
    assert (run.extra["target"].parent / "checkpoint.pt").is_file()
    paused_at = max(int(k) for k in re.findall(r"epoch (\d+)/", run.extra["log_when_paused"]))
    train_log = (run.results / "logs" / "train" / exp / method / "seed0.log").read_text()
    resumed = re.search(r"resuming from the checkpoint of epoch (\d+)", train_log)
    assert resumed, f"the retry did not resume from a checkpoint:\n{train_log[-3000:]}"
    epochs = run.config["experiments"][exp]["scales"]["smoke"]["epochs"]
    assert 1 <= paused_at <= int(resumed.group(1)) < epochs
    trained = [int(k) for k in re.findall(r"epoch (\d+)/", train_log.split(resumed.group(0))[1])]
    assert trained == list(range(int(resumed.group(1)) + 1, epochs + 1)), "the retry did not go on where it stopped"

    # ... and ended with the same numbers as the uninterrupted local run.
    rows = read_metrics(run.extra["target"].parent / "metrics.csv")
    assert [int(float(r["epoch"])) for r in rows] == list(range(epochs + 1)), "every epoch once in metrics.csv"
    assert_same_runs(run, runs["timeout_local"], [method])
