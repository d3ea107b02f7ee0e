"""ws-relay: live progress over WebSocket and Server-Sent Events, on the session stack.

The relay under test is the stack's own `ws-relay` function (stack.yml, python3-asgi template,
started through the template's index.py). WebSockets go to its direct port (the CE gateway
cannot carry them); SSE goes through the gateway, as a browser behind OpenFaaS CE would use it.
Events are either those of a real transcode or synthetic ones published with `EventBus` into
the stack's Redis; what clients receive is always compared with what Redis holds
(`EventBus.since`), never with what the test thinks it sent.

A few tests run their own relay in-process (`create_app` under uvicorn, on the stack's Redis
with a private key prefix) to use short ping intervals, and the template is also exercised on
its own default handler.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import uvicorn
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from localfaas.build import assemble_context
from localfaas.config import REPO_ROOT, LocalConfig
from localfaas.registry import load_registry
from tests.api import http
from tests.clips import make_clip
from tests.inprocess import serve_relay
from tests.ports import free_port
from vtp.events import EventBus, ProgressEvent, stream_id_order
from vtp.settings import Settings
from vtp_relay import RelayOptions, create_app
from vtp_relay.hub import OVERFLOW, Client, Hub, Item, Outbox
from vtp_relay.options import Order, parse_follow, parse_last_id
from vtp_relay.snapshot import all_snapshot
from vtp_relay.uploads import safe_upload_name

Event = dict[str, Any]


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay_port(stack: LocalConfig) -> int:
    return load_registry(stack)["ws-relay"].port


@pytest.fixture(scope="module")
def direct(relay_port: int) -> str:
    return f"http://127.0.0.1:{relay_port}"


@pytest.fixture(scope="module")
def ws_base(relay_port: int) -> str:
    return f"ws://127.0.0.1:{relay_port}/ws"


@pytest.fixture(scope="module")
def via_gateway(gateway: str) -> str:
    return f"{gateway}/function/ws-relay"


@pytest.fixture(scope="module")
def rclient(stack: LocalConfig) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(stack.redis_url, socket_timeout=10)
    yield r
    r.close()


@pytest.fixture(scope="module")
def bus(rclient: redis.Redis) -> EventBus:
    """The bus the stack's functions use (default prefix)."""
    return EventBus(rclient, Settings().redis_prefix)


def stream_tail(bus: EventBus) -> str:
    last: Any = bus.redis.xrevrange(bus.keys.events_stream, "+", "-", count=1)
    return str(last[0][0].decode()) if last else "0-0"


def as_dicts(events: list[ProgressEvent]) -> list[Event]:
    return [e.model_dump(mode="json") for e in events]


def ids(events: list[Event]) -> list[str]:
    return [e["id"] for e in events]


def assert_id_order(events: list[Event]) -> None:
    orders = [stream_id_order(e["id"]) for e in events]
    assert orders == sorted(orders) and len(set(orders)) == len(orders), "not in strict id order"


def publish(bus: EventBus, job: str, rendition: str | None, state: str, **kw: Any) -> ProgressEvent:
    return bus.publish(ProgressEvent(job_id=job, rendition=rendition, state=state, **kw))


def relay_stats(direct: str) -> dict[str, Any]:
    stats: dict[str, Any] = http.get(f"{direct}/api/relay/stats", timeout=5).json()
    return stats


