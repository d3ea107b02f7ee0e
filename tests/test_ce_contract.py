"""What the real OpenFaaS CE components do, reproduced by the local stack, and how the pipeline
copes with each: the answers faas-cli can show, a function that stays down, a transcode that
outlives its exec_timeout, one call at a time per queue-worker, streams a gateway buffers.

Each behaviour was seen on the real components (gateway 0.25.4 with a faas-provider proxy,
nats-queue-worker 0.14.0, of-watchdog 0.9.15, faas-cli 0.16.28); the test fails if the local
stack stops reproducing it or the pipeline stops coping with it.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from minio import Minio

from localfaas import runtime
from localfaas.config import LocalConfig
from tests import faascli
from tests.api import http
from tests.clips import make_clip
from tests.manual import submit
from tests.receiver import Receiver
from tests.s3 import s3_client

BUCKET = "ce-sources"  # no notification rule: only manual jobs read from it


@pytest.fixture(scope="module")
def s3(stack: LocalConfig) -> Minio:
    return s3_client(stack, BUCKET)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("ce") / "clip.mp4", size="640x360", seconds=2)


def upload(s3: Minio, path: Path) -> str:
    key = f"ce/{uuid.uuid4().hex}.mp4"
    s3.fput_object(BUCKET, key, str(path))
    return key


def job_view(gateway: str, job_id: str) -> dict[str, Any]:
    r = http.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_job(gateway: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = job_view(gateway, job_id)
        if view["state"] in ("succeeded", "failed"):
            return view
        time.sleep(0.3)
    pytest.fail(f"job {job_id} did not end in {timeout}s: {job_view(gateway, job_id)}")


def changes(db: Any, job_id: str, rendition: str) -> list[tuple[str, str, str, float]]:
    with db.cursor() as cur:
        cur.execute(
            "SELECT from_state, to_state, coalesce(detail, ''), extract(epoch FROM at)"
            " FROM state_changes WHERE job_id = %s AND rendition = %s ORDER BY id",
            (job_id, rendition),
        )
        return [(a, b, c, float(d)) for a, b, c, d in cur.fetchall()]


# --- 1, 2: what faas-cli shows ------------------------------------------------------------------


def test_faas_cli_invoke_split_and_status_show_the_job(
    gateway: str, s3: Minio, clip: Path, stack_env: dict[str, str]
) -> None:
    """faas-cli drops the body of ANY 202, so a sync split must answer 200; faas-cli POSTs,
    so status must take a POST with --query (and a JSON body, and the short id). Each call
    carries the credential as the README's commands do (`-H "Authorization=Bearer ..."`)."""
    auth = [f"Authorization=Bearer {stack_env['VTP_TOKEN']}"]
    key = upload(s3, clip)
    job = json.dumps({"bucket": BUCKET, "key": key, "renditions": ["360p"]}).encode()
    # Without it, faas-cli says what it says of any 401: its own words, not the function's.
    refused = faascli.invoke(gateway, "split", job)
    assert refused.exit_code == 1 and "unauthorized" in refused.stderr
    first = faascli.invoke(gateway, "split", job, headers=auth)
    assert first.exit_code == 0, first.stderr
    assert "asynchronously" not in first.stderr
    answer = json.loads(first.stdout)
    assert answer["created"] is True and answer["duplicate"] is False
    # Each rendition by what it is: the sound's channels, not the picture's size it rides on.
    picture, sound = answer["renditions"]
    assert (picture["kind"], picture["width"], picture["height"]) == ("video", 640, 360)
    assert (sound["kind"], sound["channels"], "width" in sound) == ("audio", 2, False), sound
    job_id = answer["job_id"]
    again = faascli.invoke(gateway, "split", job, headers=auth)
    assert again.exit_code == 0 and json.loads(again.stdout)["job_id"] == job_id
    assert json.loads(again.stdout)["duplicate"] is True

    queued = faascli.invoke(gateway, "split", job, is_async=True, headers=auth)
    assert (queued.exit_code, queued.stdout) == (0, "")
    assert queued.stderr == "Function submitted asynchronously.\n"  # the gateway's 202

    for how in (
        {"query": [f"id={job_id}"]},  # the README's command: POST, empty body
        {"query": [f"id={job_id[:8]}"]},  # the short id the page shows
        {"stdin": json.dumps({"id": job_id}).encode()},
        {"query": [f"id={job_id}"], "method": "GET"},
    ):
        out = faascli.invoke(gateway, "status", headers=auth, **how)  # type: ignore[arg-type]
        assert out.exit_code == 0, (how, out.stderr)
        assert json.loads(out.stdout)["id"] == job_id, how
    bad = faascli.invoke(gateway, "status", query=["state=bogus"], headers=auth)
    assert bad.exit_code == 1 and "400" in bad.stderr and "state" in bad.stderr
    listed = faascli.invoke(
        gateway, "status", json.dumps({"bucket": BUCKET, "key": key}).encode(), headers=auth
    )
    assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [job_id]
    assert wait_job(gateway, job_id)["state"] == "succeeded"


