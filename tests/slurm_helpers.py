"""A throw-away one-node SLURM cluster on this machine, for tests/test_slurm.py (and for trying the SLURM profile
by hand: ``sudo .venv/bin/python tests/slurm_helpers.py`` starts one and prints the environment to use).

Everything lives in one temporary folder: a fresh MUNGE key and munged on a private socket, a MariaDB data
directory served on a free localhost port, slurmdbd (accounting: the SLURM executor plugin reads job states with
``sacct``), slurmctld and slurmd with a generated ``slurm.conf``/``slurmdbd.conf`` on free ports. The daemons run
in the foreground as children of this process; :meth:`SlurmCluster.stop` cancels the jobs, stops every daemon it
started (by PID), kills what is left of the jobs (processes whose environment names this cluster's
``SLURM_CONF``) and deletes the folder. Nothing outside the folder is written, so a later run never trips over
an earlier one, and a SLURM or MariaDB already installed as a system service is left alone.

Needs root (slurmd launches jobs as their user; munged/slurmdbd checks) and Debian's packages
``slurm-wlm slurmdbd munge mariadb-server`` (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("munge", "mariadb", "mariadb-admin", "sbatch", "srun", "sacct", "sacctmgr", "sinfo", "squeue",
           "scancel", "scontrol")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
CLUSTER_NAME = "biocredit"
DB_PASSWORD = "biocredit-test"  # a throw-away database on localhost, gone with the folder


def which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (None: it can)."""
    if sys.platform != "linux":
        return "a local SLURM cluster needs Linux"
    missing = [name for name in DAEMONS + CLIENTS if which(name) is None]
    if missing:
        return (f"SLURM/MUNGE/MariaDB programs not found ({', '.join(missing)}); install them with "
                f"`apt-get install -y --no-install-recommends {PACKAGES}` (.ci/run does)")
    if os.geteuid() != 0:
        return "starting munged/slurmdbd/slurmctld/slurmd needs root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_memory_mb(margin_mb: int = 1024) -> int:
    """The node's RealMemory: total memory minus a margin (slurmd refuses a node that claims more than it has)."""
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return max(total_kb // 1024 - margin_mb, 500)


class ClusterError(RuntimeError):
    pass


class SlurmCluster:
    """A one-node cluster in a temporary folder: ``with SlurmCluster() as c: subprocess.run(..., env=c.env)``."""

    def __init__(self, cpus: int = 2, root: Path | None = None):
        self.cpus = cpus
        self.root = Path(root or tempfile.mkdtemp(prefix="biocredit-slurm-"))
        self.node = socket.gethostname().split(".")[0]
        self.memory_mb = real_memory_mb()
        self.conf = self.root / "etc" / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, Path] = {}

    # ------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """os.environ plus what every SLURM client (and the jobs) need to find this cluster.

        The jobstep executor plugin deletes all SLURM_* variables (SLURM_CONF included) before the ``srun`` it
        starts inside each job, so ``bin/srun`` here sets SLURM_CONF again. A real cluster keeps its config at
        /etc/slurm/slurm.conf (or runs slurmd "configless") and needs nothing of the sort.
        """
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), SEARCH_PATH])
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    # ------------------------------------------------------------------ start
    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> None:
        for sub in ("etc", "bin", "munge", "db", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged wants its socket's folders searchable by all
        self._start_munge(timeout)
        db_port = self._start_mariadb(timeout)
        ports = {"dbd": free_port(), "ctld": free_port(), "slurmd": free_port()}
        self._write_configs(db_port, ports)
        self._spawn("slurmdbd", [which("slurmdbd"), "-D"])
        self._wait(lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False, timeout=15).returncode == 0,
                   timeout, "slurmdbd to answer")
        if CLUSTER_NAME not in self.run("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster").stdout.split():
            self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [which("slurmd"), "-D", "-N", self.node])

        def node_idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%t", check=False, timeout=15)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        self._wait(node_idle, timeout, "the node to be idle in sinfo")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = self.root / "log" / f"{name}.out"
        self._logs[name] = log
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited ({proc.returncode}) while waiting for {what}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def _start_munge(self, timeout: float) -> None:
        d = self.root / "munge"
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.munge_socket = d / "munge.socket"
        self._spawn("munged", [which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
                               f"--seed-file={d / 'munged.seed'}", f"--log-file={self.root / 'log' / 'munged.log'}"])

        def munge_ok() -> bool:
            return subprocess.run([which("munge"), "-n", "-S", str(self.munge_socket)], capture_output=True,
                                  timeout=10).returncode == 0

        self._wait(munge_ok, timeout, "munged")

    def _start_mariadb(self, timeout: float) -> int:
        d = self.root / "db"
        data, sock, port = d / "data", d / "mysqld.sock", free_port()
        (d / "tmp").mkdir(exist_ok=True)
        proc = subprocess.run([which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
                               "--auth-root-authentication-method=socket", "--skip-test-db"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        self._spawn("mariadbd", [which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=root",
                                 f"--socket={sock}", f"--port={port}", "--bind-address=127.0.0.1",
                                 f"--pid-file={d / 'mariadbd.pid'}", f"--tmpdir={d / 'tmp'}",
                                 "--innodb-buffer-pool-size=64M", "--innodb-lock-wait-timeout=900",
                                 f"--log-error={self.root / 'log' / 'mariadbd.log'}"])
        client = [which("mariadb"), "--no-defaults", f"--socket={sock}", "-u", "root"]
        self._wait(lambda: subprocess.run([*client, "-e", "SELECT 1"], capture_output=True, timeout=10).returncode == 0,
                   timeout, "MariaDB")
        sql = "".join(f"CREATE USER 'slurm'@'{host}' IDENTIFIED BY '{DB_PASSWORD}'; "
                      f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{host}'; " for host in ("127.0.0.1", "localhost"))
        proc = subprocess.run([*client, "-e", sql], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise ClusterError(f"creating the slurm database user failed: {proc.stderr}")
        return port

    def _write_configs(self, db_port: int, ports: dict[str, int]) -> None:
        r, log = self.root, self.root / "log"
        dbd = self.conf.with_name("slurmdbd.conf")
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports['dbd']}
SlurmUser=root
LogFile={log / 'slurmdbd.log'}
PidFile={r / 'run' / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
""")
        os.chmod(dbd, 0o600)  # slurmdbd refuses a readable config (it holds the database password)
        self.conf.write_text(f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}
