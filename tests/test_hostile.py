"""Hostile and hopeless input against the real stack: every source that cannot be processed
ends as a recorded failure with its reason (bucket events) or a clear 400 (manual jobs), never
a crash, a hang, a job without a trace, or a private bucket published.

Each case is what an attacker or an unlucky uploader sent: a manual job for a private bucket,
keys with NUL or `..`, JSON nested 100 000 deep, 50 000 rendition names, a 1x1 video.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
import requests
from minio import Minio

from localfaas.config import LocalConfig
from tests.api import http
from tests.s3 import s3_client
from vtp.callbacks import check_destination
from vtp.errors import InvalidRequest


@pytest.fixture(scope="module")
def s3(stack: LocalConfig) -> Minio:
    return s3_client(stack, "private-data")


def split(gateway: str, body: Any, **kw: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(f"{gateway}/function/split", data=data, timeout=60, **kw)


def event(bucket: str, key: str, etag: str = "0123456789abcdef") -> dict[str, Any]:
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {"key": quote(key, safe=""), "eTag": etag, "size": 10},
                },
            }
        ],
    }


def jobs_with_key(postgres_dsn: str, key: str) -> list[tuple[str, str]]:
    with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT state, error FROM jobs WHERE source_key = %s", (key,))
        rows = cur.fetchall()
    conn.close()
    return [(str(a), str(b)) for a, b in rows]


def test_manual_job_for_a_private_bucket_is_refused(
    gateway: str, s3: Minio, tmp_path: Path, postgres_dsn: str, auth: dict[str, str]
) -> None:
    """Outputs are public-read: a job for another bucket's object would publish it."""
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"pretend this is someone's private recording")
    key = f"hostile/{uuid.uuid4().hex}.mp4"
    s3.fput_object("private-data", key, str(secret))
    r = split(gateway, {"bucket": "private-data", "key": key})
    assert r.status_code == 400, r.text
    assert "not an input bucket" in r.json()["error"]
    assert jobs_with_key(postgres_dsn, key) == []
    # A bucket event for it is acknowledged and ignored, not processed.
    r = split(gateway, event("private-data", key), headers=auth)
    assert r.status_code == 200 and r.json()["jobs"] == [], r.text
    assert "not an input bucket" in r.json()["ignored"][0]


@pytest.fixture(scope="module")
def auth(stack: LocalConfig) -> dict[str, str]:
    """What MinIO sends with its events: the stack's webhook token."""
    return {"Authorization": f"Bearer {stack.credentials['webhook_token']}"}


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("clips/a\x00b.mp4", "NUL"),
        ("clips/../private/b.mp4", "'..' segment"),
        ("clips/bell\x07.mp4", "control characters"),
        ("k" * 1100 + ".mp4", "1024"),
    ],
    ids=["nul", "dotdot", "control", "too-long"],
)
def test_keys_that_cannot_be_processed(
    gateway: str, postgres_dsn: str, auth: dict[str, str], key: str, words: str
) -> None:
    r = split(gateway, {"bucket": "uploads", "key": key})
    assert r.status_code == 400 and words in r.json()["error"], r.text
    # The same key in a bucket event: a failed job with the reason, never a 500 or no trace.
    r = split(gateway, event("uploads", key), headers=auth)
    assert r.status_code == 200, r.text
    (job,) = r.json()["jobs"]
    assert job["state"] == "failed" and words in job["error"], job
    stored = job["source"]["key"]
    assert "\x00" not in stored and jobs_with_key(postgres_dsn, stored)[0][0] == "failed"
    again = split(gateway, event("uploads", key), headers=auth)
    assert again.json()["jobs"][0]["job_id"] == job["job_id"], "one job per object version"


