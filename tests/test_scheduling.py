"""Fair share (vtp.jobs.scheduling) against a real PostgreSQL: the bounds hold, short and
urgent jobs pass long ones, low ones are not starved, and nothing is lost or doubled."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.test_jobs import INFO, PLAN, run_threads, source, spec
from vtp.jobs import Job, JobStore
from vtp.jobs.scheduling import IN_FLIGHT_SQL, FairShare
from vtp.lifecycle import TaskState
from vtp.media.chunks import ChunkRange
from vtp.settings import Settings


def _share(store: JobStore, **kw: Any) -> FairShare:
    """Fair share over `store`; a reported call's slot frees at once unless `kw` says."""
    return FairShare(store.connection_factory, Settings(**{"slot_handover_seconds": 0} | kw))


def _job(store: JobStore, *, chunks: int = 0, priority: int = 50, seconds: float = 8.0) -> Job:
    """A job of two renditions of `seconds`; with `chunks`, each rendition in that many
    4-second parts (a film of 4 chunks is twice a clip's work)."""
    parts = [ChunkRange.on_grid(i, 4.0 * i, 4.0 * (i + 1), 4.0) for i in range(chunks)]
    info = INFO.model_copy(update={"duration": 4.0 * chunks if chunks else seconds})
    job, created = store.create_job(source(), info, PLAN, chunks=parts, priority=priority)
    assert created
    return job


def _in_flight(store: JobStore) -> Counter[uuid.UUID]:
    """Calls in flight by job, read from the rows the way the bound counts them."""
    with store.connection_factory() as conn, conn.cursor() as cur:
        query = f"SELECT t.job_id, count(*) FROM tasks t WHERE {IN_FLIGHT_SQL} GROUP BY 1"  # noqa: S608
        cur.execute(query)
        return Counter({uuid.UUID(str(j)): int(n) for j, n in cur.fetchall()})


def _finish(
    store: JobStore, job_id: uuid.UUID, rendition: str, chunk: int = 0, *, reported: bool = True
) -> None:
    """The task's call ran and succeeded: its slot frees (once reported)."""
    task = store.get(job_id).rendition(rendition).task(chunk)
    assert task.state is TaskState.QUEUED and task.dispatch_call_id
    store.begin_attempt(job_id, rendition, task.dispatch_call_id, chunk=chunk)
    store.succeed_task(job_id, rendition, {"playlist": "index.m3u8"}, chunk=chunk,
                       call_id=task.dispatch_call_id)  # fmt: skip
    if reported:  # as the queue-worker does every call once the function answered
        store.record_report(job_id, rendition, task.dispatch_call_id, chunk=chunk)


def test_a_job_keeps_its_window_and_all_jobs_the_slots(store: JobStore) -> None:
    film = _job(store, chunks=5)  # 10 tasks
    clip = _job(store)  # 2 tasks
    queue = _share(store, dispatch_slots=4, job_window=3)
    claimed = queue.claim()
    assert len(claimed) == 4
    assert _in_flight(store) == Counter({film.id: 2, clip.id: 2}), "taking turns"
    assert all(t.state is TaskState.QUEUED and t.dispatch_call_id for t in claimed)
    assert len({t.dispatch_call_id for t in claimed}) == 4, "a call id each"
    assert queue.claim() == [], "no slot free: nothing more in the platform's queue"
    clips = [t for t in claimed if t.job_id == clip.id]
    _finish(store, clip.id, clips[0].rendition)
    assert [t.job_id for t in queue.claim()] == [film.id]
    _finish(store, clip.id, clips[1].rendition)
    assert queue.claim() == [], "a slot is free, but the film holds its window of 3"
    assert _in_flight(store) == Counter({film.id: 3})


def test_the_default_window_leaves_newcomers_a_slot(store: JobStore) -> None:
    film = _job(store, chunks=5)
    queue = _share(store, dispatch_slots=3)
    assert queue.window == 2
    assert len(queue.claim()) == 2, "a lone job takes two thirds of the slots"
    clip = _job(store)
    assert [t.job_id for t in queue.claim()] == [clip.id], "the third is free at once"
    assert _in_flight(store) == Counter({film.id: 2, clip.id: 1})


def test_a_freed_slot_goes_to_the_job_using_the_least(store: JobStore) -> None:
    """A film holding its window; three clips come: each slot that frees goes to a clip with
    nothing running, before the film gets another."""
    film = _job(store, chunks=5)
    queue = _share(store, dispatch_slots=3, job_window=3)
    films = queue.claim()
    assert len(films) == 3
    clips = [_job(store, seconds=2.0) for _ in range(3)]
    order = []
    for task in films:
        _finish(store, film.id, task.rendition, task.chunk)
        got = queue.claim()
        assert len(got) == 1
        order.append(got[0].job_id)
    # The first two to clips with nothing running while the film has calls (oldest first);
    # the third when the film has none either: to the one with less work left.
    assert order == [c.id for c in clips], "each clip once, the film none"