# --- 5: a function that stays down ----------------------------------------------------------


@pytest.mark.slow
def test_function_that_stays_down_is_dead_lettered_after_its_refusal_budget(
    gateway: str, stack: LocalConfig, s3: Minio, clip: Path, db: Any
) -> None:
    """The provider answers 500 "Can't reach service for: <fn>." for every call; each
    refusal is counted, retried after a growing back-off, and the budget (4 in the test
    stack) ends in a dead letter with the provider's words: the job ends.

    The picture and the sound are both transcode-360p's, so both renditions' calls are
    refused, and they race to spend their budgets: the first to spend it is dead, and the
    other is then cancelled, naming it (it used to end `failed`, which says its input was
    bad); both are dead when they spend their budgets at the same moment."""
    runtime.scale(stack, "transcode-360p", 0)
    try:
        r = http.get(f"{gateway}/function/transcode-360p", timeout=10)
        assert (r.status_code, r.text) == (500, "Can't reach service for: transcode-360p.")
        job_id = submit(gateway, BUCKET, upload(s3, clip), ["360p"])
        view = wait_job(gateway, job_id, timeout=90)
    finally:
        runtime.scale(stack, "transcode-360p", 1)
    assert view["state"] == "failed"
    rends = {r["name"]: r for r in view["renditions"]}
    assert set(rends) == {"360p", "audio"}
    dead = sorted(name for name, r in rends.items() if r["state"] == "dead")
    assert dead, view
    for name in dead:
        rend = rends[name]
        assert rend["attempts"] == 0 and rend["refusals"] == 4, rend
        assert "Can't reach service for: transcode-360p." in rend["error"]
        steps = changes(db, job_id, name)
        refusals = [s for s in steps if s[0] == "queued" and s[1] in ("retrying", "dead")]
        assert [s[1] for s in refusals] == ["retrying", "retrying", "retrying", "dead"]
        gaps = [b[3] - a[3] for a, b in itertools.pairwise(refusals)]
        assert gaps[0] >= 0.9 and gaps[1] >= 1.9 and gaps[2] >= 3.9, gaps  # 1 s, 2 s, 4 s
    for name, rend in rends.items():
        if name not in dead:
            assert rend["state"] == "cancelled" and rend["attempts"] == 0, rend
            assert re.fullmatch(
                rf"cancelled: rendition ({'|'.join(dead)}) is dead, so the job cannot succeed",
                rend["error"],
            ), rend
    assert view["error"].startswith(
        f"rendition {dead[0]} dead, never started: transcode-360p did not take the call "
        "(HTTP 500: Can't reach service for: transcode-360p.)"
    ), view["error"]


# --- 6: the sweeper's re-dispatches are signed ----------------------------------------------------


