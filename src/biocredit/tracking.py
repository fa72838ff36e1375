"""Weights & Biases behind one small interface that never fails or slows training.

Every call into ``wandb`` is wrapped: on any exception we emit ONE one-line :class:`WandbWarning` naming the
problem and saying that training carries on (offline, or without W&B), and then carry on.

* ``online`` runs whose ``wandb.init`` fails (no API key: immediately; no network: after ``INIT_TIMEOUT_S``)
  are retried in ``offline`` mode (same run id after a missing key; a fresh id after a failure that reached
  W&B's service, which keeps the old id registered). The failure is remembered for the rest of the process,
  so later runs go straight to offline instead of paying the connection timeout again. Offline runs can be
  uploaded later with :func:`sync_offline_runs` (``wandb sync``).
* An offline start that fails is tried once more with a fresh id after ``OFFLINE_RETRY_PAUSE_S``, without
  the service address wandb keeps in ``WANDB_SERVICE`` when that service is unreachable (a service that was
  torn down or died leaves its address behind, and every later start in the process failed); if the retry
  fails too, the :class:`WandbRun` becomes a no-op. :func:`shutdown` removes its own service's address.
* ``disabled`` never imports ``wandb`` at all.
* ``finish()`` returns once the offline run's transaction log is on disk (wandb's own ``run.finish()``
  returns a few ms before that), so the run folder can be read back straight away.

Several runs per process work sequentially (``reinit="create_new"``). The W&B service process is torn down
by wandb's own ``atexit`` hook (a run left unfinished is finished there); :func:`shutdown` does it
explicitly.

W&B's own files are kept out of the user's home where possible: ``WANDB_CACHE_DIR`` and ``WANDB_DATA_DIR``
(and ``WANDB_CONFIG_DIR`` when the user has no ``~/.config/wandb/settings`` of their own) default to
folders below the run's ``wandb_dir`` unless already set, so that CI machines and read-only or shared homes
work and W&B's cache and settings stay in the project's results folder (a hard-killed process can still leave
wandb's own ``tmp*wandb-media``/``-artifacts`` folders in the system's temp folder). These are process-wide
environment variables
and W&B reads them when its service starts, i.e. at the first run of the process.

:func:`read_offline_history` / :func:`read_offline_run` read back an offline run's transaction log
(``run-<id>.wandb``). wandb 0.31 ships no Python reader for it any more (the old
``wandb.sdk.internal.datastore`` is gone), so the LevelDB-log framing is parsed here, exactly as the former
``DataStore`` did, and the records are decoded with wandb's own protobufs
(``wandb.proto.wandb_internal_pb2.Record``).
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import secrets
import string
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas

__all__ = [
    "FINISH_WAIT_S",
    "INIT_TIMEOUT_S",
    "WandbRun",
    "WandbWarning",
    "find_offline_runs",
    "read_offline_history",
    "read_offline_run",
    "resolve_mode",
    "shutdown",
    "sync_offline_runs",
]

log = logging.getLogger(__name__)

#: Pause before the retry of a failed offline start (see WandbRun.__init__).
OFFLINE_RETRY_PAUSE_S = 2.0

#: Where wandb keeps the address of its service process (inherited by child processes).
SERVICE_ENV = "WANDB_SERVICE"

#: Seconds ``wandb.init`` may take before we give up (wandb's default is 90; the environment variable
#: WANDB_INIT_TIMEOUT overrides this). Only an online start can take this long (an unreachable server with an
#: API key set); an offline start takes well under a second.
INIT_TIMEOUT_S = 30.0

#: Seconds finish() waits at most for W&B's service to write the run's transaction log out (normally a few ms).
FINISH_WAIT_S = 5.0

MODES = ("online", "offline", "disabled")
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}

#: define_metric(summary=...) accepts a comma-separated subset of these in wandb 0.31 ("copy" is deprecated).
_SUMMARY_OPS = {"min", "max", "mean", "last", "first", "none"}

#: Process-wide: the reason the first online start failed. Later online runs then start offline at once.
_online_failed: str | None = None


class WandbWarning(UserWarning):
    """W&B had a problem; training carries on (offline, or without W&B)."""


def _one_line(exc: BaseException | str, limit: int = 240) -> str:
    text = (
        exc if isinstance(exc, str) else (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    )
    first = " ".join(text.strip().splitlines()[:1]) or text.strip()
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _normalise_mode(value: str) -> str | None:
    mode = value.strip().lower()
    mode = _MODE_ALIASES.get(mode, mode)
    return mode if mode in MODES else None


def resolve_mode(config_mode: str | None) -> str:
    """The W&B mode to use: ``online``, ``offline`` or ``disabled``.

    The environment variable ``WANDB_MODE`` (online | offline | disabled | dryrun -> offline) overrides the
    config's ``wandb.mode``; ``WANDB_DISABLED=true`` (wandb's older switch) means disabled when
    ``WANDB_MODE`` is unset. The default is ``offline``. An unknown value warns and falls back to offline.
    """
    env_mode = os.environ.get("WANDB_MODE", "").strip()
    if env_mode:
        mode = _normalise_mode(env_mode)
        if mode is not None:
            return mode
        warnings.warn(
            f"W&B: unknown WANDB_MODE={env_mode!r} (expected one of {', '.join(MODES)}); using offline",
            WandbWarning,
            stacklevel=2,
        )
        return "offline"
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in {"1", "true", "yes"}:
        return "disabled"
    if config_mode is None or not str(config_mode).strip():
        return "offline"
    mode = _normalise_mode(str(config_mode))
    if mode is None:
        warnings.warn(
            f"W&B: unknown wandb.mode {config_mode!r} in the config (expected one of {', '.join(MODES)}); "
            "using offline",
            WandbWarning,
            stacklevel=2,
        )
        return "offline"
    return mode


def _default_config_dir_has_settings() -> bool:
    try:
        return (Path.home() / ".config" / "wandb" / "settings").is_file()
    except (OSError, RuntimeError):
        return False


def _prepare_environment(wandb_dir: Path) -> None:
    """Point W&B's cache/data (and, when the user has none, config) folders below ``wandb_dir``."""
    os.environ.setdefault("WANDB_CACHE_DIR", str(wandb_dir / ".cache"))
    os.environ.setdefault("WANDB_DATA_DIR", str(wandb_dir / ".data"))
    if "WANDB_CONFIG_DIR" not in os.environ and not _default_config_dir_has_settings():
        os.environ["WANDB_CONFIG_DIR"] = str(wandb_dir / ".config")