def test_short_jobs_pass_long_ones_on_equal_terms(store: JobStore) -> None:
    """Nothing in flight on either side: the job with less work left goes first."""
    film = _job(store, chunks=6)
    clip = _job(store)
    queue = _share(store, dispatch_slots=1)
    assert [t.job_id for t in queue.claim()] == [clip.id]
    assert film.id not in _in_flight(store)


def test_inside_a_job_the_costliest_task_goes_first(store: JobStore) -> None:
    _job(store)
    queue = _share(store, dispatch_slots=1)
    assert [t.rendition for t in queue.claim()] == ["720p"]


def test_a_high_job_goes_before_normal_ones_that_came_first(store: JobStore) -> None:
    normals = [_job(store) for _ in range(10)]
    high = _job(store, priority=75)
    queue = _share(store, dispatch_slots=1)
    assert [t.job_id for t in queue.claim()] == [high.id]
    place = queue.place(normals[-1].id)
    assert place is not None and place.ahead == 9 and place.waiting == 2
    assert queue.place(high.id) == queue.place(high.id)  # in flight: nobody ahead
    assert queue.place(high.id).ahead == 0  # type: ignore[union-attr]


def test_a_high_job_fills_its_window_before_normal_ones_get_more(store: JobStore) -> None:
    """Priority is an order: the high job's calls first, up to its window; the rest to the
    normal one, which is not shut out meanwhile."""
    normal = _job(store, chunks=6)
    high = _job(store, chunks=6, priority=75)
    queue = _share(store, dispatch_slots=6, job_window=4)
    queue.claim()
    assert _in_flight(store) == Counter({high.id: 4, normal.id: 2})


def test_a_low_job_is_not_starved(store: JobStore) -> None:
    """A low job that waited two ageing periods (one level each) ranks above a new normal one."""
    low = _job(store, priority=25)
    with store.connection_factory() as conn, conn.cursor() as cur:
        cur.execute("UPDATE jobs SET created_at = now() - interval '650 seconds' WHERE id = %s",
                    (str(low.id),))  # fmt: skip
        conn.commit()
    _job(store)
    queue = _share(store, dispatch_slots=1, priority_ageing_seconds=300)
    assert [t.job_id for t in queue.claim()] == [low.id]


def test_a_fresh_low_job_waits_for_a_normal_one(store: JobStore) -> None:
    low = _job(store, priority=25)
    normal = _job(store)
    queue = _share(store, dispatch_slots=1, priority_ageing_seconds=300)
    assert [t.job_id for t in queue.claim()] == [normal.id]
    assert low.id not in _in_flight(store)


def test_one_tenant_cannot_starve_another(store: JobStore) -> None:
    """Two credentials: the one with calls in flight waits while the other has none."""
    a1, a2 = _job(store, chunks=3), _job(store, chunks=3)
    b = _job(store, chunks=3)
    with store.connection_factory() as conn, conn.cursor() as cur:
        for job, who in ((a1, "tenant-a"), (a2, "tenant-a"), (b, "tenant-b")):
            cur.execute(
                "INSERT INTO submissions (credential, source_bucket, source_key, source_etag,"
                " reprocess, job_id) VALUES (%s, 'uploads', %s, 'e', false, %s)",
                (who, job.source.key, str(job.id)),
            )
        conn.commit()
    queue = _share(store, dispatch_slots=4, job_window=4)
    queue.claim()
    flight = _in_flight(store)
    assert flight[b.id] == 2 and flight[a1.id] + flight[a2.id] == 2, flight


def test_a_retry_waits_for_its_back_off_then_for_a_slot(
    make_store: Callable[..., JobStore],
) -> None:
    store = make_store(retry_base_s=0.3, retry_max_s=0.3)
    job = _job(store)
    queue = _share(store, dispatch_slots=1)
    (task,) = queue.claim()
    store.record_refusal(job.id, task.rendition, task.dispatch_call_id, "HTTP 429")
    assert store.get(job.id).rendition(task.rendition).task().state is TaskState.RETRYING
    other = queue.claim()
    assert [t.rendition for t in other] == ["360p"], "the slot it left goes to waiting work"
    _finish(store, job.id, "360p")
    threading.Event().wait(0.4)
    again = queue.claim()
    assert [t.rendition for t in again] == [task.rendition], "past its back-off, it is next"
    assert again[0].dispatch_call_id != task.dispatch_call_id