def test_bodies_that_would_cost_too_much_are_400(gateway: str) -> None:
    t0 = time.monotonic()
    r = split(gateway, b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 400 and "nested deeper" in r.json()["error"], r.text
    r = split(gateway, b'{"bucket": "uploads", "key": "' + b"k" * 300_000 + b'"}')
    assert r.status_code == 400 and "larger than" in r.json()["error"], r.text
    names = [f"r{i}" for i in range(50_000)]
    r = split(gateway, {"bucket": "uploads", "key": "a.mp4", "renditions": names})
    assert r.status_code in (400, 413), r.text
    assert len(r.content) < 2000, f"{len(r.content)} bytes of error"
    r = split(gateway, {"bucket": "uploads", "key": "a.mp4", "renditions": ["x" * 5000]})
    assert r.status_code == 400 and len(r.content) < 2000, r.text
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("size", ["1x1", "2x2"])
def test_a_tiny_video_fails_at_once_with_its_reason(
    gateway: str, stack: LocalConfig, tmp_path: Path, size: str
) -> None:
    """The ladder has no rung for it: a failed job saying why, not an event that vanished
    (1x1 planned nothing and raised before anything was recorded) nor three attempts (2x2)."""
    clip = tmp_path / f"tiny-{size}.mp4"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=16x16:rate=25:duration=1", "-vf", f"scale={size.replace('x', ':')}",
         "-c:v", "libx264", "-pix_fmt", "yuv444p", str(clip)],
        check=True,
    )  # fmt: skip
    key = f"hostile/{uuid.uuid4().hex}-{size}.mp4"
    s3_client(stack).fput_object("uploads", key, str(clip))
    deadline = time.monotonic() + 60
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not jobs:
        jobs = http.get(
            f"{gateway}/function/status", params={"bucket": "uploads", "key": key}, timeout=10
        ).json()["jobs"]
        time.sleep(0.3)
    assert jobs, "the upload left no job"
    (job,) = jobs
    assert job["state"] == "failed" and "too small" in job["error"], job
    assert job["renditions"] == []


@pytest.mark.parametrize(
    "host",
    ["[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::ffff:127.0.0.1]", "[64:ff9b::a00:1]", "127.0.0.1"],
    ids=["nat64-loopback", "6to4-loopback", "v4-mapped", "nat64-private", "loopback"],
)
def test_callbacks_into_the_cluster_are_refused_whatever_the_disguise(host: str) -> None:
    with pytest.raises(InvalidRequest, match="non-public"):
        check_destination(f"http://{host}/hook", allow_private=False)


def test_a_callback_url_from_a_log_speaks_of_its_own_call_only(
    gateway: str, stack: LocalConfig, s3: Minio, tmp_path: Path, postgres_dsn: str
) -> None:
    """The CE components log every callback URL. Replayed, one may report only on the call
    it was made for: a report for another call is refused, and one for a call that ended
    changes nothing. The local runtime's own logs keep the signatures out."""
    import hashlib
    import hmac as hmac_

    from tests.clips import make_clip

    clip = make_clip(tmp_path / "c.mp4", size="640x360", seconds=1)
    key = f"replay/{uuid.uuid4().hex}.mp4"
    s3_client(stack, "manual-sources").fput_object("manual-sources", key, str(clip))
    r = split(gateway, {"bucket": "manual-sources", "key": key, "renditions": ["360p"]})
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        view = http.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10).json()
        if view["state"] == "succeeded":
            break
        time.sleep(0.3)
    with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT dispatch_call_id FROM tasks WHERE job_id = %s", (job_id,))
        (call,) = cur.fetchone()
    conn.close()
    secret = stack.credentials["callback_secret"].encode()

    def signed(call_id: str) -> dict[str, str]:
        msg = f"rendition-callback:{job_id}:360p:{call_id}".encode()
        sig = hmac_.new(secret, msg, hashlib.sha256).hexdigest()
        return {"job": job_id, "rendition": "360p", "call": call_id, "sig": sig}

    url = f"{gateway}/function/split/callback"
    failed = {"X-Function-Status": "500"}
    r = http.post(url, params=signed(call), headers=failed | {"X-Call-Id": call}, timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text  # nothing moved
    r = http.post(url, params=signed(call), headers=failed | {"X-Call-Id": "other"}, timeout=10)
    assert r.status_code == 401, r.text
    forged = signed(call) | {"call": "another-call"}  # the signature of the first call
    r = http.post(url, params=forged, headers=failed, timeout=10)
    assert r.status_code == 401, r.text
    for log in ("gateway.log", "queue-worker-0.log", "queue-worker-1.log", "queue-worker-2.log"):
        text = (stack.logs_dir / log).read_text(errors="replace")
        assert signed(call)["sig"] not in text, f"{log} holds a callback signature"
