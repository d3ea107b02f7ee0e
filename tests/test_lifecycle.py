"""`localfaas up` twice in a row changes nothing; `down` leaves nothing running.

A stack of its own (its own run dir and ports) so the session stack is not disturbed; run
through the same CLI `make up` and `make down` use.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localfaas.config import REPO_ROOT
from tests.api import http
from tests.ports import free_port, free_port_base

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def mini_env(test_slot: int) -> Iterator[dict[str, str]]:
    # Under the repo, not tmp_path: PostgreSQL runs as its own user and must reach its data.
    run_dir = REPO_ROOT / ".run" / f"test-lifecycle-{test_slot}"
    shutil.rmtree(run_dir, ignore_errors=True)
    store = run_dir / "secret-store"
    store.mkdir(parents=True)
    (store / "fixture-secret").write_text("mini")
    env = dict(os.environ)
    env.update(
        {
            "LOCALFAAS_RUN_DIR": str(run_dir),
            "LOCALFAAS_STACK_FILE": str(FIXTURES / "mini-stack.yml"),
            "LOCALFAAS_PORT_BASE": str(free_port_base()),
            "LOCALFAAS_GATEWAY_PORT": str(free_port()),
        }
    )
    yield env
    subprocess.run([sys.executable, "-m", "localfaas", "down"], env=env, check=False)
    shutil.rmtree(run_dir, ignore_errors=True)


def _localfaas(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localfaas", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _pids(run_dir: Path) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in (run_dir / "state").glob("*.json")}


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_up_twice_then_down(mini_env: dict[str, str]) -> None:
    run_dir = Path(mini_env["LOCALFAAS_RUN_DIR"])
    base = int(mini_env["LOCALFAAS_PORT_BASE"])
    gateway = int(mini_env["LOCALFAAS_GATEWAY_PORT"])
    first = _localfaas(mini_env, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    pids = _pids(run_dir)
    assert {"postgres", "redis", "nats", "s3", "gateway", "queue-worker-0", "fn-echo"} <= set(pids)
    r = http.post(f"http://127.0.0.1:{gateway}/function/echo", data=b"hi", timeout=10)
    assert r.status_code == 200 and r.json()["greeting"] == "hello from the mini stack"

    second = _localfaas(mini_env, "up")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _pids(run_dir) == pids, "a second `up` must leave the running stack alone"

    status = _localfaas(mini_env, "status")
    assert status.returncode == 0
    assert "fn-echo" in status.stdout

    down = _localfaas(mini_env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for name in ("gateway", "queue-worker-0", "fn-echo", "postgres", "redis", "nats", "s3"):
        assert name in down.stdout, f"down does not say it stopped {name}: {down.stdout}"
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"{name} ({pid}) still runs"
    for port in (gateway, base, base + 1, base + 2, base + 3, base + 4, base + 20):
        assert not _port_open(port), f"port {port} still open after down"
    # Nothing else started from this run dir survives (children of the services included).
    leftovers = subprocess.run(
        ["pgrep", "-f", str(run_dir)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == []
    after = _localfaas(mini_env, "status")
    assert after.returncode != 0 or "nothing" in after.stdout

    clean = _localfaas(mini_env, "clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not run_dir.exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except (OSError, IndexError):
        return True