@pytest.mark.slow
def test_sweeper_redispatch_is_accepted_by_split(
    gateway: str, stack: LocalConfig, s3: Minio, clip: Path, db: Any
) -> None:
    """A call the sweeper dispatches carries a callback URL split accepts: the sweeper has
    the callback secret (it had not, and split answered 401 to every such report). The call
    is one only the sweeper makes: a dispatch that looks lost (queued under a call two hours
    old). A retry would not do: any split filling a freed slot may dispatch it first."""
    runtime.scale(stack, "transcode-360p", 0)
    try:
        job_id = submit(gateway, BUCKET, upload(s3, clip), ["360p"])
        deadline = time.monotonic() + 30
        lost = 0
        while not lost:
            assert time.monotonic() < deadline, job_view(gateway, job_id)
            with db.cursor() as cur:
                cur.execute(
                    "UPDATE tasks SET state = 'queued', next_retry_at = NULL,"
                    " dispatched_at = now() - interval '3 hours'"
                    " WHERE job_id = %s AND state = 'retrying'",
                    (job_id,),
                )
                lost = cur.rowcount
            time.sleep(0.1)
    finally:
        runtime.scale(stack, "transcode-360p", 1)
    swept = http.post(f"{gateway}/function/sweeper", timeout=60)
    assert swept.status_code == 200, swept.text
    # This sweep dispatched it again, or the stack's cron-driven one did a moment before.
    by_cron = [line for line in (stack.logs_dir / "fn-sweeper.log").read_text().splitlines()
               if "re-dispatching" in line and job_id in line]  # fmt: skip
    assert swept.json()["redispatched"] >= 1 or by_cron, swept.text
    assert wait_job(gateway, job_id)["state"] == "succeeded"
    deadline = time.monotonic() + 20
    posted: list[str] = []
    while time.monotonic() < deadline and not posted:
        posted = [
            line
            for log in stack.logs_dir.glob("queue-worker-*.log")
            for line in log.read_text(errors="replace").splitlines()
            if "Posted result for transcode-360p" in line and job_id in line
        ]
        time.sleep(0.2)
    assert posted and all(line.endswith("status: 200") for line in posted), posted


# --- 7: exec_timeout ------------------------------------------------------------------------------


@pytest.mark.slow
def test_transcode_ends_its_work_before_exec_timeout(
    gateway: str, s3: Minio, db: Any, tmp_path: Path
) -> None:
    """transcode-1080p has exec_timeout 6s in the test stack. of-watchdog would answer 504
    then and let the encode run on, unrecorded; the transcode stops ffmpeg itself before, and
    records a timeout, each attempt, until the rendition is dead."""
    big = make_clip(tmp_path / "1080.mp4", size="1920x1080", seconds=8, audio=False)
    job_id = submit(gateway, BUCKET, upload(s3, big), ["1080p"])
    view = wait_job(gateway, job_id, timeout=120)
    assert view["state"] == "failed"
    rend = view["renditions"][0]
    assert rend["state"] == "dead" and rend["attempts"] == 3
    assert "exec_timeout is 6s" in rend["error"]
    steps = changes(db, job_id, "1080p")
    ended = [s for s in steps if s[0] == "running"]
    assert [s[1] for s in ended] == ["retrying", "retrying", "dead"]
    assert all("exec_timeout" in s[2] for s in ended), ended
    assert not any("without a result" in s[2] for s in steps), "the watchdog cut it off"
    assert ("retrying", "retrying") not in [(a, b) for a, b, _, _ in steps]


# --- 4, 9: the queue and the gateway's routes -----------------------------------------------------