def test_concurrent_claims_never_exceed_the_slots(make_store: Callable[..., JobStore]) -> None:
    """Eight claimers at once (split replicas, the sweeper): five slots, five calls."""
    store = make_store()
    for _ in range(4):
        _job(store, chunks=3)
    results = run_threads(8, lambda i: _share(make_store(), dispatch_slots=5).claim())
    claimed = [t for r in results for t in r]
    assert len(claimed) == 5
    assert len({(t.job_id, t.rendition, t.chunk) for t in claimed}) == 5, "none twice"
    assert sum(_in_flight(store).values()) == 5


def test_a_running_task_holds_its_slot_until_it_ends(store: JobStore) -> None:
    job = _job(store)
    queue = _share(store, dispatch_slots=1)
    (task,) = queue.claim()
    assert task.dispatch_call_id
    store.begin_attempt(job.id, task.rendition, task.dispatch_call_id)
    assert queue.claim() == [], "running counts as in flight"
    store.fail_task(job.id, task.rendition, "boom", retryable=False, max_attempts=3,
                    call_id=task.dispatch_call_id)  # fmt: skip
    assert queue.claim() == [], "ended, but the queue-worker holds its message until it reports"
    store.record_report(job.id, task.rendition, task.dispatch_call_id)
    assert [t.rendition for t in queue.claim()] == ["360p"]


def test_an_ended_call_holds_its_slot_until_reported_and_acknowledged(store: JobStore) -> None:
    """A task records its end before it answers the call, and the CE queue-worker posts its
    report before it acknowledges the message: until the report and the hand-over after it,
    the call is still the platform's. A report of an older call frees nothing; a report that
    never comes holds the slot no longer than the grace."""
    job = _job(store)
    queue = _share(store, dispatch_slots=1, slot_handover_seconds=0.5)
    (task,) = queue.claim()
    call = task.dispatch_call_id
    assert call
    store.begin_attempt(job.id, task.rendition, call)
    store.succeed_task(job.id, task.rendition, {"playlist": "index.m3u8"}, call_id=call)
    assert queue.claim() == [], "ended, not reported"
    store.record_report(job.id, task.rendition, "an-older-call")
    assert queue.claim() == [], "an older call's report"
    store.record_report(job.id, task.rendition, call)
    assert queue.claim() == [], "reported, not acknowledged yet"
    time.sleep(0.6)
    (second,) = queue.claim()
    assert second.rendition != task.rendition
    # Its report is lost: the slot frees after the grace all the same.
    assert second.dispatch_call_id
    store.begin_attempt(job.id, second.rendition, second.dispatch_call_id)
    store.succeed_task(job.id, second.rendition, {"playlist": "index.m3u8"},
                       call_id=second.dispatch_call_id)  # fmt: skip
    other = _job(store)
    assert queue.claim() == []
    graceful = _share(store, dispatch_slots=1, call_report_grace_seconds=0.3)
    time.sleep(0.4)
    assert [t.job_id for t in graceful.claim()] == [other.id]


def test_cancelled_and_finished_jobs_are_not_served(store: JobStore) -> None:
    job = _job(store)
    store.cancel_job(job.id, "not wanted")
    assert _share(store, dispatch_slots=3).claim() == []


def test_priority_comes_from_options() -> None:
    from vtp.errors import InvalidRequest
    from vtp.options import JobOptions, from_metadata

    assert JobOptions.model_validate({"priority": "high"}).priority == 75
    assert JobOptions.model_validate({"priority": 90}).priority == 90
    opts = from_metadata({"X-Amz-Meta-Vtp-Priority": "low"})
    assert opts is not None and opts.priority == 25
    assert opts.identity() == JobOptions().identity(), "not part of what the job makes"
    with pytest.raises(InvalidRequest, match="priority"):
        from_metadata({"x-amz-meta-vtp-priority": "urgent"})
    with pytest.raises(ValueError):
        JobOptions.model_validate({"priority": 101})


def test_spare_slots_are_only_those_nothing_waits_for(store: JobStore) -> None:
    queue = _share(store, dispatch_slots=3, job_window=1)
    _job(store)
    assert queue.spare() == 0, "a task waits"
    queue.claim()  # window 1: one in flight, one waiting still
    assert queue.spare() == 0
    assert PLAN and spec  # the shared plan: two renditions


