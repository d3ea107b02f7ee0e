"""Detached processes with a pid file and a log each: the local stack's process table.

Each component runs in its own session (process group), so stopping it also stops
whatever it spawned (ffmpeg under a function, postgres's backends...).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from localfaas.config import LocalConfig

log = logging.getLogger(__name__)


@dataclass
class ProcRecord:
    name: str
    pid: int
    argv: list[str]
    log: str
    port: int | None = None
    url: str | None = None


def _record_path(cfg: LocalConfig, name: str) -> Path:
    return cfg.state_dir / f"{name}.json"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with Path(f"/proc/{pid}/stat").open() as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def load(cfg: LocalConfig, name: str) -> ProcRecord | None:
    path = _record_path(cfg, name)
    if not path.exists():
        return None
    return ProcRecord(**json.loads(path.read_text()))


def records(cfg: LocalConfig) -> list[ProcRecord]:
    if not cfg.state_dir.exists():
        return []
    return [ProcRecord(**json.loads(p.read_text())) for p in sorted(cfg.state_dir.glob("*.json"))]


def running(cfg: LocalConfig, name: str) -> ProcRecord | None:
    rec = load(cfg, name)
    return rec if rec and pid_alive(rec.pid) else None


def start(
    cfg: LocalConfig,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
    url: str | None = None,
    user: str | None = None,
) -> ProcRecord:
    """Start `argv` detached, output appended to logs/<name>.log, and record it."""
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = cfg.logs_dir / f"{name}.log"
    full_env = dict(os.environ if env is None else env)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=full_env,
            start_new_session=True,  # own process group: `down` kills the whole tree
            user=user,
        )
    rec = ProcRecord(
        name=name, pid=proc.pid, argv=list(argv), log=str(log_path), port=port, url=url
    )
    _record_path(cfg, name).write_text(json.dumps(asdict(rec)))
    log.debug("started %s pid=%s: %s", name, proc.pid, " ".join(argv))
    return rec


def stop(cfg: LocalConfig, name: str, timeout: float = 10.0) -> bool:
    """Stop a recorded process group: SIGTERM, then SIGKILL after `timeout`. True if it ran."""
    return bool(stop_all(cfg, [name], timeout))


def stop_all(cfg: LocalConfig, names: Sequence[str], timeout: float = 10.0) -> list[str]:
    """Stop several recorded process groups at once: SIGTERM to all, then SIGKILL to what is
    left after `timeout`, so replicas that each take a moment to wind down (a transcode
    recording its interruption) take that moment together, not one after another. Returns
    the names that were running."""
    recs = [rec for name in names if (rec := load(cfg, name)) is not None]
    running = [rec for rec in recs if pid_alive(rec.pid)]
    for rec in running:
        _signal_group(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(rec.pid) for rec in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for rec in running:
        # Kill the group whether or not the leader is gone: children may outlive it.
        _signal_group(rec.pid, signal.SIGKILL)
    for rec in recs:
        _record_path(cfg, rec.name).unlink(missing_ok=True)
    return [rec.name for rec in running]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("no permission to signal process group %s", pid)
