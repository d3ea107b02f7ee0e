"""Redriving a failed job against a real PostgreSQL: its dead letters queued again with a
fresh budget, what succeeded kept, and only a failed job redriven."""

from __future__ import annotations

import uuid

import pytest

from tests.test_cancellation import states, two_renditions_in_chunks
from tests.test_jobs import INFO, PLAN, source
from vtp.errors import Conflict, NotFound
from vtp.jobs import CallbackStatus, JobStore, summarize_outcome
from vtp.lifecycle import TaskState
from vtp.models import JobState, RenditionState


def _fail_for_good(store: JobStore, jid: uuid.UUID, name: str, chunk: int, n: int = 3) -> None:
    """Attempts that crash until the budget (3) is spent: the task is dead."""
    for i in range(n):
        store.begin_attempt(jid, name, f"{name}-{chunk}-{i}", chunk=chunk)
        store.fail_task(jid, name, f"oom {i}", retryable=True, call_id=f"{name}-{chunk}-{i}",
                        chunk=chunk)  # fmt: skip


def _end(store: JobStore, jid: uuid.UUID) -> None:
    store.cancel_doomed(jid)
    job = store.claim_finalization(jid, "w")
    assert job is not None
    state, reason = summarize_outcome(job.renditions)
    store.complete_job(jid, state, reason, claimer="w")


def test_a_redrive_queues_the_dead_letters_again_and_keeps_what_succeeded(
    make_store: object,
) -> None:
    store = make_store()  # type: ignore[operator]
    jid = two_renditions_in_chunks(store)
    for chunk in range(3):  # 360p succeeds whole
        store.begin_attempt(jid, "360p", f"ok-{chunk}", chunk=chunk)
        store.succeed_task(jid, "360p", {"output_prefix": f"p{chunk}"}, call_id=f"ok-{chunk}",
                           chunk=chunk)  # fmt: skip
    store.begin_attempt(jid, "720p", "ok-720", chunk=0)
    store.succeed_task(jid, "720p", {"output_prefix": "q0"}, call_id="ok-720", chunk=0)
    _fail_for_good(store, jid, "720p", 1)  # dead; chunk 2 is cancelled for it
    store.attach_callback(jid, "https://example.com/hook")
    _end(store, jid)
    failed = store.get(jid)
    assert failed.state is JobState.FAILED and "dead after 3 attempts" in (failed.error or "")
    assert states(store, jid, "720p") == [TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED]
    assert failed.rendition("720p").state is RenditionState.DEAD  # its own chunk died

    job, tasks = store.redrive_job(jid)
    assert job.state is JobState.QUEUED and job.error is None and job.finished_at is None
    assert job.redrives == 1 and job.callback_status is CallbackStatus.PENDING
    assert job.callback_attempts == 0
    assert [(t.rendition, t.chunk) for t in tasks] == [("720p", 1), ("720p", 2)]
    assert states(store, jid, "360p") == [TaskState.SUCCEEDED] * 3  # kept
    assert states(store, jid, "720p") == [TaskState.SUCCEEDED] + [TaskState.QUEUED] * 2
    assert job.rendition("360p").state is RenditionState.SUCCEEDED
    # 720p has a chunk done: running, as a rendition is from its first chunk's start.
    assert job.rendition("720p").state is RenditionState.RUNNING
    again = job.rendition("720p").task(1)
    assert (again.attempts, again.budget_from, again.redrives, again.error) == (3, 3, 1, None)

    # A fresh budget: the fourth attempt's crash is a retry, not the end.
    store.begin_attempt(jid, "720p", "after-1", chunk=1)
    retried = store.fail_task(jid, "720p", "oom again", retryable=True, call_id="after-1",
                              chunk=1)  # fmt: skip
    assert retried.state is TaskState.RETRYING and retried.attempts == 4
    trail = [(c.rendition, c.chunk, c.from_state, c.to_state, c.detail)
             for c in store.history(jid)]  # fmt: skip
    assert ("720p", 1, "dead", "queued", "redriven: queued again with a fresh budget") in trail
    assert (None, None, "failed", "queued",
            "redriven: queued again with a fresh budget: 720p") in trail  # fmt: skip

    # Once they succeed, the job does.
    store.begin_attempt(jid, "720p", "after-2", chunk=1)
    store.succeed_task(jid, "720p", {"output_prefix": "q1"}, call_id="after-2", chunk=1)
    store.begin_attempt(jid, "720p", "after-3", chunk=2)
    store.succeed_task(jid, "720p", {"output_prefix": "q2"}, call_id="after-3", chunk=2)
    _end(store, jid)
    assert store.get(jid).state is JobState.SUCCEEDED


def test_a_redrive_reopens_what_a_dead_letter_cancelled(store: JobStore) -> None:
    """One rendition dead stops the other, which ends cancelled (nothing was wrong with it)
    and names the cause; a redrive reopens both, or the job could never succeed."""
    jid = two_renditions_in_chunks(store)
    _fail_for_good(store, jid, "360p", 0)
    _end(store, jid)
    job = store.get(jid)
    assert job.state is JobState.FAILED
    assert job.rendition("360p").state is RenditionState.DEAD
    assert job.rendition("720p").state is RenditionState.CANCELLED
    assert states(store, jid, "720p") == [TaskState.CANCELLED] * 3
    assert job.error == (
        "rendition 360p dead after 3 attempts: oom 2; "
        "rendition 720p cancelled: rendition 360p is dead, so the job cannot succeed"
    ), job.error

    job, tasks = store.redrive_job(jid)
    assert sorted((t.rendition, t.chunk) for t in tasks) == [
        (name, chunk) for name in ("360p", "720p") for chunk in range(3)
    ]
    assert {r.state for r in job.renditions} == {RenditionState.QUEUED}
    assert job.state is JobState.QUEUED


def test_only_a_failed_job_with_renditions_is_redriven(store: JobStore) -> None:
    running, _ = store.create_job(source(), INFO, PLAN[:1])
    with pytest.raises(Conflict, match="is queued: only a failed job"):
        store.redrive_job(running.id)
    refused, _ = store.record_rejected(source(), "not a video")
    with pytest.raises(Conflict, match="no failed rendition to redrive"):
        store.redrive_job(refused.id)
    cancelled, _ = store.cancel_job(running.id, "stop")
    with pytest.raises(Conflict, match="is cancelled"):
        store.redrive_job(cancelled.id)
    with pytest.raises(NotFound):
        store.redrive_job(uuid.uuid4())