@pytest.mark.slow
def test_each_queue_worker_runs_one_call_at_a_time(gateway: str, stack: LocalConfig) -> None:
    """CE's queue-worker 0.14.0 has concurrency 1: N replicas give N calls at once, never
    more (max_inflight is not read)."""
    calls = 2 * stack.queue_workers
    with Receiver() as rx:
        t0 = time.monotonic()
        for _ in range(calls):
            r = http.post(
                f"{gateway}/async-function/sleepy",
                params={"seconds": "1.5"},
                headers={"X-Callback-Url": rx.url},
                timeout=10,
            )
            assert r.status_code == 202 and r.content == b""
        spans = []
        for _ in range(calls):
            cb = rx.get(timeout=60)
            done = cb.at - t0
            spans.append((done - float(cb.headers["X-Duration-Seconds"]), done))
    running_at = [sum(1 for s, e in spans if s <= t < e) for t in (s + 0.05 for s, _ in spans)]
    assert max(running_at) == stack.queue_workers, spans


def test_idle_queue_workers_are_quiet(stack: LocalConfig) -> None:
    """An idle worker's empty fetch is the normal state, not a warning every 1.5 s."""
    logs = sorted(stack.logs_dir.glob("queue-worker-*.log"))
    assert len(logs) >= stack.queue_workers
    for log in logs:
        noisy = [line for line in log.read_text().splitlines() if "fetch failed" in line]
        assert not noisy, (log.name, noisy[:3])


def test_gateway_routes_as_on_ce(gateway: str) -> None:
    r = http.post(f"{gateway}/function/echo.openfaas-fn", data=b"x", timeout=10)
    assert r.status_code == 200
    assert http.post(f"{gateway}/function/echo.other-ns", timeout=10).status_code == 404
    assert http.get(f"{gateway}/async-function/echo", timeout=10).status_code == 405
    with Receiver() as rx:
        # Queued without a look-up, as CE does: the failure arrives with the callback.
        r = http.post(
            f"{gateway}/async-function/no-such-fn",
            headers={"X-Callback-Url": rx.url},
            timeout=10,
        )
        assert (r.status_code, r.content) == (202, b"")
        assert r.headers["X-Call-Id"]
        cb = rx.get(timeout=30)
    assert cb.headers["X-Function-Status"] == "404"
    assert cb.headers["X-Function-Name"] == "no-such-fn"


# --- 3: streams through the gateway -------------------------------------------------------------


def first_bytes(url: str, headers: dict[str, str], wait: float) -> bytes:
    """What arrives of a streamed response within `wait` seconds, up to its snapshot (b"" if
    not even the headers came)."""
    got = bytearray()
    deadline = time.monotonic() + wait
    try:
        with http.get(url, headers=headers, stream=True, timeout=(3, wait)) as resp:
            for chunk in resp.iter_content(chunk_size=None):
                got += chunk
                if b"event: snapshot" in got or time.monotonic() > deadline:
                    break
    except requests.RequestException:
        pass
    return bytes(got)


@pytest.mark.slow
def test_event_stream_through_the_gateways(gateway: str, buffered_gateway: str) -> None:
    """A current CE gateway streams only requests that say Accept: text/event-stream; 0.25.4
    buffers every response, so a quiet stream shows nothing at all. The relay's /poll
    route answers through both, whole."""
    events = f"/function/ws-relay/events?job={uuid.uuid4()}"  # a tiny snapshot, then pings
    sse = {"Accept": "text/event-stream"}
    t0 = time.monotonic()
    assert b"event: snapshot" in first_bytes(gateway + events, sse, 5)
    assert time.monotonic() - t0 < 3
    assert first_bytes(gateway + events, {}, 2) == b"", "streamed without the Accept header"
    assert first_bytes(buffered_gateway + events, sse, 3) == b"", "0.25.4 buffers streams"
    for base in (gateway, buffered_gateway):
        r = http.get(f"{base}/function/ws-relay/poll", params={"job": "all"}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["jobs"], dict) and body["last_id"]
        again = http.get(
            f"{base}/function/ws-relay/poll",
            params={"job": "all", "last_id": body["last_id"]},
            timeout=10,
        ).json()
        assert again["jobs"] is None and isinstance(again["events"], list)
