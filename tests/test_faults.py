"""Faults while the pipeline works, against the real services: an event that never came, a
callback receiver that is down, PostgreSQL restarted under running encodes. Each must end
recorded: the job done, or failed with its reason; nothing silently dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from minio import Minio

from localfaas import services
from localfaas.config import LocalConfig
from tests.api import http
from tests.clips import make_clip
from tests.manual import submit
from tests.receiver import Receiver
from tests.s3 import s3_client

BUCKET = "manual-sources"  # an input bucket of the test stack, with no notification rule


@pytest.fixture(scope="module")
def s3(stack: LocalConfig) -> Minio:
    return s3_client(stack, BUCKET)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("faults") / "clip.mp4", size="640x360", seconds=2)


def status(gateway: str, **params: str) -> dict[str, Any] | None:
    """The status function's answer, or None while it cannot answer (a dependency down)."""
    try:
        r = http.get(f"{gateway}/function/status", params=params, timeout=10)
    except requests.RequestException:
        return None
    return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]


def until(what: str, check: Any, timeout: float, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def sweep(gateway: str) -> dict[str, int]:
    r = http.post(f"{gateway}/function/sweeper", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.slow
def test_an_object_whose_event_never_came_gets_its_job(gateway: str, s3: Minio, clip: Path) -> None:
    """An upload whose event was lost (split down when an old MinIO sent it, the async
    route's single call lost): the sweeper's reconciliation finds the object without a job
    and submits it, once its grace period has passed (2 s in the test stack)."""
    key = f"lost-event/{uuid.uuid4().hex}.mp4"
    s3.fput_object(BUCKET, key, str(clip))  # this bucket sends no events at all
    # Younger than the grace period (2 s): no job yet, and none is made for it.
    assert (status(gateway, bucket=BUCKET, key=key) or {}).get("jobs") == []
    time.sleep(2.5)
    sweep(gateway)  # (the cron sweeper may have been first: either way it gets one job)

    def finished() -> dict[str, Any] | None:
        jobs = (status(gateway, bucket=BUCKET, key=key) or {}).get("jobs") or []
        return jobs[0] if jobs and jobs[0]["state"] in ("succeeded", "failed") else None

    job = until("the reconciled job ended", finished, 90)
    assert job["state"] == "succeeded", job
    time.sleep(1.5)
    sweep(gateway)  # reconciling once more submits nothing for it: it has its job now
    jobs = (status(gateway, bucket=BUCKET, key=key) or {})["jobs"]
    assert len(jobs) == 1, "the object was submitted once"


@pytest.mark.slow
def test_a_job_callback_survives_a_receiver_outage(
    gateway: str, s3: Minio, clip: Path, stack: LocalConfig
) -> None:
    """Three tries within five seconds, then 'failed' forever, was the old way. Now the
    sweeper tries again with back-off until the receiver is back; and it can be sent again by
    hand (`vtp callbacks redeliver`)."""
    key = f"callback-outage/{uuid.uuid4().hex}.mp4"
    s3.fput_object(BUCKET, key, str(clip))
    with Receiver(status=503) as rx:
        job_id = submit(gateway, BUCKET, key, ["360p"], callback_url=rx.url)
        first = rx.get(timeout=90)  # the job ended: the first try, refused
        for _ in range(2):  # the receiver stays down through two more tries
            time.sleep(2.5)  # the back-off: 1 s, then 2 s (the test stack's cap)
            sweep(gateway)
            rx.get(timeout=30)
        view = status(gateway, id=job_id) or {}
        assert view["callback"]["status"] == "pending", view["callback"]
        assert view["callback"]["attempts"] >= 3 and "503" in view["callback"]["error"]
        rx.status = 200  # the receiver is back
        time.sleep(2.5)
        sweep(gateway)
        delivered = rx.get(timeout=30)

        def recorded() -> bool:
            view = status(gateway, id=job_id) or {"callback": {}}
            return bool(view["callback"].get("status") == "delivered")

        until("the callback recorded as delivered", recorded, 20)
        deliveries = {first.headers["X-VTP-Delivery"], delivered.headers["X-VTP-Delivery"]}
        assert deliveries == {job_id}, "one delivery id: receivers can drop duplicates"
        secret = stack.credentials["callback_secret"].encode()
        signature = "sha256=" + hmac.new(secret, delivered.body, hashlib.sha256).hexdigest()
        assert delivered.headers["X-VTP-Signature"] == signature
        payload = json.loads(delivered.body)
        assert payload["state"] == "succeeded"
        # Each rendition with the fields of its kind: the sound's channels, no null size.
        sound = {r["name"]: r for r in payload["renditions"]}["audio"]
        assert (sound["kind"], sound["codec"], sound["channels"]) == ("audio", "aac", 2)
        assert "width" not in sound and "crf" not in sound, sound

        env = {k: v for k, v in os.environ.items() if not k.startswith("VTP_")}
        again = subprocess.run(
            [sys.executable, "-m", "vtp_cli", "callbacks", "redeliver", job_id[:8],
             "--env-file", str(stack.stack_env_file)],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        assert "delivered" in again.stdout
        assert rx.get(timeout=30).headers["X-VTP-Delivery"] == job_id


@pytest.mark.slow
def test_a_database_restart_does_not_kill_running_encodes(
    gateway: str, s3: Minio, stack: LocalConfig, tmp_path: Path
) -> None:
    """PostgreSQL down for 3 s under an encode (three heartbeats in the test stack): the
    heartbeats fail, the encode goes on, and its outcome is recorded once the database is
    back. No attempt is lost or written off."""
    long_clip = make_clip(tmp_path / "long.mp4", size="1280x720", seconds=12, audio=False)
    key = f"db-restart/{uuid.uuid4().hex}.mp4"
    s3.fput_object(BUCKET, key, str(long_clip))
    job_id = submit(gateway, BUCKET, key, ["720p"])

    def encoding() -> bool:
        view = status(gateway, id=job_id) or {"renditions": [{}]}
        rend = view["renditions"][0]
        return rend.get("state") == "running" and (rend.get("progress") or {}).get("percent", 0) > 5

    until("the encode is under way", encoding, 60, every=0.1)
    services.stop_services(stack, only=["postgres"])
    try:
        time.sleep(3)
    finally:
        services.start_services(stack, only=["postgres"])
    view = until(
        "the job ended",
        lambda: (v := status(gateway, id=job_id)) and v["state"] in ("succeeded", "failed") and v,
        180,
    )
    assert view["state"] == "succeeded", view
    assert view["renditions"][0]["attempts"] == 1, "the encode was not written off"
    # It did beat into the outage: the heartbeats failed and the encode went on.
    logged = (stack.logs_dir / "fn-transcode-720p.log").read_text(errors="replace")
    missed = [line for line in logged.splitlines() if job_id in line and "not recorded" in line]
    assert missed, "no heartbeat fell into the outage"