def test_metrics_count_waiting_and_in_flight_by_priority(store: JobStore) -> None:
    from tests.test_metrics import scrape, value

    before = scrape(store)
    job = _job(store, priority=75)
    (task,) = _share(store, dispatch_slots=1).claim()
    assert task.dispatch_call_id
    store.begin_attempt(job.id, task.rendition, task.dispatch_call_id)
    after = scrape(store)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vtp_tasks_waiting", priority="high") == 1
    assert delta("vtp_calls_in_flight", priority="high") == 1
    assert delta("vtp_start_wait_seconds_count", priority="high") == 1


# --- through the dispatcher: the gateway a real HTTP server that takes every call ------------


def _pipeline(store: JobStore, stack_env: dict[str, str], gateway_url: str, **kw: Any) -> Any:
    """The pipeline on this test's own database, the stack's Redis and S3, and a gateway
    that takes every call (202) without running it, so the test plays the queue-worker."""
    import redis

    from vtp.events import EventBus
    from vtp.invoker import Invoker
    from vtp.pipeline import Pipeline
    from vtp.storage import Storage

    settings = Settings(
        s3_endpoint=stack_env["VTP_S3_ENDPOINT"],
        s3_access_key=stack_env["VTP_S3_ACCESS_KEY"],  # type: ignore[arg-type]
        s3_secret_key=stack_env["VTP_S3_SECRET_KEY"],  # type: ignore[arg-type]
        redis_url=stack_env["VTP_REDIS_URL"],  # type: ignore[arg-type]
        gateway_url=gateway_url,
        **kw,
    )
    bus = EventBus(redis.Redis.from_url(stack_env["VTP_REDIS_URL"]), settings.redis_prefix)
    return Pipeline(settings, store, Storage.from_settings(settings), bus, Invoker(gateway_url))


def _calls(rx: Any, n: int) -> list[str]:
    """The X-Call-Ids of the next `n` calls the gateway took; then that no more came."""
    import queue as q

    ids = [rx.get(timeout=10).headers["X-Call-Id"] for _ in range(n)]
    with pytest.raises(q.Empty):
        rx.requests.get(timeout=0.3)
    return ids


def test_each_ended_call_lets_exactly_one_more_in(
    store: JobStore, stack_env: dict[str, str], app_name: str
) -> None:
    """The queue-worker's reports free slots one for one; a duplicate or late report frees
    nothing; the sweeper dispatches what waits when no report comes."""
    from tests.receiver import Receiver

    with Receiver(status=202) as rx:
        p = _pipeline(store, stack_env, rx.url, dispatch_slots=3, job_window=2,
                      call_report_grace_seconds=0.5)  # fmt: skip
        film = _job(store, chunks=4)
        clip = _job(store)
        sent = p.dispatcher.pump()
        ids = _calls(rx, 3)
        assert sorted(ids) == sorted(str(t.dispatch_call_id) for t in sent)
        flight = _in_flight(store)
        assert sum(flight.values()) == 3 and max(flight.values()) == 2, flight
        # One of the clip's calls runs and ends; its report comes: one call more, the film's.
        done = next(t for t in sent if t.job_id == clip.id)
        call = str(done.dispatch_call_id)
        _finish(store, clip.id, done.rendition)
        p.on_rendition_callback(str(clip.id), done.rendition, function_status=200, call_id=call)
        (more,) = _calls(rx, 1)
        assert store.get(film.id).rendition("720p").task(0).dispatch_call_id is not None
        # The same report again, and a late one of a call nobody waits for: nothing more.
        p.on_rendition_callback(str(clip.id), done.rendition, function_status=200, call_id=call)
        p.on_rendition_callback(str(clip.id), done.rendition, function_status=500,
                                call_id="a-call-long-gone")  # fmt: skip
        _calls(rx, 0)
        assert sum(_in_flight(store).values()) == 3
        # A call ends and its report is lost: the sweeper's round fills the slot.
        running = [t for r in store.get(film.id).renditions for t in r.tasks
                   if t.dispatch_call_id == more]  # fmt: skip
        assert len(running) == 1
        _finish(store, film.id, running[0].rendition, running[0].chunk, reported=False)
        p.sweep()
        _calls(rx, 0)  # the queue-worker may still hold its message...
        time.sleep(0.6)
        p.sweep()
        _calls(rx, 1)  # ...no longer than the grace
        assert sum(_in_flight(store).values()) == 3
        # Reports by the hundred: the work each leaves for later runs on one thread, so the
        # connections stay a handful (a thread each held one for good, and split ran
        # PostgreSQL out of them).
        for _ in range(100):
            p.on_rendition_callback(str(clip.id), done.rendition, function_status=200,
                                    call_id=call)  # fmt: skip
        time.sleep(0.5)
        _calls(rx, 0)
        with store.connection_factory() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (app_name,))  # fmt: skip
            (connections,) = cur.fetchone()
        assert connections <= 6, connections
