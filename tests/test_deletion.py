"""Deleting jobs and expiring outputs against a real PostgreSQL: the rows go with the job,
the source version stays known to reconciliation, and old jobs are found by their end."""

from __future__ import annotations

import uuid

import pytest

from tests.test_jobs import INFO, PLAN, source
from vtp.errors import Conflict, NotFound
from vtp.jobs import JobStore


def _succeed(store: JobStore, job_id: uuid.UUID) -> None:
    store.begin_attempt(job_id, "360p", "c")
    store.succeed_task(job_id, "360p", {"output_prefix": "x"}, call_id="c")
    assert store.claim_finalization(job_id, "w") is not None
    from vtp.models import JobState

    store.complete_job(job_id, JobState.SUCCEEDED, claimer="w")


def test_a_deleted_job_leaves_no_rows_but_its_version_stays_known(store: JobStore) -> None:
    src = source()
    job, _ = store.create_job(src, INFO, PLAN[:1])
    with pytest.raises(Conflict, match="is queued: cancel it first"):
        store.delete_job(job.id)
    _succeed(store, job.id)
    deleted = store.delete_job(job.id)
    assert deleted.id == job.id and deleted.state.value == "succeeded"
    with pytest.raises(NotFound):
        store.get(job.id)
    assert store.history(job.id) == []
    assert store.find(src, job.options_key) is None
    # Reconciliation must not make it again from the source that stayed.
    assert store.known_versions(src.bucket, [(src.key, src.etag)]) == {(src.key, src.etag)}
    with pytest.raises(NotFound):
        store.delete_job(job.id)


def test_expired_jobs_are_the_ended_ones_older_than_the_retention(store: JobStore) -> None:
    old, _ = store.create_job(source(), INFO, PLAN[:1])
    new, _ = store.create_job(source(), INFO, PLAN[:1])
    running, _ = store.create_job(source(), INFO, PLAN[:1])
    for job in (old, new):
        _succeed(store, job.id)
    store._run(  # ten days ago
        lambda cur: cur.execute(
            "UPDATE jobs SET finished_at = now() - interval '10 days' WHERE id = %s",
            (str(old.id),),
        )
    )
    ids = [j.id for j in store.expired(7, limit=10_000)]
    assert old.id in ids and new.id not in ids and running.id not in ids
    store.mark_outputs_deleted(old.id)
    assert old.id not in [j.id for j in store.expired(7, limit=10_000)]
    assert store.get(old.id).outputs_deleted_at is not None
