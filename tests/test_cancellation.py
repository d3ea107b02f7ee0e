"""A job that can no longer succeed stops its own work, against a real PostgreSQL: once one
rendition failed, no chunk of any rendition starts, and running ones stop at their next
heartbeat."""

from __future__ import annotations

import uuid

import pytest

from tests.test_jobs import INFO, PLAN, source
from vtp.errors import Conflict, NotFound
from vtp.jobs import JobStore, summarize_outcome
from vtp.lifecycle import TaskState
from vtp.media.chunks import plan_chunks
from vtp.models import RenditionState

LONG = INFO.model_copy(update={"duration": 24.0})


def two_renditions_in_chunks(store: JobStore) -> uuid.UUID:
    chunks = plan_chunks(24.0, segment_s=4, chunk_s=8, threshold_s=0)
    job, _ = store.create_job(source(), LONG, PLAN, chunks=chunks)
    return job.id


def states(store: JobStore, jid: uuid.UUID, name: str) -> list[TaskState]:
    return [t.state for t in store.get(jid).rendition(name).tasks]


def test_a_failed_rendition_stops_the_other_renditions_chunks(store: JobStore) -> None:
    jid = two_renditions_in_chunks(store)
    store.begin_attempt(jid, "720p", "r0", chunk=0)  # running
    store.begin_attempt(jid, "720p", "r1", chunk=1)
    store.fail_task(jid, "720p", "oom", retryable=True, call_id="r1", chunk=1)  # retrying
    assert store.cancel_doomed(jid) == 0  # nothing failed yet
    store.begin_attempt(jid, "360p", "bad", chunk=0)
    store.fail_task(jid, "360p", "invalid data", retryable=False, call_id="bad", chunk=0)
    assert store.get(jid).rendition("360p").state is RenditionState.FAILED
    assert store.cancel_doomed(jid) == 2  # 720p's chunk 1 (retrying) and 2 (queued)
    assert states(store, jid, "720p") == [
        TaskState.RUNNING, TaskState.CANCELLED, TaskState.CANCELLED,
    ]  # fmt: skip
    # Cancelled, not failed: nothing was wrong with 720p; 360p's failure stopped it.
    assert store.get(jid).rendition("720p").state is RenditionState.CANCELLED
    cancelled = store.get(jid).rendition("720p").task(2)
    assert cancelled.error == "cancelled: rendition 360p is failed, so the job cannot succeed"
    with pytest.raises(Conflict, match="already cancelled"):
        store.begin_attempt(jid, "720p", "queued-call", chunk=2)
    assert store.claim_finalization(jid, "w") is None  # chunk 0 of 720p still runs...
    with pytest.raises(Conflict, match="cancelled: rendition 360p"):
        store.heartbeat(jid, "720p", call_id="r0", attempt=1, chunk=0)  # ...until it beats
    assert states(store, jid, "720p") == [TaskState.CANCELLED] * 3
    job = store.claim_finalization(jid, "w")
    assert job is not None
    state, reason = summarize_outcome(job.renditions)
    assert state.value == "failed" and reason is not None
    # The cause first, then what it stopped, each said once.
    assert reason == (
        "rendition 360p failed: invalid data; "
        "rendition 720p cancelled: rendition 360p is failed, so the job cannot succeed"
    ), reason


def test_a_task_not_cancelled_yet_is_refused_when_its_call_comes(store: JobStore) -> None:
    """The gate in begin_attempt holds without cancel_doomed having run (its transaction
    skipped a task that was busy, or the process died between the two)."""
    jid = two_renditions_in_chunks(store)
    store.begin_attempt(jid, "360p", "bad", chunk=0)
    store.fail_task(jid, "360p", "invalid data", retryable=False, call_id="bad", chunk=0)
    with pytest.raises(Conflict, match="cancelled: rendition 360p is failed"):
        store.begin_attempt(jid, "720p", "c", chunk=1)
    task = store.get(jid).rendition("720p").task(1)
    assert task.state is TaskState.CANCELLED and task.attempts == 0
    trail = [(c.chunk, c.from_state, c.to_state) for c in store.history(jid)
             if c.rendition == "720p"]  # fmt: skip
    assert (1, "queued", "cancelled") in trail


def test_a_job_cancelled_on_request_ends_every_open_task_and_itself(store: JobStore) -> None:
    """Whatever each task was doing: queued, waiting for its retry or running ends
    `cancelled`; what succeeded stays. The gates then hold: a queued call is refused, a
    running attempt's heartbeat and result are refused, and a second cancel is a Conflict."""
    from vtp.models import JobState

    jid = two_renditions_in_chunks(store)
    store.begin_attempt(jid, "720p", "r0", chunk=0)
    store.succeed_task(jid, "720p", {"output_prefix": "x"}, call_id="r0", chunk=0)
    store.begin_attempt(jid, "720p", "r1", chunk=1)
    store.fail_task(jid, "720p", "oom", retryable=True, call_id="r1", chunk=1)  # retrying
    store.begin_attempt(jid, "360p", "r2", chunk=0)  # running
    job, count = store.cancel_job(jid, "cancelled on request")
    assert count == 5  # 720p chunks 1, 2; 360p chunks 0, 1, 2
    assert job.state is JobState.CANCELLED and job.error == "cancelled on request"
    assert job.finished_at is not None
    assert states(store, jid, "720p") == [TaskState.SUCCEEDED] + [TaskState.CANCELLED] * 2
    assert states(store, jid, "360p") == [TaskState.CANCELLED] * 3
    assert {r.state for r in job.renditions} == {RenditionState.CANCELLED}
    with pytest.raises(Conflict, match="already cancelled"):
        store.begin_attempt(jid, "360p", "queued-call", chunk=1)
    with pytest.raises(Conflict, match="cancelled, not running"):
        store.heartbeat(jid, "360p", call_id="r2", attempt=1, chunk=0)
    with pytest.raises(Conflict):
        store.succeed_task(jid, "360p", {"output_prefix": "y"}, call_id="r2", chunk=0)
    assert store.claim_finalization(jid, "w") is None  # nothing to finish: it has ended
    with pytest.raises(Conflict, match=r"has ended \(cancelled\)"):
        store.cancel_job(jid, "again")
    trail = [(c.rendition, c.to_state, c.detail) for c in store.history(jid)]
    assert trail[-1] == (None, "cancelled", "cancelled on request")


def test_a_job_whose_tasks_all_ended_cannot_be_cancelled(store: JobStore) -> None:
    """Every task done: fan-in is finishing it (master playlist, callback); a cancel now
    would race that, so it is refused and changes nothing."""
    job, _ = store.create_job(source(), INFO, PLAN[:1])
    store.begin_attempt(job.id, "360p", "c")
    store.succeed_task(job.id, "360p", {"output_prefix": "x"}, call_id="c")
    with pytest.raises(Conflict, match="is ending"):
        store.cancel_job(job.id, "too late")
    assert store.get(job.id).rendition("360p").state is RenditionState.SUCCEEDED
    with pytest.raises(NotFound):
        store.cancel_job(uuid.uuid4(), "no such job")