async def recv_json(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        message: dict[str, Any] = json.loads(await ws.recv())
        return message


async def recv_events(
    ws: ClientConnection,
    until: Callable[[list[Event]], bool],
    timeout: float = 30,
    job: str | None = None,
) -> list[Event]:
    """Event frames (of `job`, if given) until `until(events)` holds; pings are skipped."""
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        while not until(events):
            message = json.loads(await ws.recv())
            assert message["type"] in ("event", "ping"), message
            if message["type"] == "event" and (job is None or message["event"]["job_id"] == job):
                events.append(message["event"])
    return events


async def quiet(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Frames other than pings arriving within `seconds` (there should be none)."""
    extra = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] != "ping":
                    extra.append(message)
    except TimeoutError:
        pass
    return extra


@dataclass
class SSEMessage:
    event: str  # "snapshot", "progress", or "comment" for ": ..." lines
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class SSEStream:
    """A Server-Sent Events client over `requests`, parsing the stream as a browser does."""

    def __init__(
        self, url: str, headers: dict[str, str] | None = None, read_timeout: float = 30
    ) -> None:
        self.response = http.get(
            url,
            headers={"Accept": "text/event-stream", **(headers or {})},
            stream=True,
            timeout=(5, read_timeout),
        )
        self.retry: int | None = None
        self._messages = self._parse()  # one parser for the stream's life: it holds a buffer

    def __enter__(self) -> SSEStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.response.close()

    def __iter__(self) -> Iterator[SSEMessage]:
        return self._messages

    def _parse(self) -> Iterator[SSEMessage]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        buffer = ""
        data: list[str] = []
        event, event_id = "", None
        for chunk in self.response.iter_content(chunk_size=None):
            buffer += decoder.decode(chunk)
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                line = line.rstrip("\r")
                if line == "":
                    if data:
                        yield SSEMessage(event or "message", event_id, "\n".join(data))
                    event, event_id, data = "", None, []
                elif line.startswith(":"):
                    yield SSEMessage("comment", None, line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
                    elif name == "id":
                        event_id = value
                    elif name == "retry":
                        self.retry = int(value)

    def collect(self, until: Callable[[list[Event]], bool], job: str | None = None) -> list[Event]:
        """Progress events (of `job`, if given) until `until(events)` holds; checks that each
        one's SSE id is its event id."""
        events: list[Event] = []
        if until(events):
            return events
        for message in self:
            if message.event == "progress":
                event = message.json()
                assert message.id == event["id"]
                if job is None or event["job_id"] == job:
                    events.append(event)
            if until(events):
                break
        return events


def first_snapshot(stream: SSEStream) -> dict[str, Any]:
    for message in stream:
        if message.event == "comment":
            continue
        assert message.event == "snapshot", message
        jobs: dict[str, Any] = message.json()["jobs"]
        return jobs
    raise AssertionError("stream ended before the snapshot")


def job_done(job: str) -> Callable[[list[Event]], bool]:
    def done(events: list[Event]) -> bool:
        return any(
            e["job_id"] == job and e["rendition"] is None and e["state"] in ("succeeded", "failed")
            for e in events
        )

    return done


def count(n: int) -> Callable[[list[Event]], bool]:
    return lambda events: len(events) >= n


class Publisher(threading.Thread):
    """Publishes `n` running events of one rendition every `every_s`, then a `succeeded` one,
    in the background; `published` holds what Redis assigned."""

    def __init__(self, bus: EventBus, job: str, n: int, every_s: float = 0.004) -> None:
        super().__init__(daemon=True)
        self.bus, self.job, self.n, self.every_s = bus, job, n, every_s
        self.published: list[ProgressEvent] = []

    def run(self) -> None:
        for i in range(self.n):
            percent = round(99.0 * i / self.n, 2)
            self.published.append(publish(self.bus, self.job, "720p", "running", percent=percent))
            time.sleep(self.every_s)
        self.published.append(publish(self.bus, self.job, "720p", "succeeded", percent=100.0))

    def is_last(self, events: list[Event]) -> bool:
        return bool(events) and events[-1]["state"] == "succeeded"


# --- the template and the page -------------------------------------------------------------------


def test_health_page_and_static(direct: str, via_gateway: str) -> None:
    for base in (direct, via_gateway):
        for path in ("/_/health", "/_/ready"):
            r = http.get(base + path, timeout=5)
            assert (r.status_code, r.text) == (200, "OK")
        page = http.get(base + "/", timeout=5)
        assert page.status_code == 200
        assert page.headers["Content-Type"].startswith("text/html")
        assert "<html" in page.text.lower()
        static = http.get(base + "/static/index.html", timeout=5)
        assert static.status_code == 200 and static.text == page.text
        missing = http.get(base + "/static/nope.js", timeout=5)
        assert missing.status_code == 404 and missing.json()["error"]
    assert http.head(direct + "/_/health", timeout=5).status_code == 200


def test_stack_env_names_the_relay(stack: LocalConfig, relay_port: int) -> None:
    text = stack.stack_env_file.read_text()
    assert f"VTP_WS_URL=ws://127.0.0.1:{relay_port}/ws" in text.splitlines()


def test_bad_parameters_are_refused(ws_base: str, direct: str, via_gateway: str) -> None:
    async def closed_with(url: str) -> int | None:
        async with connect(url, additional_headers=http.headers_for()) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(ws)
        return info.value.rcvd.code if info.value.rcvd else None

    assert asyncio.run(closed_with(f"{ws_base}?job=not-a-job")) == 1008
    assert asyncio.run(closed_with(f"{ws_base}?job=all&last_id=yesterday")) == 1008
    for base in (direct, via_gateway):
        r = http.get(f"{base}/events", params={"job": "not-a-job"}, timeout=5)
        assert r.status_code == 400 and "job" in r.json()["error"]
        r = http.get(f"{base}/events", headers={"Last-Event-ID": "x"}, timeout=5)
        assert r.status_code == 400 and "last_id" in r.json()["error"]


def test_api_errors_are_json(direct: str, via_gateway: str) -> None:
    r = http.get(f"{via_gateway}/api/jobs/{uuid.uuid4()}", timeout=10)
    assert r.status_code == 404 and r.json()["type"] == "NotFound"
    r = http.get(f"{direct}/api/jobs/not-a-uuid", timeout=10)
    assert r.status_code == 404 and "Traceback" not in r.text
    r = http.get(f"{direct}/api/jobs", params={"state": "bogus"}, timeout=10)
    assert r.status_code == 400
    r = http.get(f"{direct}/api/jobs", params={"limit": "many"}, timeout=10)
    assert r.status_code == 400
    r = http.post(f"{direct}/api/uploads", json={"filename": "notes.txt"}, timeout=10)
    assert r.status_code == 400 and "video" in r.json()["error"]
    r = http.post(f"{direct}/api/uploads", data=b"{nope", timeout=10)
    assert r.status_code == 400
    r = http.post(f"{direct}/api/uploads", json={"content_type": "video/mp4"}, timeout=10)
    assert r.status_code == 400 and "filename" in r.json()["error"]
    assert http.get(f"{direct}/api/nothing-here", timeout=10).status_code == 404


def test_upload_ticket(via_gateway: str, stack_env: dict[str, str]) -> None:
    """A ticket is a POST policy for exactly one key and type, bounded in size and time; the
    store enforces it (tests/test_uploads.py)."""
    r = http.post(
        f"{via_gateway}/api/uploads",
        json={
            "filename": "C:\\Users\\me\\My Holiday (1).MOV",
            "content_type": "video/quicktime",
            "size": 1234,
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    ticket = r.json()
    assert (ticket["kind"], ticket["method"], ticket["bucket"]) == ("post", "POST", "uploads")
    prefix, folder, name = ticket["key"].split("/")
    assert prefix == "web" and uuid.UUID(folder) and name == "My_Holiday_1.mov"
    # The form goes to the bucket on the public endpoint; the type is a signed field there.
    assert ticket["url"] == f"{stack_env['VTP_S3_ENDPOINT']}/uploads"
    assert ticket["headers"] == {} and ticket["content_type"] == "video/quicktime"
    fields = ticket["fields"]
    assert list(fields)[:2] == ["key", "Content-Type"]
    assert fields["key"] == ticket["key"] and fields["Content-Type"] == "video/quicktime"
    assert {
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "policy",
        "x-amz-signature",
    } <= set(fields)
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert ["eq", "$bucket", "uploads"] in conditions
    assert ["eq", "$key", ticket["key"]] in conditions
    assert ["eq", "$Content-Type", "video/quicktime"] in conditions
    # The stack's bound is the default 20 GiB; one POST carries at most 5 GiB.
    assert ["content-length-range", 1, 5 * 1024**3] in conditions
    assert ticket["max_bytes"] == 5 * 1024**3
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert 3500 < (expires - datetime.now(UTC)).total_seconds() <= 3600
    assert "x-amz-signature" not in json.dumps(policy)
    # A declared size over the bound gets no ticket, and says why.
    r = http.post(
        f"{via_gateway}/api/uploads",
        json={"filename": "huge.mp4", "size": 20 * 1024**3 + 1},
        timeout=10,
    )
    assert r.status_code == 400 and "limited to 20 GiB" in r.json()["error"], r.text
    assert "VTP_UPLOAD_MAX_BYTES" in r.json()["error"]


def test_safe_upload_names() -> None:
    suffixes = Settings().video_suffixes
    assert safe_upload_name("../../etc/passwd.mp4", suffixes) == "passwd.mp4"
    assert safe_upload_name("été 2024.mkv", suffixes) == "t_2024.mkv"
    assert safe_upload_name(".mp4", suffixes) == "video.mp4"
    for bad in ("movie", "movie.mp4.exe", "x.m3u8", ""):
        with pytest.raises(Exception, match="not a video"):
            safe_upload_name(bad, suffixes)


# --- a real transcode, followed live -------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("relay") / "clip.mp4", size="1280x720", seconds=3)


@dataclass
class FollowedJob:
    job_id: str
    key: str
    before: str  # the stream's last id before the upload
    ws_events: list[Event]
    sse_events: list[Event]


@pytest.fixture(scope="module")
def followed_job(
    ws_base: str, via_gateway: str, direct: str, bus: EventBus, clip: Path
) -> FollowedJob:
    """Upload like the page does (ticket + PUT), with a WebSocket (direct) and an SSE stream
    (through the gateway) following every job from before the upload until the job ends."""
    before = stream_tail(bus)
    target: dict[str, str] = {}
    sse_events: list[Event] = []
    sse_error: list[BaseException] = []
    sse_ready = threading.Event()

    def follow_sse() -> None:
        try:
            with SSEStream(f"{via_gateway}/events?job=all", read_timeout=20) as stream:
                first_snapshot(stream)
                sse_ready.set()
                sse_events.extend(
                    stream.collect(lambda evs: "job" in target and job_done(target["job"])(evs))
                )
        except BaseException as exc:
            sse_error.append(exc)
            sse_ready.set()

    sse_thread = threading.Thread(target=follow_sse, daemon=True)
    sse_thread.start()

    async def follow_ws() -> tuple[str, str, list[Event]]:
        async with connect(f"{ws_base}?job=all", additional_headers=http.headers_for()) as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
            assert sse_ready.wait(10) and not sse_error, sse_error
            ticket = http.post(
                f"{via_gateway}/api/uploads",
                json={
                    "filename": "clip.mp4",
                    "content_type": "video/mp4",
                    "size": clip.stat().st_size,
                },
                timeout=10,
            ).json()
            assert ticket["kind"] == "post", ticket
            # The form, as the page sends it: the signed fields, then the file.
            post = await asyncio.to_thread(
                requests.post,
                ticket["url"],
                data=ticket["fields"],
                files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")},
                timeout=30,
            )
            assert post.status_code == 204, post.text

            async def find_job() -> str:
                while True:
                    r = await asyncio.to_thread(
                        http.get,
                        f"{direct}/api/jobs",
                        params={"bucket": ticket["bucket"], "key": ticket["key"]},
                        timeout=10,
                    )
                    jobs = r.json()["jobs"]
                    if jobs:
                        return str(jobs[0]["id"])
                    await asyncio.sleep(0.2)

            finder = asyncio.create_task(find_job())
            events: list[Event] = []
            async with asyncio.timeout(180):
                while not (finder.done() and job_done(finder.result())(events)):
                    try:
                        async with asyncio.timeout(1):
                            message = json.loads(await ws.recv())
                    except TimeoutError:
                        continue
                    if message["type"] == "event":
                        events.append(message["event"])
                    if finder.done() and "job" not in target:
                        target["job"] = finder.result()  # tells the SSE thread when to stop
            job = finder.result()
            return job, ticket["key"], events

    job, key, all_ws = asyncio.run(follow_ws())
    target["job"] = job
    sse_thread.join(60)
    assert not sse_thread.is_alive(), "the SSE stream did not deliver the job's end"
    assert not sse_error, sse_error
    assert_id_order(all_ws)
    assert_id_order(sse_events)
    return FollowedJob(
        job_id=job,
        key=key,
        before=before,
        ws_events=[e for e in all_ws if e["job_id"] == job],
        sse_events=[e for e in sse_events if e["job_id"] == job],
    )


@pytest.mark.slow
def test_live_events_of_a_real_transcode(followed_job: FollowedJob, bus: EventBus) -> None:
    job = followed_job
    stored = as_dicts(bus.since(job.before, job.job_id, limit=10_000))
    assert stored, "the transcode published nothing"
    # Everything Redis holds for the job, in order, nothing more: over WebSocket and over SSE
    # through the gateway alike.
    assert ids(job.ws_events) == ids(stored)
    assert job.ws_events == stored
    assert job.sse_events == stored

    by_rendition: dict[str, list[Event]] = {}
    for e in stored:
        if e["rendition"] is not None:
            by_rendition.setdefault(e["rendition"], []).append(e)
    assert set(by_rendition) == {"360p", "720p", "audio"}
    for name, events in by_rendition.items():
        percents = [e["percent"] for e in events]
        assert percents == sorted(percents), f"{name}: percent went down: {percents}"
        assert events[-1]["state"] == "succeeded" and events[-1]["percent"] == 100.0, name
        assert any(e["state"] == "running" for e in events), name
    job_level = [e for e in stored if e["rendition"] is None]
    assert job_level[-1]["state"] == "succeeded" and job_level[-1] is stored[-1]


@pytest.mark.slow
def test_late_join_gets_the_whole_state_at_once(
    followed_job: FollowedJob, ws_base: str, via_gateway: str, bus: EventBus
) -> None:
    job = followed_job.job_id
    current = {k: v.model_dump(mode="json") for k, v in bus.current(job).items()}
    assert set(current) == {"360p", "720p", "audio", "_job"}

    async def ws_snapshot() -> dict[str, Any]:
        async with connect(f"{ws_base}?job={job}", additional_headers=http.headers_for()) as ws:
            first = await recv_json(ws)
            assert first["type"] == "snapshot"
            assert await quiet(ws, 0.5) == [], "a finished job has nothing more to send"
            snapshot: dict[str, Any] = first["jobs"]
            return snapshot

    ws_jobs = asyncio.run(ws_snapshot())
    with SSEStream(f"{via_gateway}/events?job={job}") as stream:
        sse_jobs = first_snapshot(stream)
        assert stream.retry == 2000
    for jobs in (ws_jobs, sse_jobs):
        assert jobs == {job: current}
        for name in ("360p", "720p"):
            assert jobs[job][name]["state"] == "succeeded"
            assert jobs[job][name]["percent"] == 100.0
        assert jobs[job]["_job"]["state"] == "succeeded"

    # The "all" view includes the job too (it had events within the hour).
    async def all_snapshot_ws() -> dict[str, Any]:
        async with connect(f"{ws_base}?job=all", additional_headers=http.headers_for()) as ws:
            snapshot: dict[str, Any] = (await recv_json(ws))["jobs"]
            return snapshot

    assert asyncio.run(all_snapshot_ws())[job] == current


@pytest.mark.slow
def test_resume_of_a_real_job_replays_the_rest(
    followed_job: FollowedJob, ws_base: str, via_gateway: str, direct: str, bus: EventBus
) -> None:
    job = followed_job.job_id
    middle = followed_job.ws_events[len(followed_job.ws_events) // 2]["id"]
    expected = as_dicts(bus.since(middle, job))
    assert expected

    async def ws_resume() -> list[Event]:
        async with connect(
            f"{ws_base}?job={job}&last_id={middle}", additional_headers=http.headers_for()
        ) as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
            events = await recv_events(ws, count(len(expected)))
            assert await quiet(ws, 0.5) == []
            return events

    assert asyncio.run(ws_resume()) == expected
    with SSEStream(f"{via_gateway}/events?job={job}", {"Last-Event-ID": middle}) as stream:
        first_snapshot(stream)
        assert stream.collect(count(len(expected))) == expected
    with SSEStream(f"{direct}/events?job={job}&last_id={middle}") as stream:
        first_snapshot(stream)
        assert stream.collect(count(len(expected))) == expected


@pytest.mark.slow
def test_api_describes_the_job(followed_job: FollowedJob, via_gateway: str) -> None:
    r = http.get(f"{via_gateway}/api/jobs/{followed_job.job_id}", timeout=10)
    assert r.status_code == 200
    view = r.json()
    assert view["id"] == followed_job.job_id and view["state"] == "succeeded"
    assert view["source"]["key"] == followed_job.key
    assert [x["name"] for x in view["renditions"]] == ["360p", "720p", "audio"]
    for rend in view["renditions"]:
        assert rend["progress"]["percent"] == 100.0 and rend["progress"]["state"] == "succeeded"
        assert rend["urls"]["playlist"].endswith(".m3u8")
    assert view["urls"]["master"].endswith(f"{followed_job.job_id}/master.m3u8")
    listed = http.get(
        f"{via_gateway}/api/jobs",
        params={"bucket": "uploads", "key": followed_job.key},
        timeout=10,
    ).json()["jobs"]
    assert [j["id"] for j in listed] == [followed_job.job_id]
    recent = http.get(
        f"{via_gateway}/api/jobs", params={"state": "succeeded", "limit": "500"}, timeout=10
    ).json()["jobs"]
    assert followed_job.job_id in [j["id"] for j in recent]
    assert all(j["state"] == "succeeded" for j in recent)


# --- synthetic events: snapshots, resume, fan-out, slow clients ----------------------------------


def test_mid_job_join_snapshot_then_live_events(ws_base: str, bus: EventBus) -> None:
    job = str(uuid.uuid4())
    publish(bus, job, None, "running")
    for name, percent in (("360p", 80.0), ("720p", 41.5), ("1080p", 12.0)):
        publish(bus, job, name, "queued")
        publish(bus, job, name, "running", percent=percent / 2)
        publish(bus, job, name, "running", percent=percent)
    publish(bus, job, "360p", "succeeded", percent=100.0)

    async def run() -> tuple[dict[str, Any], list[Event], str]:
        async with connect(f"{ws_base}?job={job}", additional_headers=http.headers_for()) as ws:
            first = await recv_json(ws)
            assert first["type"] == "snapshot"
            watermark = stream_tail(bus)
            later = [
                publish(bus, job, "720p", "running", percent=60.0),
                publish(bus, job, "1080p", "running", percent=30.0),
            ]
            events = await recv_events(ws, count(len(later)))
            assert ids(events) == [e.id for e in later]
            return first["jobs"], events, watermark

    jobs, events, watermark = asyncio.run(run())
    snapshot = jobs[job]
    assert {k: (v["state"], v["percent"]) for k, v in snapshot.items()} == {
        "_job": ("running", 0.0),
        "360p": ("succeeded", 100.0),
        "720p": ("running", 41.5),
        "1080p": ("running", 12.0),
    }
    newest = max(stream_id_order(v["id"]) for v in snapshot.values())
    assert all(stream_id_order(e["id"]) > newest for e in events)
    assert events == as_dicts(bus.since(watermark, job))


def test_unknown_job_gets_an_empty_snapshot_then_its_events(ws_base: str, bus: EventBus) -> None:
    job = str(uuid.uuid4())

    async def run() -> None:
        async with connect(
            f"{ws_base}?job={job.upper()}", additional_headers=http.headers_for()
        ) as ws:  # ids are case-insensitive
            assert await recv_json(ws) == {"type": "snapshot", "jobs": {job: {}}}
            sent = publish(bus, job, None, "queued")
            events = await recv_events(ws, count(1))
            assert events == [sent.model_dump(mode="json")]

    asyncio.run(run())


@pytest.mark.slow
def test_websocket_resume_under_live_publishing_misses_nothing(ws_base: str, bus: EventBus) -> None:
    job = str(uuid.uuid4())
    start = stream_tail(bus)
    publisher = Publisher(bus, job, 400)

    async def run() -> tuple[list[Event], list[Event]]:
        async with connect(f"{ws_base}?job={job}", additional_headers=http.headers_for()) as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
            publisher.start()
            first = await recv_events(ws, count(60))
        # Gone for a moment while events keep coming, then back with the last id seen.
        await asyncio.sleep(0.2)
        async with connect(
            f"{ws_base}?job={job}&last_id={first[-1]['id']}", additional_headers=http.headers_for()
        ) as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
            rest = await recv_events(ws, publisher.is_last)
        return first, rest

    first, rest = asyncio.run(run())
    publisher.join(30)
    stored = as_dicts(bus.since(start, job, limit=10_000))
    assert len(stored) == 401
    assert first + rest == stored
    assert [e.model_dump(mode="json") for e in publisher.published] == stored


def test_sse_resume_through_the_gateway_misses_nothing(via_gateway: str, bus: EventBus) -> None:
    job = str(uuid.uuid4())
    start = stream_tail(bus)
    publisher = Publisher(bus, job, 300)
    with SSEStream(f"{via_gateway}/events?job={job}") as stream:
        assert first_snapshot(stream) == {job: {}}
        publisher.start()
        first = stream.collect(count(40))
    time.sleep(0.2)
    # What a browser's EventSource does on its own: reconnect with Last-Event-ID.
    with SSEStream(f"{via_gateway}/events?job={job}", {"Last-Event-ID": first[-1]["id"]}) as stream:
        first_snapshot(stream)
        rest = stream.collect(publisher.is_last)
    publisher.join(30)
    stored = as_dicts(bus.since(start, job, limit=10_000))
    assert len(stored) == 301
    assert first + rest == stored


def test_follow_switches_jobs(ws_base: str, bus: EventBus) -> None:
    job_a, job_b = str(uuid.uuid4()), str(uuid.uuid4())
    publish(bus, job_b, "360p", "running", percent=50.0)

    async def run() -> None:
        async with connect(f"{ws_base}?job={job_a}", additional_headers=http.headers_for()) as ws:
            assert (await recv_json(ws))["jobs"] == {job_a: {}}
            a1 = publish(bus, job_a, "360p", "queued")
            assert ids(await recv_events(ws, count(1))) == [a1.id]
            await ws.send(json.dumps({"type": "follow", "job": job_b}))
            snapshot = await recv_json(ws)
            assert snapshot["type"] == "snapshot"
            assert snapshot["jobs"][job_b]["360p"]["percent"] == 50.0
            publish(bus, job_a, "360p", "running", percent=1.0)
            b2 = publish(bus, job_b, "360p", "running", percent=75.0)
            assert ids(await recv_events(ws, count(1))) == [b2.id]
            await ws.send(json.dumps({"type": "follow", "job": "all"}))
            snapshot = await recv_json(ws)
            assert snapshot["type"] == "snapshot" and {job_a, job_b} <= set(snapshot["jobs"])
            a3 = publish(bus, job_a, "360p", "running", percent=2.0)
            b3 = publish(bus, job_b, "360p", "running", percent=80.0)
            got = await recv_events(ws, lambda evs: b3.id in ids(evs))
            assert [e["id"] for e in got if e["job_id"] in (job_a, job_b)] == [a3.id, b3.id]
            # Nonsense from the client is ignored; the stream goes on.
            await ws.send("not json")
            await ws.send(json.dumps({"type": "follow", "job": "not-a-job"}))
            b4 = publish(bus, job_b, "360p", "succeeded", percent=100.0)
            await recv_events(ws, lambda evs: b4.id in ids(evs))

    asyncio.run(run())


def test_200_websocket_clients_all_get_every_event_in_order(
    ws_base: str, direct: str, bus: EventBus
) -> None:
    job = str(uuid.uuid4())
    n_clients, n_events = 200, 30

    async def run() -> list[list[Event]]:
        clients = await asyncio.gather(
            *(
                connect(
                    f"{ws_base}?job={job}", additional_headers=http.headers_for(), open_timeout=30
                )
                for _ in range(n_clients)
            )
        )
        try:
            for snapshot in await asyncio.gather(*(recv_json(ws, 30) for ws in clients)):
                assert snapshot == {"type": "snapshot", "jobs": {job: {}}}
            assert relay_stats(direct)["clients"] >= n_clients

            def publish_all() -> None:
                for i in range(n_events):
                    publish(bus, job, "720p", "running", percent=float(i))

            received = asyncio.gather(
                *(recv_events(ws, count(n_events), timeout=60) for ws in clients)
            )
            await asyncio.to_thread(publish_all)
            return list(await received)
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))

    everyone = asyncio.run(run())
    stored = as_dicts(bus.since("0", job, limit=10_000))
    assert len(stored) == n_events
    for events in everyone:
        assert events == stored


def _raw_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads: a tiny receive
    buffer, so the server's writes back up almost at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in http.headers_for().items())
            + "\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _read_frames(sock: socket.socket, timeout: float) -> tuple[int, int | None]:
    """Read server frames until a close frame or EOF: (text frames, close code or None)."""
    sock.settimeout(timeout)
    reader = sock.makefile("rb")
    frames = 0
    while True:
        head = reader.read(2)
        if len(head) < 2:
            return frames, None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", reader.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", reader.read(8))[0]
        payload = reader.read(length)
        if len(payload) < length:
            return frames, None
        if opcode == 0x8:
            return frames, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        frames += 1


def test_a_slow_client_does_not_delay_a_fast_one(
    relay_port: int, ws_base: str, direct: str, bus: EventBus
) -> None:
    job = str(uuid.uuid4())
    n_events, padding = 4000, "x" * 4096  # ~16 MB: more than any socket buffers hold
    overflows_before = relay_stats(direct)["overflow_disconnects"]
    slow = _raw_websocket(relay_port, f"/ws?job={job}")
    try:

        async def run() -> tuple[list[Event], float]:
            async with connect(
                f"{ws_base}?job={job}", additional_headers=http.headers_for(), max_size=None
            ) as fast:
                assert (await recv_json(fast))["type"] == "snapshot"

                def publish_all() -> float:
                    for i in range(n_events):
                        publish(bus, job, "720p", "running", percent=i / 100, error=padding)
                    return time.monotonic()

                receiving = asyncio.create_task(recv_events(fast, count(n_events), timeout=120))
                published_at = await asyncio.to_thread(publish_all)
                events = await receiving
                return events, time.monotonic() - published_at

        events, lag = asyncio.run(run())
        stored = as_dicts(bus.since("0", job, limit=10_000))
        assert ids(events) == ids(stored)
        assert_id_order(events)
        # The fast client kept up while the slow one sat on its data: it had everything
        # moments after the last publish (generous bound, this is not a benchmark).
        assert lag < 10, f"fast client finished {lag:.1f}s after the last publish"
        assert relay_stats(direct)["overflow_disconnects"] > overflows_before
        # The slow client was cut off: what it finally reads ends with a 1013 close frame.
        frames, code = _read_frames(slow, timeout=30)
        assert code == 1013, (frames, code)
        assert 1 <= frames < n_events + 1
    finally:
        slow.close()


# --- the relay's pieces, without the network -----------------------------------------------------


def _item(job: str, seq: int) -> Item:
    raw = json.dumps({"id": f"1000-{seq}", "job_id": job, "state": "running"})
    return Item.from_message(raw.encode())


def test_outbox_and_hub_cut_off_a_full_client() -> None:
    async def run() -> None:
        hub = Hub("redis://unused", "vtp:progress")
        slow = Client("job-a", queue_size=3, kind="ws")
        fast = Client("job-a", queue_size=3, kind="ws")
        other = Client("job-b", queue_size=3, kind="ws")
        everyone = Client(None, queue_size=100, kind="sse")
        slow.sender = asyncio.create_task(asyncio.sleep(60))  # a send that never completes
        for c in (slow, fast, other, everyone):
            hub.add(c)
        for seq in range(3):
            hub.dispatch(_item("job-a", seq))
        assert [len(c.outbox) for c in (slow, fast, other, everyone)] == [3, 3, 0, 3]
        assert [i.id for i in fast.outbox.take()] == ["1000-0", "1000-1", "1000-2"]
        hub.dispatch(_item("job-a", 3))  # slow's outbox is full: it is cut off, fast is not
        assert slow.close is OVERFLOW and fast.close is None
        await asyncio.sleep(0)
        assert slow.sender.cancelled(), "a send in progress is interrupted"
        assert hub.overflows == 1 and len(fast.outbox) == 1
        hub.dispatch(_item("job-b", 4))
        assert len(other.outbox) == 1 and len(everyone.outbox) == 5
        hub.move(other, "job-a")
        hub.dispatch(_item("job-a", 5))
        assert len(other.outbox) == 2
        for c in (slow, fast, other, everyone):
            hub.remove(c)
        assert hub.clients == []

        box = Outbox(2)
        with pytest.raises(TimeoutError):
            await box.wait(0.01)
        waiter = asyncio.create_task(box.wait(5))
        await asyncio.sleep(0)
        box.put(_item("j", 1))
        await asyncio.wait_for(waiter, 1)

    asyncio.run(run())


def test_frames_are_built_from_the_published_json() -> None:
    raw = '{"id":"1732560000000-7","job_id":"j","rendition":null,"state":"queued"}'
    item = Item.from_message(raw)
    assert item.order == (1732560000000, 7)
    assert json.loads(item.ws_frame) == {"type": "event", "event": json.loads(raw)}
    assert item.sse_frame == f"id: 1732560000000-7\nevent: progress\ndata: {raw}\n\n"
    for bad in ("[]", "{}", '{"id": 1, "job_id": "j"}', "not json"):
        with pytest.raises(ValueError):
            Item.from_message(bad)


def test_parameter_parsing() -> None:
    job = uuid.uuid4()
    assert parse_follow(None) is None and parse_follow("all") is None and parse_follow("") is None
    assert parse_follow(str(job).upper()) == str(job)
    assert parse_last_id("1732560000000-3") == "1732560000000-3"
    assert parse_last_id("1732560000000") == "1732560000000"
    assert parse_last_id(None) is None
    for bad in ("abc", "1-2-3", "-1", "1732560000000-"):
        with pytest.raises(Exception, match="last_id"):
            parse_last_id(bad)


@pytest.fixture
def private_bus(rclient: redis.Redis) -> Iterator[EventBus]:
    prefix = f"relaytest-{uuid.uuid4().hex[:10]}"
    yield EventBus(rclient, prefix)
    for key in rclient.scan_iter(match=f"{prefix}:*"):
        rclient.delete(key)


def test_all_snapshot_is_recent_bounded_and_newest_first(private_bus: EventBus) -> None:
    r = private_bus.redis
    # An event from two hours ago (explicit old id) must not count as recent.
    old_job = str(uuid.uuid4())
    old_ms = int(time.time() * 1000) - 2 * 3600 * 1000
    event = ProgressEvent(job_id=old_job, state="succeeded", percent=100.0)
    data = event.model_dump_json(exclude={"id"})
    r.xadd(private_bus.keys.events_stream, {"job": old_job, "data": data}, id=f"{old_ms}-0")
    full = event.model_copy(update={"id": f"{old_ms}-0"}).model_dump_json()
    r.hset(private_bus.keys.job_progress(old_job), "_job", full)
    jobs = [str(uuid.uuid4()) for _ in range(12)]
    for job in jobs:
        publish(private_bus, job, None, "queued")
        publish(private_bus, job, "360p", "running", percent=10.0)
    snap = all_snapshot(private_bus, max_jobs=5)
    assert list(snap.jobs) == jobs[::-1][:5]
    assert snap.watermark == stream_id_order(stream_tail(private_bus))
    assert all(set(v) == {"_job", "360p"} for v in snap.jobs.values())
    everything = all_snapshot(private_bus, max_jobs=100)
    assert list(everything.jobs) == jobs[::-1], "the old job is outside the hour"
    scanned = all_snapshot(private_bus, max_jobs=100, max_scan=4)
    assert list(scanned.jobs) == jobs[::-1][:2], "the scan stops at max_scan entries"


def test_all_snapshot_is_consistent_while_events_pour_in(private_bus: EventBus) -> None:
    """Each snapshot must be exactly the state as of its watermark: the `max_jobs` jobs with
    the newest events up to the watermark, newest first, and for each the latest event per
    rendition up to the watermark, while three threads publish as fast as they can."""
    stop = threading.Event()
    max_jobs = 300

    def pour() -> None:
        while not stop.is_set():
            job = str(uuid.uuid4())
            publish(private_bus, job, None, "queued")
            for i in range(3):
                publish(private_bus, job, "360p", "running", percent=float(i))

    threads = [threading.Thread(target=pour, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        snaps = []
        # At least 20 snapshots, and on until one is full: how fast the threads pour depends
        # on the machine's load, and the bound must be seen reached.
        deadline = time.monotonic() + 30
        while len(snaps) < 20 or len(snaps[-1].jobs) < max_jobs:
            assert time.monotonic() < deadline, "the publishers never reached the bound"
            snaps.append(all_snapshot(private_bus, max_jobs=max_jobs))
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    entries: Any = private_bus.redis.xrange(private_bus.keys.events_stream, "-", "+")
    for snap in snaps:
        state: dict[str, dict[str, str]] = {}
        newest: dict[str, Order] = {}
        for entry_id, fields in entries:
            order = stream_id_order(entry_id.decode())
            if order > snap.watermark:
                break
            job = fields[b"job"].decode()
            event = json.loads(fields[b"data"])
            state.setdefault(job, {})[event["rendition"] or "_job"] = entry_id.decode()
            newest[job] = order
        wanted = sorted(newest, key=newest.__getitem__, reverse=True)[:max_jobs]
        got = {job: {k: v["id"] for k, v in events.items()} for job, events in snap.jobs.items()}
        assert list(got) == wanted
        assert got == {job: state[job] for job in wanted}
    assert len(snaps[-1].jobs) == max_jobs, "the bound was reached"


# --- an in-process relay with short pings --------------------------------------------------------


def _free_port() -> int:
    return free_port()  # tests.ports: below the ephemeral range, never handed out twice


@pytest.fixture
def local_relay(
    stack: LocalConfig, tmp_path: Path, private_bus: EventBus
) -> Iterator[tuple[str, EventBus]]:
    """The relay app under uvicorn in this process, on the stack's Redis with its own prefix."""
    (tmp_path / "index.html").write_text("<!doctype html><html><title>t</title></html>")
    # Open: what these test is the streaming (test_access tests the doors).
    settings = Settings(
        redis_url=SecretStr(stack.redis_url), redis_prefix=private_bus.keys.prefix, open_access=True
    )
    app = create_app(settings, static_dir=tmp_path, options=RelayOptions(ping_interval_s=0.3))
    with serve_relay(app, timeout=10, ws_per_message_deflate=False) as address:
        yield address, private_bus


def test_pings_in_silence(local_relay: tuple[str, EventBus]) -> None:
    address, bus = local_relay
    job = str(uuid.uuid4())

    async def run() -> None:
        async with connect(
            f"ws://{address}/ws?job={job}", additional_headers=http.headers_for()
        ) as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
            t0 = time.monotonic()
            assert await recv_json(ws, 2) == {"type": "ping"}
            assert 0.2 < time.monotonic() - t0 < 1.5
            sent = publish(bus, job, "360p", "queued")
            assert (await recv_json(ws, 2))["event"]["id"] == sent.id

    asyncio.run(run())
    with SSEStream(f"http://{address}/events?job={job}") as stream:
        kinds = []
        for message in stream:
            kinds.append(message.event)
            if message.event == "comment":
                assert message.data == "ping"
                break
        assert kinds == ["snapshot", "comment"]


def _start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


def test_lost_subscription_cuts_clients_off_and_recovers(tmp_path: Path) -> None:
    """Events published while the relay's subscription is down cannot reach it: its clients are
    told to come back (1013) rather than left with a silent gap, and it subscribes again."""
    port = _free_port()
    server = _start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    settings = Settings(redis_url=SecretStr(url), open_access=True)
    app = create_app(settings, static_dir=tmp_path, options=RelayOptions(ready_timeout_s=10))
    relay_port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=relay_port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    hub = app.state.relay.hub
    job = str(uuid.uuid4())
    try:
        deadline = time.monotonic() + 10
        while not (uv.started and hub.ready):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        bus = EventBus(redis.Redis.from_url(url), settings.redis_prefix)

        async def run() -> None:
            nonlocal server
            async with connect(
                f"ws://127.0.0.1:{relay_port}/ws?job={job}", additional_headers=http.headers_for()
            ) as ws:
                assert (await recv_json(ws))["type"] == "snapshot"
                sent = publish(bus, job, "360p", "running", percent=5.0)
                assert (await recv_events(ws, count(1)))[0]["id"] == sent.id
                server.terminate()
                server.wait(10)
                with pytest.raises(ConnectionClosed) as info:
                    await recv_events(ws, count(1), timeout=10)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1013
            server = _start_redis(port, tmp_path)
            # A client arriving now waits for the new subscription instead of being refused.
            async with connect(
                f"ws://127.0.0.1:{relay_port}/ws?job={job}", additional_headers=http.headers_for()
            ) as ws:
                assert (await recv_json(ws, 15))["type"] == "snapshot"
                again = publish(bus, job, "360p", "running", percent=6.0)
                assert (await recv_events(ws, count(1)))[0]["id"] == again.id

        asyncio.run(run())
        assert hub.subscriptions == 2
    finally:
        uv.should_exit = True
        thread.join(10)
        server.terminate()
        server.wait(10)


# --- the template on its own, and stopping -------------------------------------------------------


def _start_function(context: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    base_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    proc = subprocess.Popen(
        [sys.executable, "index.py"],
        cwd=context,
        env=base_env | env | {"UPSTREAM_PORT": str(port), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if http.get(f"{url}/_/health", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
            raise AssertionError(f"function did not start:\n{out}")
        time.sleep(0.1)


def test_asgi_template_default_handler(tmp_path: Path) -> None:
    template = REPO_ROOT / "template" / "python3-asgi"
    context = assemble_context(template, template / "function", [], tmp_path / "ctx")
    proc, url = _start_function(context, {})
    try:
        r = http.post(f"{url}/some/path", data=b"abc", timeout=5)
        assert r.json()["message"] == "Hello from python3-asgi"
        assert r.json()["path"] == "/some/path" and r.json()["bytes_received"] == 3
        assert http.delete(f"{url}/_/ready", timeout=5).text == "OK"

        async def echo() -> str:
            async with connect(url.replace("http", "ws") + "/ws") as ws:
                await ws.send("hi")
                return str(await ws.recv())

        assert asyncio.run(echo()) == "hi"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_sigterm_ends_open_streams_at_once(stack: LocalConfig, bus: EventBus) -> None:
    """A second ws-relay from the stack's own build context: SIGTERM with a WebSocket and an
    SSE stream open closes the WebSocket with 1012, ends the SSE stream, exits 0 quickly."""
    context = stack.build_dir / "ws-relay"
    env = {
        "VTP_REDIS_URL": stack.redis_url,
        "VTP_SECRETS_DIR": str(stack.secrets_dir / "ws-relay"),
        "VTP_S3_ENDPOINT": stack.s3_endpoint,
    }
    proc, url = _start_function(context, env)
    try:
        job = str(uuid.uuid4())
        sse = SSEStream(f"{url}/events?job={job}", headers=http.headers_for())
        assert first_snapshot(sse) == {job: {}}

        async def run() -> int | None:
            ws_url = url.replace("http", "ws") + f"/ws?job={job}"
            async with connect(ws_url, additional_headers=http.headers_for()) as ws:
                assert (await recv_json(ws))["type"] == "snapshot"
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as info:
                    await recv_events(ws, count(1), timeout=5)
                return info.value.rcvd.code if info.value.rcvd else None

        t0 = time.monotonic()
        assert asyncio.run(run()) == 1012
        rest = list(sse)  # the stream ends instead of hanging
        assert [m.data for m in rest if m.event == "comment"][-1].startswith("closing: server")
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 5, "shutdown waited for the streams"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_uploads_can_be_turned_off() -> None:
    """RELAY_UPLOADS_ENABLED=false: the page's upload routes answer 403 and hand out nothing."""
    import asyncio

    from starlette.requests import Request

    from vtp.settings import Settings
    from vtp_relay.api import _guarded
    from vtp_relay.uploads import UploadsApi

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"filename": "a.mp4"}', "more_body": False}

    api = UploadsApi(Settings(), enabled=False)
    for endpoint in (api.ticket_endpoint, api.parts_endpoint, api.complete_endpoint):
        request = Request({"type": "http", "method": "POST", "headers": []}, receive)
        response = asyncio.run(_guarded(endpoint)(request))
        assert response.status_code == 403
        assert b"turned off" in response.body
