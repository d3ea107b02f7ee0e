"""Backup calls for straggling chunks, against a real PostgreSQL: which chunks straggle, the
race of two live calls for one task (the first result wins, once), and what each call's
failure does to the other."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.test_jobs import INFO, PLAN, source
from vtp.errors import Conflict
from vtp.jobs import JobStore
from vtp.lifecycle import TaskState
from vtp.media.chunks import plan_chunks
from vtp.models import RenditionState

LONG = INFO.model_copy(update={"duration": 24.0})


def chunked_job(store: JobStore) -> uuid.UUID:
    """One rendition in three chunks of 8 s."""
    chunks = plan_chunks(24.0, segment_s=4, chunk_s=8, threshold_s=0)
    job, _ = store.create_job(source(), LONG, [PLAN[0]], chunks=chunks)
    return job.id


def straggling(store: JobStore) -> uuid.UUID:
    """Chunk 1 has run for 0.3 s; chunk 0 took a few milliseconds for the same 8 s."""
    jid = chunked_job(store)
    store.begin_attempt(jid, "360p", "slow", chunk=1)
    time.sleep(0.3)
    store.begin_attempt(jid, "360p", "fast", chunk=0)
    store.succeed_task(jid, "360p", {"output_prefix": "p0"}, call_id="fast", chunk=0)
    return jid


def test_a_chunk_far_slower_than_its_siblings_straggles(store: JobStore) -> None:
    jid = straggling(store)
    (found,) = [t for t in store.stragglers(factor=2.5, min_running_s=0) if t.job_id == jid]
    assert (found.chunk, found.last_call_id) == (1, "slow")
    # Not before it has run `min_running_s`, nor when the siblings were as slow.
    assert jid not in {t.job_id for t in store.stragglers(factor=2.5, min_running_s=60)}
    assert jid not in {t.job_id for t in store.stragglers(factor=1e6, min_running_s=0)}
    # A rendition none of whose chunks finished has nothing to measure against.
    other = chunked_job(store)
    store.begin_attempt(other, "360p", "x", chunk=0)
    time.sleep(0.05)
    assert other not in {t.job_id for t in store.stragglers(factor=0.1, min_running_s=0)}


def test_the_first_result_wins_and_counts_once(store: JobStore) -> None:
    """Both calls run; the backup finishes first: its result is the chunk's, the first
    call's heartbeat and result are refused, and the chunk is backed up once only."""
    jid = straggling(store)
    assert store.record_backup(jid, "360p", "backup", chunk=1) is not None
    assert store.record_backup(jid, "360p", "another", chunk=1) is None  # once
    assert not [t for t in store.stragglers(factor=2.5, min_running_s=0) if t.job_id == jid]
    began = store.begin_attempt(jid, "360p", "backup", chunk=1)
    assert began.is_backup("backup") and began.attempts == 1  # the same attempt, no budget
    with pytest.raises(Conflict, match="duplicate delivery"):
        store.begin_attempt(jid, "360p", "backup", chunk=1)  # redelivered
    store.heartbeat(jid, "360p", call_id="slow", attempt=1, chunk=1)
    store.heartbeat(jid, "360p", call_id="backup", attempt=1, chunk=1)
    won = store.succeed_task(
        jid, "360p", {"output_prefix": "p1-backup"}, call_id="backup", attempt=1, chunk=1
    )
    assert won.state is TaskState.SUCCEEDED and won.last_call_id == "backup"
    with pytest.raises(Conflict):
        store.heartbeat(jid, "360p", call_id="slow", attempt=1, chunk=1)
    with pytest.raises(Conflict):
        store.succeed_task(jid, "360p", {"output_prefix": "p1"}, call_id="slow", chunk=1)
    with pytest.raises(Conflict):
        store.fail_task(jid, "360p", "late", retryable=True, call_id="slow", chunk=1)
    task = store.get(jid).rendition("360p").task(1)
    assert task.result == {"output_prefix": "p1-backup"} and task.backups == 1
    assert task.backup_call_id is None and task.attempts == 1
    succeeded = [c for c in store.history(jid) if c.chunk == 1 and c.to_state == "succeeded"]
    assert [(c.call_id, c.detail) for c in succeeded] == [
        ("backup", "backup call won; slow superseded")
    ]