def _new_run_id(length: int = 8) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _json_friendly(value: Any) -> Any:
    """A JSON-serialisable copy of ``value`` (Paths, numpy scalars... become str/float), so that an odd config
    value can never make ``wandb.init`` fail."""
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=True))
    except (TypeError, ValueError):
        return {"_unserialisable_config": str(value)}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return obj.item()
        except Exception:  # noqa: BLE001 - any failure just falls through to str()
            pass
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def _summary_ops(spec: str) -> str | None:
    """Keep the aggregations wandb 0.31 accepts (comma-separated); ``best`` maps to ``min``."""
    ops: list[str] = []
    for raw in spec.split(","):
        op = raw.strip().lower()
        op = "min" if op == "best" else op
        if op in _SUMMARY_OPS and op not in ops:
            ops.append(op)
    return ",".join(ops) or None


class WandbRun:
    """One W&B run; every method is safe to call whatever state W&B is in.

    ``summaries`` maps a metric name or a glob ending in ``*`` to W&B summary aggregations, comma-separated
    (wandb 0.31: ``min``, ``max``, ``mean``, ``last``, ``first``, ``none``; ``best`` is taken as ``min``,
    unknown ones are dropped), e.g. ``{"test_error": "min,last", "angle_*": "last"}``.

    Attributes after construction: ``mode`` (the mode actually in use: online, offline or disabled; disabled
    also when W&B could not start), ``run_id`` and ``run_dir`` (the local run folder, e.g.
    ``<wandb_dir>/wandb/offline-run-YYYYmmdd_HHMMSS-<id>``), both None when disabled, ``active``.
    """

    def __init__(
        self,
        *,
        wandb_dir: Path,
        project: str,
        entity: str | None,
        mode: str,
        name: str,
        group: str,
        job_type: str,
        config: dict,
        tags: list[str] | None = None,
        step_metric: str = "epoch",
        summaries: dict[str, str] | None = None,
        run_id: str | None = None,
    ) -> None:
        global _online_failed
        self.step_metric = step_metric
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.mode = _normalise_mode(mode or "") or "offline"
        self._run: Any = None
        self._wandb: Any = None
        self._warned: set[str] = set()
        self._finished = False
        if self.mode == "disabled":
            return

        wandb_dir = Path(wandb_dir).absolute()
        try:
            wandb_dir.mkdir(parents=True, exist_ok=True)
            _prepare_environment(wandb_dir)
            import wandb
        except Exception as exc:  # noqa: BLE001 - W&B trouble must never stop training
            self._warn("init", f"cannot use W&B ({_one_line(exc)}); carrying on without W&B")
            self.mode = "disabled"
            return
        self._wandb = wandb

        init_kwargs = dict(
            dir=str(wandb_dir),
            project=project,
            entity=entity,
            name=name,
            group=group,
            job_type=job_type,
            config=_json_friendly(dict(config or {})),
            tags=list(tags) if tags else None,
            id=run_id or _new_run_id(),
            reinit="create_new",
        )
        if self.mode == "online" and _online_failed is not None:
            log.info(
                "W&B: online start failed earlier in this process (%s); starting offline", _online_failed
            )
            self.mode = "offline"
        offline_ids = [init_kwargs["id"]]
        if self.mode == "online":
            try:
                self._run = wandb.init(mode="online", settings=self._settings(), **init_kwargs)
            except Exception as exc:  # noqa: BLE001
                _online_failed = _one_line(exc)
                # A start that reached W&B's service (e.g. timed out on the network) leaves its run id
                # registered there ("run ID ... is in use"): the offline run then needs a fresh id. A usage
                # error (no API key) is raised before that, so the id can be kept, with a fresh one as backup.
                fresh = _new_run_id()
                usage_error = isinstance(exc, getattr(getattr(wandb, "errors", None), "UsageError", ()))
                offline_ids = [init_kwargs["id"], fresh] if usage_error else [fresh]
                self._warn(
                    "online",
                    f"online start failed ({_online_failed}); carrying on offline "
                    "(upload later with `wandb sync` / sync_offline_runs)",
                )
                self.mode = "offline"
        if self._run is None:
            # One more try, with a fresh id, after a pause. The usual cause of a failed offline start is a W&B
            # service that is gone while its address stays in WANDB_SERVICE (see _forget_dead_service): the
            # retry then starts a fresh service.
            offline_ids.append(_new_run_id())
            for attempt, offline_id in enumerate(offline_ids, 1):
                if attempt > 1:
                    time.sleep(OFFLINE_RETRY_PAUSE_S)
                try:
                    init_kwargs["id"] = offline_id
                    self._run = wandb.init(mode="offline", settings=self._settings(), **init_kwargs)
                    break
                except Exception as exc:  # noqa: BLE001
                    _forget_dead_service(exc)
                    if attempt == len(offline_ids):
                        self._warn(
                            "offline", f"offline start failed ({_one_line(exc)}); carrying on without W&B"
                        )
                        self.mode = "disabled"
                        self._run = None
                        return

        self.run_id = str(getattr(self._run, "id", None) or init_kwargs["id"])
        self.run_dir = self._call(self._local_run_dir)
        self._call(self._define_metrics, step_metric, summaries or {})

    # -- internals -----------------------------------------------------------------------------------------
    def _settings(self) -> Any:
        try:  # wandb's own WANDB_INIT_TIMEOUT is honoured; otherwise our short default
            init_timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT_S)
        except ValueError:
            init_timeout = INIT_TIMEOUT_S
        wanted = dict(
            init_timeout=init_timeout,
            console="off",  # no stdout/stderr capture threads
            silent=True,
            x_disable_stats=True,  # no system-metrics process (wandb-symon)
            x_disable_meta=True,  # no host/GPU/git metadata probing
            x_disable_machine_info=True,
            x_save_requirements=False,  # no pip freeze into files/requirements.txt
            disable_git=True,
            disable_code=True,
            save_code=False,
            disable_job_creation=True,
        )
        settings_cls = self._wandb.Settings
        known = getattr(settings_cls, "model_fields", None)
        if known is not None:  # keep only what this wandb version knows
            wanted = {k: v for k, v in wanted.items() if k in known}
        return settings_cls(**wanted)

    def _local_run_dir(self) -> Path:
        sync_dir = getattr(self._run.settings, "sync_dir", None)
        return Path(sync_dir) if sync_dir else Path(self._run.dir).parent

    def _define_metrics(self, step_metric: str, summaries: dict[str, str]) -> None:
        run = self._run
        run.define_metric(step_metric)
        run.define_metric("*", step_metric=step_metric)
        for key, spec in summaries.items():
            run.define_metric(key, step_metric=step_metric, summary=_summary_ops(spec))

    def _warn(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        warnings.warn(f"W&B: {message}", WandbWarning, stacklevel=3)

    def _call(self, fn: Any, *args: Any) -> Any:
        if self._run is None:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001
            what = getattr(fn, "__name__", "call").lstrip("_")
            self._warn("call", f"{what} failed ({_one_line(exc)}); carrying on (W&B data may be incomplete)")
            return None

    # -- public API ----------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while a live W&B run is behind this object."""
        return self._run is not None

    def log(self, row: dict[str, float]) -> None:
        """Log one history row; it should include the step metric (e.g. ``epoch``). Non-finite values are
        logged as they are (W&B records NaN/Infinity)."""
        if self._run is None:
            return
        if self.step_metric not in row:
            self._warn(
                "step", f"logged a row without the step metric {self.step_metric!r}; W&B reuses the last one"
            )

        def log_row() -> None:
            self._run.log(dict(row))

        self._call(log_row)

    def summary(self, values: dict) -> None:
        """Set run summary values (``run.summary.update``)."""

        def update_summary() -> None:
            self._run.summary.update(_json_friendly(dict(values)))

        self._call(update_summary)

    def log_table(self, key: str, df: pandas.DataFrame) -> None:
        """Log a data frame as a W&B table (a history row holding only ``key``; the step metric is filled in
        by W&B with its last value)."""

        def log_table() -> None:
            self._run.log({key: self._wandb.Table(dataframe=df)})

        self._call(log_table)

    def log_images(self, images: dict[str, Path]) -> None:
        """Log image files (one history row, ``wandb.Image(path)`` per key)."""
        if not images:
            return

        def log_images() -> None:
            self._run.log({k: self._wandb.Image(str(p)) for k, p in images.items()})

        self._call(log_images)

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run (idempotent)."""
        if self._finished:
            return
        self._finished = True

        def finish() -> None:
            self._run.finish(exit_code=exit_code)

        finished = self._run is not None
        self._call(finish)
        self._run = None
        if finished and self.mode == "offline" and self.run_dir is not None:
            self._wait_for_transaction_log()

    def _wait_for_transaction_log(self) -> None:
        """Wait (at most FINISH_WAIT_S) until W&B's service has written the run's transaction log out.

        ``run.finish()`` returns before wandb-core's writer has flushed and closed ``run-<id>.wandb`` (in
        offline mode the file often holds only its 7-byte header at that moment, the rest follows a few ms
        later), so without this a reader right after finish (the aggregate step, the tests) would see a
        truncated run. The log is complete once its last record is the run's exit record.
        """
        deadline = time.monotonic() + FINISH_WAIT_S
        last_size = -1
        delay = 0.002
        while True:
            try:
                log_file = _transaction_log(self.run_dir)
                size = log_file.stat().st_size if log_file is not None else -1
                if size != last_size and log_file is not None:
                    last_size = size
                    if _ends_with_exit_record(log_file):
                        return
            except Exception:  # noqa: BLE001 - keep waiting until the deadline
                pass
            if time.monotonic() >= deadline:
                self._warn(
                    "flush",
                    f"the run's transaction log in {self.run_dir} was not complete {FINISH_WAIT_S:g} s after "
                    "finish; carrying on (it may still be written)",
                )
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def __enter__(self) -> WandbRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=1 if exc_type is not None else 0)

    def __repr__(self) -> str:
        return f"WandbRun(mode={self.mode!r}, run_id={self.run_id!r}, run_dir={str(self.run_dir)!r})"


def shutdown() -> None:
    """Finish any unfinished runs and stop the W&B service process now (wandb also does this at exit)."""
    if "wandb" not in sys.modules:
        return
    try:
        sys.modules["wandb"].teardown()
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"W&B: teardown failed ({_one_line(exc)}); carrying on", WandbWarning, stacklevel=2)
    token = os.environ.get(SERVICE_ENV, "")
    if _token_pid(token) == os.getpid():  # our own service, stopped just now: its address must not outlive it
        os.environ.pop(SERVICE_ENV, None)


def _token_pid(token: str) -> int | None:
    """The pid of the process that started the service a WANDB_SERVICE value points to (``<version>-<pid>-...``)."""
    parts = token.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


def _forget_dead_service(exc: BaseException) -> None:
    """After a failed connection to W&B's service, drop the service address wandb keeps in WANDB_SERVICE.

    wandb writes the address into the environment when it starts its service and reads it back on every later
    start; ``wandb.teardown()`` stops the service but leaves the address, and so does a service that died or
    was killed, and a restored environment (a test's monkeypatch, a parent process's variables) can bring a
    stale one back. Every start then fails with ``WandbServiceConnectionError``; without the address, the next
    start launches a fresh service."""
    if type(exc).__name__ == "WandbServiceConnectionError" and os.environ.pop(SERVICE_ENV, None):
        log.info("W&B: dropped the address of an unreachable service (%s); the next start launches a new one",
                 _one_line(exc))


# ---------------------------------------------------------------------------------------------------------
# offline runs: finding, syncing, reading back
# ---------------------------------------------------------------------------------------------------------
def _transaction_log(run_dir: Path) -> Path | None:
    logs = sorted(Path(run_dir).glob("run-*.wandb")) or sorted(Path(run_dir).glob("*.wandb"))
    return logs[0] if logs else None


def find_offline_runs(wandb_dir: Path) -> list[Path]:
    """Every ``offline-run-*`` folder below ``wandb_dir`` (recursive, sorted) that holds a ``.wandb``
    transaction log (a folder without one has nothing to sync or read)."""
    found: list[Path] = []
    root = Path(wandb_dir)
    if not root.is_dir():
        return found
    for dirpath, dirnames, _ in os.walk(root):
        keep = []
        for d in dirnames:
            path = Path(dirpath) / d
            if d.startswith("offline-run-"):
                if not path.is_symlink() and _transaction_log(path) is not None:
                    found.append(path)
            else:
                keep.append(d)
        dirnames[:] = keep  # do not descend into run folders
    return sorted(found, key=lambda p: (p.name, str(p)))


def _wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "").strip() or "https://api.wandb.ai"


def _have_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY", "").strip() or os.environ.get("WANDB_IDENTITY_TOKEN_FILE", "").strip():
        return True
    base_url = _wandb_base_url()
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth

        return bool(read_netrc_auth(host=base_url))
    except Exception:  # noqa: BLE001 - private API may move; fall back to reading the netrc ourselves
        pass
    try:
        from urllib.parse import urlsplit

        path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
        creds = netrc.netrc(path).authenticators(urlsplit(base_url).netloc)
        return bool(creds and creds[2])
    except Exception:  # noqa: BLE001
        return False


def sync_offline_runs(wandb_dir: Path, *, dry_run: bool = False) -> list[Path]:
    """Upload every offline run below ``wandb_dir`` with ``wandb sync <folder>`` (one subprocess per run).

    ``dry_run`` only lists them. Raises a one-line RuntimeError when no W&B credentials are available
    (``WANDB_API_KEY`` or ``wandb login``), checked before anything is synced, or when some syncs failed.
    Returns the runs listed (dry run) or synced.
    """
    runs = find_offline_runs(wandb_dir)
    print(f"W&B: {len(runs)} offline run(s) under {wandb_dir}", flush=True)
    if dry_run or not runs:
        for run in runs:
            print(f"  {run}", flush=True)
        return runs
    if not _have_wandb_credentials():
        raise RuntimeError(
            f"cannot sync {len(runs)} offline W&B run(s): no W&B API key for {_wandb_base_url()} "
            "(set WANDB_API_KEY or run `wandb login` first)"
        )
    synced: list[Path] = []
    failed: list[Path] = []
    for i, run in enumerate(runs, 1):
        print(f"W&B: [{i}/{len(runs)}] wandb sync {run}", flush=True)
        result = subprocess.run([sys.executable, "-m", "wandb", "sync", str(run)], check=False)
        (synced if result.returncode == 0 else failed).append(run)
    print(f"W&B: synced {len(synced)} of {len(runs)} run(s)", flush=True)
    if failed:
        raise RuntimeError(
            f"wandb sync failed for {len(failed)} of {len(runs)} run(s), first: {failed[0]} "
            "(see the output above)"
        )
    return synced


# LevelDB-log framing of W&B transaction logs (as in wandb's former sdk/internal/datastore.py)
_HEADER = struct.Struct("<4sHB")  # ident b":W&B", magic 0xBEE1, version
_CHUNK = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _scan_records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        return []
    ident, _magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (header {ident!r})")
    records: list[bytes] = []
    pending: bytearray | None = None
    pos = _HEADER.size
    while pos + _CHUNK.size <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK.size:  # block trailer padding
            pos += left_in_block
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding / preallocated space
            pos += left_in_block
            continue
        start = pos + _CHUNK.size
        chunk = data[start : start + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            break  # truncated or corrupt tail (e.g. a crashed run): keep what was read
        pos = start + length
        if kind == _FULL:
            records.append(chunk)
            pending = None
        elif kind == _FIRST:
            pending = bytearray(chunk)
        elif kind == _MIDDLE and pending is not None:
            pending += chunk
        elif kind == _LAST and pending is not None:
            pending += chunk
            records.append(bytes(pending))
            pending = None
    return records


def _ends_with_exit_record(log_file: Path) -> bool:
    from wandb.proto import wandb_internal_pb2 as pb

    records = _scan_records(log_file)
    if not records:
        return False
    record = pb.Record()
    record.ParseFromString(records[-1])
    return record.WhichOneof("record_type") == "exit"


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def _loads(value_json: str) -> Any:
    try:
        return json.loads(value_json)
    except ValueError:
        return value_json


def _set_path(target: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[path[-1]] = value


def _del_path(target: dict, path: list[str]) -> None:
    for part in path[:-1]:
        target = target.get(part)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """Everything an offline run recorded, read from its ``.wandb`` transaction log.

    Returns ``{"run": {id, project, entity, name, group, job_type, tags, notes}, "config": {...},
    "summary": {...}, "history": [rows], "metrics": [define_metric records as dicts], "exit_code": int|None}``.
    Config/summary are nested dicts (W&B's internal ``_wandb`` config key is dropped); history rows are flat
    dicts (nested keys joined with '.'), ``_step`` included. ``run_dir`` may also be the ``.wandb`` file.
    """
    from google.protobuf.json_format import MessageToDict
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    log_file = run_dir if run_dir.is_file() else _transaction_log(run_dir)
    if log_file is None:
        raise FileNotFoundError(f"no .wandb transaction log in {run_dir}")

    out: dict[str, Any] = {
        "run": {},
        "config": {},
        "summary": {},
        "history": [],
        "metrics": [],
        "exit_code": None,
    }
    for raw in _scan_records(log_file):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out["run"] = {
                "id": r.run_id,
                "project": r.project,
                "entity": r.entity,
                "name": r.display_name,
                "group": r.run_group,
                "job_type": r.job_type,
                "tags": list(r.tags),
                "notes": r.notes,
            }
            for item in r.config.update:
                _set_path(out["config"], _item_path(item), _loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _set_path(out["config"], _item_path(item), _loads(item.value_json))
            for item in record.config.remove:
                _del_path(out["config"], _item_path(item))
        elif kind == "summary":
            for item in record.summary.update:
                _set_path(out["summary"], _item_path(item), _loads(item.value_json))
            for item in record.summary.remove:
                _del_path(out["summary"], _item_path(item))
        elif kind == "history":
            row = {".".join(_item_path(item)): _loads(item.value_json) for item in record.history.item}
            row.setdefault("_step", int(record.history.step.num))
            out["history"].append(row)
        elif kind == "metric":
            out["metrics"].append(MessageToDict(record.metric, preserving_proto_field_name=True))
        elif kind == "exit":
            out["exit_code"] = int(record.exit.exit_code)
    out["config"].pop("_wandb", None)
    return out


def read_offline_history(run_dir: Path) -> list[dict]:
    """The history rows an offline run logged (dicts key -> value, ``_step``/``_runtime``/``_timestamp``
    included; NaN/inf come back as float nan/inf), read from the run folder's ``.wandb`` transaction log."""
    return read_offline_run(run_dir)["history"]
