"""The local stack's backing services and the MinIO-style webhook notifier, for real.

Servers run on free ports (tests.ports) under temporary run dirs and are stopped in
`finally`; the webhook receiver is a tiny HTTP server in this process.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import nats
import psycopg2
import pytest
import redis
import requests
from minio import Minio
from minio.error import S3Error

from localfaas import procs, services
from localfaas.config import REPO_ROOT, LocalConfig
from tests.api import http
from tests.ports import free_port_base

MiB = 1024 * 1024


# --- a webhook receiver -----------------------------------------------------------------------


@dataclass
class Hit:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    hits: list[Hit] = field(default_factory=list)
    # Key (bucket/key) -> how many more times to answer 503 before 200.
    fail: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def for_key(self, key: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.body.get("Key") == key]


def start_receiver() -> Receiver:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.loads(raw)
            with receiver.lock:
                left = receiver.fail.get(body.get("Key"), 0)
                status = 503 if left > 0 else 200
                if left > 0:
                    receiver.fail[body["Key"]] = left - 1
                receiver.hits.append(
                    Hit(time.monotonic(), self.path, dict(self.headers.items()), body, status)
                )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def make_run_dir(prefix: str) -> Path:
    # Under /tmp with o+x: as root, postgres runs as the `postgres` user and must reach it
    # (pytest's own tmp dirs are 0700).
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o711)
    return d


# --- s3 + notifier ----------------------------------------------------------------------------


@dataclass
class S3Stack:
    cfg: LocalConfig
    receiver: Receiver
    client: Minio


def minio_client(cfg: LocalConfig) -> Minio:
    c = cfg.credentials
    return Minio(
        f"127.0.0.1:{cfg.s3_port}",
        access_key=c["s3_access_key"],
        secret_key=c["s3_secret_key"],
        secure=False,
        region=services.S3_REGION,
    )


@pytest.fixture(scope="module")
def s3_stack() -> Iterator[S3Stack]:
    run_dir = make_run_dir("vtp-test-s3-")
    receiver = start_receiver()
    base = free_port_base()
    settings = {
        "LOCALFAAS_RUN_DIR": str(run_dir),
        "LOCALFAAS_PORT_BASE": str(base),
        "LOCALFAAS_NOTIFY_ENDPOINT": receiver.url,
    }
    cfg = LocalConfig(run_dir=run_dir, port_base=base, notify_endpoint=receiver.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALFAAS_")} | settings
    env["PYTHONUNBUFFERED"] = "1"
    try:
        services.start_services(cfg, only=["s3"])
        procs.start(
            cfg, "notifier", [sys.executable, "-m", "localfaas.notifier"], env=env, cwd=REPO_ROOT
        )
        time.sleep(0.5)
        assert procs.running(cfg, "notifier"), Path(cfg.logs_dir / "notifier.log").read_text()
        yield S3Stack(cfg, receiver, minio_client(cfg))
    finally:
        procs.stop(cfg, "notifier")
        services.stop_services(cfg)
        receiver.server.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)


def put(
    stack: S3Stack,
    key: str,
    data: bytes,
    *,
    content_type: str = "application/octet-stream",
    metadata: dict[str, str | list[str] | tuple[str]] | None = None,
    part_size: int = 0,
) -> str:
    res = stack.client.put_object(
        bucket_name=stack.cfg.uploads_bucket,
        object_name=key,
        data=io.BytesIO(data),
        length=len(data),
        content_type=content_type,
        metadata=metadata,
        part_size=part_size,
    )
    return str(res.etag)


def test_s3_buckets_exist(s3_stack: S3Stack):
    names = {b.name for b in s3_stack.client.list_buckets()}
    assert {s3_stack.cfg.uploads_bucket, s3_stack.cfg.outputs_bucket} <= names


def test_put_event_is_minio_webhook(s3_stack: S3Stack):
    key = "dir/my clip é.mp4"
    etag = put(s3_stack, key, b"v" * 1000, content_type="video/mp4", metadata={"title": "Hello"})
    full = f"{s3_stack.cfg.uploads_bucket}/{key}"
    hits = wait_for(lambda: s3_stack.receiver.for_key(full), what="the Put event")
    time.sleep(0.5)
    hits = s3_stack.receiver.for_key(full)
    assert len(hits) == 1, [h.body["EventName"] for h in hits]
    hit = hits[0]

    assert hit.path == "/hook"
    token = s3_stack.cfg.credentials["webhook_token"]
    assert hit.headers["Authorization"] == f"Bearer {token}"
    assert hit.headers["Content-Type"] == "application/json"

    body = hit.body
    assert list(body) == ["EventName", "Key", "Records"]
    assert body["EventName"] == "s3:ObjectCreated:Put"
    assert body["Key"] == full
    assert len(body["Records"]) == 1
    rec = body["Records"][0]
    assert rec["eventVersion"] == "2.0"
    assert rec["eventSource"] == "minio:s3"
    assert rec["eventName"] == "s3:ObjectCreated:Put"
    assert rec["userIdentity"] == {"principalId": s3_stack.cfg.credentials["s3_access_key"]}
    assert rec["source"] == {"host": "127.0.0.1", "port": "", "userAgent": ""}
    assert rec["s3"]["bucket"] == {
        "name": s3_stack.cfg.uploads_bucket,
        "ownerIdentity": {"principalId": s3_stack.cfg.credentials["s3_access_key"]},
        "arn": f"arn:aws:s3:::{s3_stack.cfg.uploads_bucket}",
    }
    obj = rec["s3"]["object"]
    assert obj["key"] == "dir%2Fmy+clip+%C3%A9.mp4"
    assert unquote_plus(obj["key"]) == key
    assert obj["size"] == 1000
    assert obj["eTag"] == etag
    assert obj["contentType"] == "video/mp4"
    assert obj["userMetadata"] == {"content-type": "video/mp4", "X-Amz-Meta-Title": "Hello"}
    assert int(obj["sequencer"], 16) > 0
    assert rec["responseElements"]["x-minio-origin-endpoint"] == s3_stack.cfg.s3_endpoint


def test_multipart_upload_is_one_complete_event(s3_stack: S3Stack):
    key = "nested/deeper/big one.mp4"
    data = os.urandom(11 * MiB)
    etag = put(s3_stack, key, data, part_size=5 * MiB, content_type="video/mp4")
    assert etag.endswith("-3")
    # Events are delivered in order: once a later object's event arrived, all are in.
    sentinel = "sentinel-after-multipart.txt"
    put(s3_stack, sentinel, b"s")
    bucket = s3_stack.cfg.uploads_bucket
    wait_for(lambda: s3_stack.receiver.for_key(f"{bucket}/{sentinel}"), what="the sentinel")

    hits = s3_stack.receiver.for_key(f"{bucket}/{key}")
    assert [h.body["EventName"] for h in hits] == ["s3:ObjectCreated:CompleteMultipartUpload"]
    obj = hits[0].body["Records"][0]["s3"]["object"]
    assert obj["eTag"] == etag
    assert obj["size"] == len(data)
    assert unquote_plus(obj["key"]) == key
    assert obj["key"] == "nested%2Fdeeper%2Fbig+one.mp4"


def test_form_post_is_checked_like_minio_and_makes_a_post_event(s3_stack: S3Stack):
    """A browser-form upload (POST policy): one outside the policy is refused by the server
    itself with MinIO's code and leaves nothing (moto alone stores it); one within is stored
    and reported as MinIO reports a POST, `s3:ObjectCreated:Post`, with the type the form
    named. A page on another origin can read both answers."""
    from datetime import UTC, datetime, timedelta

    from minio.datatypes import PostPolicy

    bucket = s3_stack.cfg.uploads_bucket
    key = "form/clip.mp4"
    policy = PostPolicy(bucket, datetime.now(UTC) + timedelta(minutes=5))
    policy.add_equals_condition("key", key)
    policy.add_equals_condition("Content-Type", "video/mp4")
    policy.add_content_length_range_condition(1, 100)
    fields = {"key": key, "Content-Type": "video/mp4"}
    fields |= s3_stack.client.presigned_post_policy(policy)
    url = f"{s3_stack.cfg.s3_endpoint}/{bucket}"

    def post(body: bytes) -> requests.Response:
        return requests.post(
            url,
            data=fields,
            files={"file": ("clip.mp4", body, "video/mp4")},
            headers={"Origin": "http://localhost:3000"},
            timeout=10,
        )

    over = post(b"v" * 101)
    assert over.status_code == 400 and "<Code>EntityTooLarge</Code>" in over.text, over.text
    assert over.headers.get("Access-Control-Allow-Origin") == "http://localhost:3000"
    with pytest.raises(S3Error):
        s3_stack.client.stat_object(bucket, key)
    done = post(b"v" * 100)
    assert done.status_code == 204, done.text
    assert done.headers.get("Access-Control-Allow-Origin") == "http://localhost:3000"
    hits = wait_for(lambda: s3_stack.receiver.for_key(f"{bucket}/{key}"), what="the Post event")
    assert [h.body["EventName"] for h in hits] == ["s3:ObjectCreated:Post"]
    obj = hits[0].body["Records"][0]["s3"]["object"]
    assert (obj["size"], obj["contentType"]) == (100, "video/mp4")


@pytest.mark.slow
def test_failed_delivery_is_retried_and_blocks_later_events(s3_stack: S3Stack):
    bucket = s3_stack.cfg.uploads_bucket
    first, second = "retry/first.mp4", "retry/second.mp4"
    s3_stack.receiver.fail[f"{bucket}/{first}"] = 2
    put(s3_stack, first, b"1")
    put(s3_stack, second, b"2")
    wait_for(lambda: s3_stack.receiver.for_key(f"{bucket}/{second}"), what="the second event")

    tries = s3_stack.receiver.for_key(f"{bucket}/{first}")
    assert [h.status for h in tries] == [503, 503, 200]
    assert all(h.body == tries[0].body for h in tries)  # the same event, re-sent
    later = s3_stack.receiver.for_key(f"{bucket}/{second}")
    assert len(later) == 1
    assert later[0].at > tries[-1].at  # it waited behind the failing one


def test_presigned_get_and_range(s3_stack: S3Stack):
    key = "presigned/clip.bin"
    data = bytes(range(256)) * 40
    put(s3_stack, key, data)
    bucket = s3_stack.cfg.uploads_bucket
    got = s3_stack.client.get_object(bucket_name=bucket, object_name=key)
    try:
        assert got.read() == data
    finally:
        got.close()
        got.release_conn()

    url = s3_stack.client.presigned_get_object(bucket_name=bucket, object_name=key)
    assert url.startswith(f"http://127.0.0.1:{s3_stack.cfg.s3_port}/")
    full = http.get(url, timeout=10)
    assert full.status_code == 200
    assert full.content == data
    part = http.get(url, headers={"Range": "bytes=10-19"}, timeout=10)  # as ffmpeg seeks
    assert part.status_code == 206
    assert part.content == data[10:20]


def test_cors_preflight_allows_browser_put(s3_stack: S3Stack):
    url = s3_stack.client.presigned_put_object(
        bucket_name=s3_stack.cfg.uploads_bucket, object_name="browser/upload.mp4"
    )
    pre = http.options(
        url,
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )
    assert pre.status_code in (200, 204)
    assert pre.headers.get("Access-Control-Allow-Origin") in ("*", "http://localhost:3000")
    done = http.put(
        url, data=b"from a browser", headers={"Origin": "http://localhost:3000"}, timeout=10
    )
    assert done.status_code == 200
    assert done.headers.get("Access-Control-Allow-Origin") in ("*", "http://localhost:3000")


def test_s3_start_is_idempotent(s3_stack: S3Stack):
    before = procs.running(s3_stack.cfg, "s3")
    assert before is not None
    assert services.start_services(s3_stack.cfg, only=["s3"]) == []
    after = procs.running(s3_stack.cfg, "s3")
    assert after is not None and after.pid == before.pid


# --- all four services --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_services() -> Iterator[LocalConfig]:
    run_dir = make_run_dir("vtp-test-services-")
    cfg = LocalConfig(run_dir=run_dir, port_base=free_port_base())
    try:
        started = services.start_services(cfg)
        assert sorted(started) == sorted(services.SERVICES)
        yield cfg
    finally:
        services.stop_services(cfg)
        shutil.rmtree(run_dir, ignore_errors=True)


async def _jetstream_info(url: str) -> object:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        return await nc.jetstream().account_info()
    finally:
        await nc.close()


def test_all_services_answer_then_stop_cleanly(all_services: LocalConfig):
    cfg = all_services

    with psycopg2.connect(cfg.postgres_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), current_setting('fsync')")
        assert cur.fetchone() == (
            cfg.credentials["postgres_user"],
            cfg.credentials["postgres_db"],
            "off",
        )
        cur.execute("CREATE TABLE t (x int)")  # the role owns its database
    conn.close()

    r = redis.Redis.from_url(cfg.redis_url)
    assert r.ping() is True
    r.close()

    info = asyncio.run(_jetstream_info(cfg.nats_url))
    assert info is not None
    health = http.get(f"http://127.0.0.1:{cfg.nats_monitor_port}/healthz", timeout=5)
    assert health.status_code == 200

    names = {b.name for b in minio_client(cfg).list_buckets()}
    assert {cfg.uploads_bucket, cfg.outputs_bucket} <= names

    # A second start leaves everything alone.
    pids = {n: procs.running(cfg, n).pid for n in services.SERVICES}  # type: ignore[union-attr]
    assert services.start_services(cfg) == []
    assert {n: procs.running(cfg, n).pid for n in services.SERVICES} == pids  # type: ignore[union-attr]

    ports = [
        cfg.postgres_port,
        cfg.redis_port,
        cfg.nats_port,
        cfg.nats_monitor_port,
        cfg.s3_port,
    ]
    assert all(port_open(p) for p in ports)

    stopped = services.stop_services(cfg)
    assert sorted(stopped) == sorted(services.SERVICES)
    for name, pid in pids.items():
        assert not procs.pid_alive(pid), name
        assert group_members(pid) == [], f"{name}: part of its process group survived"
        assert procs.load(cfg, name) is None
    assert not any(port_open(p) for p in ports)


@pytest.mark.slow
def test_sigterm_stops_notifier_promptly(tmp_path: Path):
    """The notifier exits on SIGTERM even when the S3 server is not there at all."""
    # Free ports: nothing listens on this config's S3 port.
    base = free_port_base()
    cfg = LocalConfig(run_dir=tmp_path, port_base=base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALFAAS_")}
    env |= {
        "LOCALFAAS_RUN_DIR": str(tmp_path),
        "LOCALFAAS_PORT_BASE": str(base),
        "LOCALFAAS_NOTIFY_ENDPOINT": "http://127.0.0.1:9/hook",
    }
    rec = procs.start(
        cfg, "notifier", [sys.executable, "-m", "localfaas.notifier"], env=env, cwd=REPO_ROOT
    )
    try:
        time.sleep(1.5)
        assert procs.pid_alive(rec.pid)
        t0 = time.monotonic()
        os.kill(rec.pid, signal.SIGTERM)
        wait_for(lambda: not procs.pid_alive(rec.pid), timeout=10, what="notifier exit")
        assert time.monotonic() - t0 < 5
    finally:
        procs.stop(cfg, "notifier")


def test_port_held_by_a_stranger_is_an_error(tmp_path: Path):
    cfg = LocalConfig(run_dir=tmp_path, port_base=free_port_base())
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", cfg.s3_port))
        stranger.listen()
        with pytest.raises(services.ServiceError, match=rf"port\(s\) \[{cfg.s3_port}\]"):
            services.start_services(cfg, only=["s3"])
    assert procs.load(cfg, "s3") is None


def test_unknown_service_is_an_error(tmp_path: Path):
    with pytest.raises(services.ServiceError, match="unknown service"):
        services.start_services(
            LocalConfig(run_dir=tmp_path, port_base=free_port_base()), only=["mysql"]
        )


def test_the_s3_server_is_given_time_to_load_what_it_kept(tmp_path: Path) -> None:
    """It loads every kept object before it answers: 10 GB of outputs from earlier runs
    must not make `up` give up on it after the usual 30 s."""
    cfg = LocalConfig(run_dir=tmp_path)
    assert services._s3_restore_wait(cfg) == 0
    objects = tmp_path / "s3-data" / "buckets" / "outputs" / "objects"
    objects.mkdir(parents=True)
    for i in range(2):
        with (objects / f"{i}.bin").open("wb") as f:
            f.truncate(5 * 1024**3)  # sparse: the size is what counts
    assert services._s3_restore_wait(cfg) == pytest.approx(10 * 1024 / 50)