def test_a_failed_backup_is_dropped_and_the_first_call_goes_on(store: JobStore) -> None:
    jid = straggling(store)
    store.record_backup(jid, "360p", "backup", chunk=1)
    store.begin_attempt(jid, "360p", "backup", chunk=1)
    dropped = store.fail_task(jid, "360p", "oom", retryable=True, call_id="backup", chunk=1)
    assert dropped.state is TaskState.RUNNING and dropped.backup_call_id is None
    assert dropped.last_call_id == "slow" and dropped.error is None
    with pytest.raises(Conflict):
        store.heartbeat(jid, "360p", call_id="backup", attempt=1, chunk=1)
    assert store.record_backup(jid, "360p", "again", chunk=1) is None  # one per task
    store.succeed_task(jid, "360p", {"output_prefix": "p1"}, call_id="slow", attempt=1, chunk=1)
    assert store.get(jid).rendition("360p").task(1).result == {"output_prefix": "p1"}


def test_a_death_report_for_the_backup_drops_it_at_once(store: JobStore) -> None:
    jid = straggling(store)
    store.record_backup(jid, "360p", "backup", chunk=1)
    store.begin_attempt(jid, "360p", "backup", chunk=1)
    after = store.report_death(jid, "360p", "backup", "HTTP 500", chunk=1)
    assert after.state is TaskState.RUNNING and after.backup_call_id is None
    assert after.death_reported_at is None  # the first call is not suspected


def test_the_backup_takes_over_from_a_first_call_that_died(store: JobStore) -> None:
    """The first call falls silent while its backup beats: the backup is the attempt now,
    not a retry; had both fallen silent, the task would be retried."""
    jid = straggling(store)
    store.record_backup(jid, "360p", "backup", chunk=1)
    store.begin_attempt(jid, "360p", "backup", chunk=1)
    time.sleep(0.3)
    store.heartbeat(jid, "360p", call_id="backup", attempt=1, chunk=1)
    reaped = [t for t in store.reap_stale(0.2) if t.job_id == jid]
    assert [(t.chunk, t.state, t.last_call_id) for t in reaped] == [
        (1, TaskState.RUNNING, "backup")
    ]
    assert reaped[0].backup_call_id is None and reaped[0].attempts == 1
    with pytest.raises(Conflict):
        store.heartbeat(jid, "360p", call_id="slow", attempt=1, chunk=1)
    store.succeed_task(jid, "360p", {"output_prefix": "p1-backup"}, call_id="backup", chunk=1)
    assert store.get(jid).rendition("360p").task(1).state is TaskState.SUCCEEDED


def test_both_calls_silent_is_a_retry(store: JobStore) -> None:
    jid = straggling(store)
    store.record_backup(jid, "360p", "backup", chunk=1)
    store.begin_attempt(jid, "360p", "backup", chunk=1)
    time.sleep(0.3)
    reaped = {t.chunk: t for t in store.reap_stale(0.2) if t.job_id == jid}
    assert reaped[1].state is TaskState.RETRYING and reaped[1].backup_call_id is None
    assert store.get(jid).rendition("360p").state is RenditionState.RUNNING


def test_a_permanent_failure_of_either_call_fails_the_chunk(store: JobStore) -> None:
    """The same input fails the same way in both: no waiting for the other to find out."""
    jid = straggling(store)
    store.record_backup(jid, "360p", "backup", chunk=1)
    store.begin_attempt(jid, "360p", "backup", chunk=1)
    failed = store.fail_task(jid, "360p", "source gone", retryable=False, call_id="backup",
                             chunk=1)  # fmt: skip
    assert failed.state is TaskState.FAILED and failed.backup_call_id is None
    with pytest.raises(Conflict):
        store.heartbeat(jid, "360p", call_id="slow", attempt=1, chunk=1)
