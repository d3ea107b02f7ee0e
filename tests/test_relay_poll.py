"""ws-relay's polling route (`/poll`): the snapshot, then every event after an id, in order,
page by page, against the stack's real relay and Redis. It is what the page and `vtp watch`
fall back to where a gateway buffers the streams, so it must miss nothing either."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from localfaas.config import LocalConfig
from localfaas.registry import load_registry
from tests.api import http
from vtp.events import EventBus, ProgressEvent, stream_id_order
from vtp.settings import Settings
from vtp_relay.streams import REPLAY_PAGE


@pytest.fixture(scope="module")
def poll_url(stack: LocalConfig) -> str:
    return f"http://127.0.0.1:{load_registry(stack)['ws-relay'].port}/poll"


@pytest.fixture(scope="module")
def bus(stack: LocalConfig) -> Iterator[EventBus]:
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=10)
    yield EventBus(client, Settings().redis_prefix)
    client.close()


def poll(url: str, **params: str) -> dict[str, Any]:
    r = http.get(url, params=params, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = r.json()
    return body


def test_snapshot_then_events_since(poll_url: str, bus: EventBus) -> None:
    job = str(uuid.uuid4())
    bus.publish(ProgressEvent(job_id=job, rendition="360p", state="running", percent=10.0))
    first = poll(poll_url, job=job)
    assert first["events"] == [] and first["more"] is False
    assert first["jobs"][job]["360p"]["percent"] == 10.0
    mark = first["last_id"]
    assert stream_id_order(mark) >= stream_id_order(first["jobs"][job]["360p"]["id"])

    assert poll(poll_url, job=job, last_id=mark)["events"] == []
    sent = [
        bus.publish(ProgressEvent(job_id=job, rendition="360p", state="running", percent=p))
        for p in (20.0, 30.0)
    ]
    other = str(uuid.uuid4())
    bus.publish(ProgressEvent(job_id=other, rendition="720p", state="running"))
    got = poll(poll_url, job=job, last_id=mark)
    assert [e["id"] for e in got["events"]] == [e.id for e in sent]  # only this job, in order
    assert [e["percent"] for e in got["events"]] == [20.0, 30.0]
    assert got["events"][0]["rendition"] == "360p" and got["last_id"] == sent[-1].id
    everyone = poll(poll_url, job="all", last_id=mark)
    assert {e["job_id"] for e in everyone["events"]} == {job, other}


def test_pages_until_caught_up(poll_url: str, bus: EventBus) -> None:
    job = str(uuid.uuid4())
    mark = poll(poll_url, job=job)["last_id"]
    sent = [
        bus.publish(ProgressEvent(job_id=job, rendition="720p", state="running", percent=i / 10))
        for i in range(REPLAY_PAGE + 7)
    ]
    seen: list[str] = []
    pages = 0
    while True:
        page = poll(poll_url, job=job, last_id=mark)
        pages += 1
        seen += [e["id"] for e in page["events"]]
        mark = page["last_id"]
        if not page["more"]:
            break
    assert seen == [e.id for e in sent] and pages == 2


def test_bad_parameters_are_400(poll_url: str) -> None:
    for params in ({"job": "not-a-job"}, {"job": "all", "last_id": "abc"}):
        r = http.get(poll_url, params=params, timeout=10)
        assert r.status_code == 400 and r.json()["type"] == "InvalidRequest", r.text
