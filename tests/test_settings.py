"""Settings checked across fields when a function starts: a segment that is not a whole
number of GOPs, timeouts out of order, a duration that is not one, each stop the start with
one readable line instead of failing (and retrying) every job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localfaas.build import assemble_context
from tests.ports import free_port
from tests.test_template import TEMPLATE
from vtp.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("VTP_") or key in ("exec_timeout", "write_timeout"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("VTP_SECRETS_DIR", str(tmp_path / "no-secrets"))


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"segment_seconds": 5, "gop_seconds": 2}, "whole multiple of gop_seconds (2)"),
        ({"chunk_seconds": 50}, "chunk_seconds (50) must be a whole multiple of segment_seconds"),
        ({"chunk_seconds": 2}, "chunk_seconds (2) must be a whole multiple of segment_seconds"),
        ({"segment_seconds": 4, "gop_seconds": 0}, "must be positive"),
        ({"retry_base_seconds": 60, "retry_max_seconds": 30}, "retry_max_seconds (30) is below"),
        ({"callback_retry_base_seconds": 9, "callback_retry_max_seconds": 3},
         "callback_retry_max_seconds (3) is below"),
        ({"exec_timeout": "an hour"}, "exec_timeout 'an hour' is not a duration"),
        ({"exec_timeout": "1h", "write_timeout": "30m"},
         "exec_timeout (3600s) must be at most write_timeout (1800s)"),
        ({"exec_timeout": "1h", "gateway_upstream_timeout": "59m"}, "the gateway gives up"),
        ({"exec_timeout": "1h", "queue_ack_wait": "1h"}, "must be below queue_ack_wait"),
        ({"gateway_upstream_timeout": "2h", "queue_ack_wait": "90m"},
         "gateway_upstream_timeout (7200s) must be below queue_ack_wait (5400s)"),
        ({"reconcile_grace_seconds": 600, "reconcile_window_seconds": 300},
         "reconcile_window_seconds must exceed"),
        # A live attempt must be able to refute a forged death report with its next beat,
        # and must not be written off as silent between two beats.
        ({"heartbeat_seconds": 10, "death_confirm_seconds": 11},
         "death_confirm_seconds (11) must exceed heartbeat_seconds (10) by at least 2s"),
        ({"heartbeat_seconds": 1, "death_confirm_seconds": 2.5},
         "death_confirm_seconds (2.5) must exceed heartbeat_seconds (1)"),
        ({"heartbeat_seconds": 60}, "stale_after_seconds (120) must be at least three heartbeats"),
        # Private outputs in the public-read bucket would not be private; a private output
        # as a source would be published again.
        ({"private_outputs_bucket": "outputs"}, "must differ from outputs_bucket"),
        ({"input_buckets": ["uploads", "outputs-private"]},
         "private_outputs_bucket cannot be an input bucket"),
    ],
)  # fmt: skip
def test_inconsistent_settings_are_refused(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match="validation error") as caught:
        Settings(**fields)  # type: ignore[arg-type]
    assert words in str(caught.value)


def test_consistent_settings_pass() -> None:
    s = Settings(
        segment_seconds=6, gop_seconds=2, exec_timeout="1h", write_timeout="1h",
        gateway_upstream_timeout="65m", queue_ack_wait="70m", reconcile_window_seconds=0,
    )  # fmt: skip
    assert s.exec_timeout_seconds == 3600
    assert Settings(exec_timeout="0", write_timeout="30s").exec_timeout_seconds is None
    # The test stack's windows: the same rules at a tenth of production's.
    fast = Settings(heartbeat_seconds=1, death_confirm_seconds=4, stale_after_seconds=10)
    assert (fast.heartbeat_seconds, fast.death_confirm_seconds) == (1, 4)


def test_a_function_with_bad_settings_does_not_start(tmp_path: Path) -> None:
    """status under its template (index.py, as OpenFaaS runs it): it exits at once, and its
    log says why in one line, instead of answering every call with the same error."""
    context = assemble_context(
        TEMPLATE, REPO / "functions" / "status", [Path("./vtp")], tmp_path / "build", scope=REPO
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "UPSTREAM_PORT": str(free_port()),
        "VTP_SECRETS_DIR": str(tmp_path / "no-secrets"),
        "VTP_SEGMENT_SECONDS": "5",
        "exec_timeout": "10m",
        "write_timeout": "1m",
    }
    done = subprocess.run(
        [sys.executable, "index.py"], cwd=context, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "invalid settings" in line]
    assert len(lines) == 1, done.stderr[-2000:]
    assert "whole multiple of gop_seconds" in lines[0]
    assert "exec_timeout (600s) must be at most write_timeout (60s)" in lines[0]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
