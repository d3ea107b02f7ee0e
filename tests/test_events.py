"""Progress events against a real Redis: publish/subscribe, snapshot, replay, the reporter."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from vtp.errors import InvalidRequest
from vtp.events import EventBus, ProgressEvent, ProgressReporter, stream_id_order
from vtp.keys import RedisKeys
from vtp.models import JobState, RenditionState


@pytest.fixture
def prefix() -> str:
    return f"vtptest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    yield r
    for key in r.scan_iter(match=f"{prefix}:*"):
        r.delete(key)
    r.close()


@pytest.fixture
def bus(client: redis.Redis, prefix: str) -> EventBus:
    return EventBus(client, prefix)


def ev(job_id: str, rendition: str | None, percent: float, **kw: Any) -> ProgressEvent:
    state = kw.pop("state", RenditionState.RUNNING if rendition else JobState.RUNNING)
    return ProgressEvent(job_id=job_id, rendition=rendition, state=state, percent=percent, **kw)


def test_keys_are_namespaced(prefix: str) -> None:
    keys = RedisKeys(prefix)
    assert keys.events_stream == f"{prefix}:events"
    assert keys.progress_channel == f"{prefix}:progress"
    assert keys.job_progress("abc") == f"{prefix}:job:abc:progress"
    with pytest.raises(ValueError):
        RedisKeys("has space")


def test_event_rejects_unknown_state_and_bad_percent() -> None:
    with pytest.raises(ValueError):
        ProgressEvent(job_id="j", state="exploded")
    with pytest.raises(ValueError):
        ProgressEvent(job_id="j", state="running", percent=101)
    event = ProgressEvent.model_validate({"job_id": uuid.UUID(int=1), "state": JobState.QUEUED})
    assert event.job_id == str(uuid.UUID(int=1))


def test_subscriber_receives_published_json_with_id(bus: EventBus, client: redis.Redis) -> None:
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(bus.channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    job = str(uuid.uuid4())
    sent = bus.publish(ev(job, "720p", 12.5, fps=48.0, speed=1.6, attempt=1))
    assert sent.id is not None
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    pubsub.close()
    assert message is not None and message["channel"] == bus.channel
    payload = json.loads(message["data"])
    assert payload["id"] == sent.id
    assert payload["job_id"] == job and payload["rendition"] == "720p"
    assert payload["state"] == "running" and payload["percent"] == 12.5
    assert EventBus.parse(message["data"]) == sent


def test_current_returns_latest_per_rendition(bus: EventBus) -> None:
    job, other = str(uuid.uuid4()), str(uuid.uuid4())
    for p in (10, 20, 30):
        bus.publish(ev(job, "360p", p))
    bus.publish(ev(job, "720p", 5))
    last_720 = bus.publish(ev(job, "720p", 7))
    bus.publish(ev(other, "360p", 99))
    done = bus.publish(ev(job, None, 100, state=JobState.SUCCEEDED))
    current = bus.current(job)
    assert set(current) == {"360p", "720p", "_job"}
    assert current["360p"].percent == 30
    assert current["720p"] == last_720
    assert current["_job"] == done and current["_job"].state == "succeeded"
    assert bus.current(str(uuid.uuid4())) == {}
    ttl = bus.redis.ttl(bus.keys.job_progress(job))
    assert isinstance(ttl, int) and 0 < ttl <= bus.progress_ttl_s


def test_since_replays_in_order_and_filters_by_job(bus: EventBus) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    sent = []
    for i in range(30):
        sent.append(bus.publish(ev(a if i % 3 else b, "360p", float(i))))
    ids = [e.id for e in sent]
    assert all(i is not None for i in ids)
    assert sorted(ids, key=lambda i: stream_id_order(str(i))) == ids

    assert bus.since("0") == sent
    assert bus.since("0", a) == [e for e in sent if e.job_id == a]
    assert bus.since("0", b) == [e for e in sent if e.job_id == b]
    assert bus.since(str(ids[9])) == sent[10:]
    assert bus.since(str(ids[9]), b) == [e for e in sent[10:] if e.job_id == b]
    assert bus.since(str(ids[9]), a, limit=3) == [e for e in sent[10:] if e.job_id == a][:3]
    assert bus.since(str(ids[-1])) == []
    with pytest.raises(InvalidRequest):
        bus.since("$ evil")


def test_bus_works_without_decode_responses(redis_url: str, prefix: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    try:
        bus = EventBus(raw, prefix)
        job = str(uuid.uuid4())
        sent = bus.publish(ev(job, "1080p", 50))
        assert bus.current(job) == {"1080p": sent}
        assert bus.since("0", job) == [sent]
    finally:
        for key in raw.scan_iter(match=f"{prefix}:*"):
            raw.delete(key)
        raw.close()


@pytest.mark.slow
def test_reporter_is_monotonic_rate_limited_and_keeps_alive(bus: EventBus) -> None:
    job = str(uuid.uuid4())
    reporter = ProgressReporter(bus, job, "720p", attempt=2, duration_s=10.0)
    try:
        reporter.state(RenditionState.RUNNING)
        # One second of chatty ffmpeg at 50 samples/s, with a glitch going backwards.
        t0 = time.time()
        for i in range(50):
            out_time = i * 0.1 if i != 25 else 0.5
            reporter.sample(out_time, fps=60.0, speed=2.0)
            time.sleep(0.02)
        chatty_end = time.time()
        # Then 2.5 s of silence (a long seek, a slow GOP): keep-alives must continue.
        time.sleep(2.5)
        silent_end = time.time()
        reporter.state(RenditionState.SUCCEEDED)
    finally:
        reporter.close()
    time.sleep(0.3)  # nothing may follow the terminal event
    events = bus.since("0", job)

    assert events[0].state == "running" and events[-1].state == "succeeded"
    assert events[-1].percent == 100.0 and events[-1].eta_seconds == 0.0
    assert all(e.attempt == 2 and e.rendition == "720p" for e in events)
    percents = [e.percent for e in events]
    assert percents == sorted(percents), percents
    assert max(percents[:-1]) < 100.0  # 100 only once succeeded

    chatty = [e for e in events if t0 <= e.ts <= chatty_end]
    assert 3 <= len(chatty) <= 7, [e.ts - t0 for e in chatty]  # about 4 per second

    running = [e for e in events if e.state == "running"]
    silent = [e for e in running if chatty_end < e.ts <= silent_end]
    assert len(silent) >= 3, [e.ts - chatty_end for e in silent]
    stamps = [e.ts for e in running] + [events[-1].ts]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) <= 1.0, gaps  # at least one event a second, silence or not
    assert bus.current(job)["720p"] == events[-1]
    assert reporter.published == len(events)


@pytest.mark.slow
def test_reporter_follows_real_ffmpeg_progress(bus: EventBus) -> None:
    """Feed the reporter the `-progress` output of a real (fast) ffmpeg run."""
    job = str(uuid.uuid4())
    duration = 4.0
    reporter = ProgressReporter(bus, job, "360p", attempt=1, duration_s=duration)
    reporter.state(RenditionState.RUNNING)
    proc = subprocess.Popen(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostats",
            "-progress",
            "pipe:1",
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=320x240:rate=25:duration={duration}",
            "-f",
            "null",
            "-",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        reporter.feed(line)
    assert proc.wait(timeout=30) == 0
    time.sleep(0.3)  # let the last sample out
    assert reporter.percent >= 90.0
    reporter.state(RenditionState.SUCCEEDED)
    events = bus.since("0", job)
    running = [e for e in events if e.state == "running"]
    assert len(running) >= 4  # -re makes it take ~4 s
    assert any(e.out_time_seconds and e.speed for e in running)
    assert [e.percent for e in events] == sorted(e.percent for e in events)
    assert events[-1].percent == 100.0


def test_reporter_failure_keeps_percent_and_reports_error(bus: EventBus) -> None:
    job = str(uuid.uuid4())
    with ProgressReporter(bus, job, "1080p", attempt=3, duration_s=20.0) as reporter:
        reporter.state(RenditionState.RUNNING)
        reporter.sample(5.0, speed=1.0)
        time.sleep(0.4)
        reporter.state(RenditionState.DEAD, error="encoder OOM")
    latest = bus.current(job)["1080p"]
    assert latest.state == "dead" and latest.error == "encoder OOM"
    assert latest.percent == 25.0 and latest.attempt == 3


def test_reporter_survives_redis_outage(prefix: str) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    reporter = ProgressReporter(EventBus(dead, prefix), "j", "360p", attempt=1, duration_s=1.0)
    reporter.state(RenditionState.RUNNING)  # logs, does not raise
    reporter.sample(0.5)
    reporter.state(RenditionState.SUCCEEDED)
    assert reporter.published == 0


def test_keepalive_thread_stops(bus: EventBus) -> None:
    before = {t.ident for t in threading.enumerate()}
    reporter = ProgressReporter(bus, str(uuid.uuid4()), "360p", attempt=1, duration_s=1.0)
    reporter.state(RenditionState.RUNNING)
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert len(started) == 1 and started[0].daemon
    reporter.close()
    assert not started[0].is_alive()


def test_chunk_reporters_publish_their_rendition_as_a_whole(bus: EventBus) -> None:
    """Two chunks of one rendition (8 s and 4 s) report at once: each has its own field,
    and every rendition event weighs their percents by length, sums fps and speed of the
    chunks running, and gives the ETA of what is left at that speed."""
    job = f"job-{uuid.uuid4().hex[:8]}"
    lengths = [8.0, 4.0]
    first = ProgressReporter(bus, job, "720p", 1, 8.0, chunk=0, chunk_lengths=lengths)
    second = ProgressReporter(bus, job, "720p", 1, 4.0, chunk=1, chunk_lengths=lengths)
    first.state("running", rendition="running")
    second.state("running", rendition="running")
    first.sample(4.0, fps=50.0, speed=2.0)  # half of chunk 0
    second.sample(1.0, fps=30.0, speed=1.0)  # a quarter of chunk 1
    deadline = time.monotonic() + 10
    while True:
        now = bus.current(job)
        rend = now.get("720p")
        if rend and rend.percent == pytest.approx(100 * (4 + 1) / 12, abs=0.01) and rend.fps:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.05)
    assert (now["720p#0"].percent, now["720p#1"].percent) == (50.0, 25.0)
    assert now["720p#0"].chunk_seconds == 8.0 and now["720p"].chunk is None
    assert rend.fps == 80.0 and rend.speed == 3.0
    assert rend.eta_seconds == pytest.approx((4 + 3) / 3.0, abs=0.01)
    second.state("succeeded", rendition="running")  # one chunk done: the rendition goes on
    assert bus.current(job)["720p"].state == "running"
    first.state("succeeded", rendition="succeeded")
    final = bus.current(job)["720p"]
    assert (final.state, final.percent) == ("succeeded", 100.0)
    with pytest.raises(ValueError):
        ProgressReporter(bus, job, "720p", 1, 4.0, chunk=2, chunk_lengths=lengths)