SlurmdPidFile={r / 'run' / 'slurmd.pid'}
SlurmctldLogFile={log / 'slurmctld.log'}
SlurmdLogFile={log / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['dbd']}
# the MUNGE socket for talking to slurmdbd (clients such as sacct/sacctmgr read it from here)
AccountingStoragePass={self.munge_socket}
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        srun = self.root / "bin" / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF='{self.conf}' exec '{which('srun')}' \"$@\"\n")
        os.chmod(srun, 0o755)

    # ------------------------------------------------------------------ queries
    def sacct(self, *args: str) -> list[dict[str, str]]:
        """``sacct -X -P`` rows (JobIDRaw, JobName, State, Comment, Elapsed, Timelimit) for the given filters."""
        fields = ["JobIDRaw", "JobName", "State", "Comment", "Elapsed", "Timelimit"]
        out = self.run("sacct", "-X", "-P", "-n", "--format=" + ",".join(f"{f}%300" for f in fields), *args).stdout
        return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]

    def logs(self, tail: int = 15) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            try:
                lines = path.read_text(errors="replace").splitlines()[-tail:]
            except OSError:
                continue
            if lines:
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Cancel the jobs, stop the daemons (reverse start order), kill leftover job processes, delete the folder."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=15).stdout.split()
                if jobs:
                    self.run("scancel", *jobs, check=False, timeout=15)
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and self.run("squeue", "-h", check=False,
                                                                   timeout=15).stdout.strip():
                        time.sleep(0.5)
            except (subprocess.SubprocessError, OSError):
                pass
        for name in reversed(list(self.procs)):
            _terminate(self.procs[name])
        self._kill_job_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_job_leftovers(self) -> None:
        """slurmstepd and job processes outlive slurmd; they all carry this cluster's SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf}".encode()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def _terminate(proc: subprocess.Popen, grace: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


if __name__ == "__main__":
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    with SlurmCluster() as cluster:
        print(f"cluster up in {cluster.root}; in another shell:\n"
              f"  export SLURM_CONF={cluster.conf} PATH={cluster.root / 'bin'}:$PATH\n"
              "  snakemake --workflow-profile workflow/profiles/slurm --default-resources slurm_account=root ...\n"
              "Ctrl-C stops it and deletes the folder.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
