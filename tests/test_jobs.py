"""The job store against a real PostgreSQL: migrations, transitions, races, the sweeper's view.

Every test gets its own freshly created database (vtp_test_<random>), dropped afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from vtp import db
from vtp.errors import Conflict, InvalidRequest, NotFound
from vtp.jobs import CallbackStatus, JobStore, SourceRef, summarize_outcome
from vtp.lifecycle import TaskState
from vtp.models import JobState, RenditionSpec, RenditionState, SourceInfo

INFO = SourceInfo(
    duration=12.5, width=1920, height=1080, fps=30.0, has_audio=True, video_codec="h264"
)


def spec(name: str, height: int) -> RenditionSpec:
    width = height * 16 // 9 // 2 * 2
    return RenditionSpec(
        name=name,
        function=f"transcode-{name}",
        width=width,
        height=height,
        fps=30.0,
        video_bitrate=height * 3000,
        max_bitrate=height * 3300,
        buffer_size=height * 6000,
        audio_bitrate=128_000,
    )


PLAN = [spec("360p", 360), spec("720p", 720)]


def source(**kw: Any) -> SourceRef:
    fields: dict[str, Any] = {
        "bucket": "uploads",
        "key": f"clips/{uuid.uuid4().hex}.mp4",
        "etag": uuid.uuid4().hex,
        "size": 1234,
    }
    fields.update(kw)
    return SourceRef(**fields)


def run_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    """Run target(i) in n threads released together; return results, re-raise any error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


# --- migrations ---------------------------------------------------------------------------


def _migration_rows(dsn: str) -> list[tuple[int, str]]:
    conn = db.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
            return [(int(v), str(n)) for v, n in cur.fetchall()]
    finally:
        conn.close()


def test_migrations_are_packaged_in_order() -> None:
    migrations = db.load_migrations()
    assert migrations[0].name == "0001_initial"
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})


def test_migrate_twice_is_a_noop(empty_dsn: str) -> None:
    names = [m.name for m in db.load_migrations()]
    conn = db.connect(empty_dsn)
    try:
        assert db.migrate(conn) == names
        assert db.migrate(conn) == []
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('jobs'), to_regclass('renditions')")
            assert cur.fetchone() == ("jobs", "renditions")
        conn.rollback()
    finally:
        conn.close()
    assert [n for _, n in _migration_rows(empty_dsn)] == names


def test_tasks_migration_keeps_the_runs_of_existing_jobs(empty_dsn: str) -> None:
    """0006 moves attempts, leases and call ids from renditions to tasks: a job made on the
    schema before it (one rendition done after a retry, one waiting for its retry) reads the
    same afterwards, each rendition with its one task, and keeps its trail."""
    conn = db.connect(empty_dsn)
    try:
        db.migrate(conn, upto=5)
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO jobs (source_bucket, source_key, source_etag, state, started_at)"
                " VALUES ('b', 'k.mp4', 'e1', 'running', now()) RETURNING id"
            )
            row = cur.fetchone()
            assert row is not None
            (job_id,) = row
            cur.execute(
                """
                INSERT INTO renditions (job_id, name, ordinal, function, spec, state, attempts,
                    last_call_id, started_at, finished_at, output_prefix, size_bytes, result,
                    error, next_retry_at, refusals, dispatch_call_id, dispatched_at)
                VALUES
                  (%(j)s, '360p', 0, 'transcode-360p', %(s360)s, 'succeeded', 2, 'c2', now(),
                   now(), 'x/360p/attempt-2', 1234, '{"playlist": "index.m3u8"}', NULL, NULL,
                   0, 'c2', now()),
                  (%(j)s, '720p', 1, 'transcode-720p', %(s720)s, 'retrying', 1, 'c3', now(),
                   NULL, NULL, NULL, NULL, 'HTTP 500', now() + interval '1 minute', 1, 'c4',
                   now())
                """,
                {
                    "j": job_id,
                    "s360": PLAN[0].model_dump_json(),
                    "s720": PLAN[1].model_dump_json(),
                },
            )
            cur.execute(
                "INSERT INTO state_changes (job_id, rendition, from_state, to_state, attempt)"
                " VALUES (%s, '720p', 'running', 'retrying', 1)",
                (job_id,),
            )
        conn.commit()
        assert db.migrate(conn, upto=6) == ["0006_tasks"]
        assert db.migrate(conn, upto=7) == ["0007_backup_calls"]
        # 0008: the plan and measured quality start empty for a job from before them.
        assert db.migrate(conn, upto=8) == ["0008_quality"]
        # 0009: a job from before options were part of its identity is the default
        # ladder's job of its formats, which a redelivered bucket event finds.
        assert db.migrate(conn, upto=9) == ["0009_job_options"]
        assert db.migrate(conn, upto=10) == ["0010_cancelled"]
        assert db.migrate(conn, upto=13) == ["0011_redrive", "0012_deletion", "0013_ready"]
        assert db.migrate(conn, upto=14) == ["0014_job_outputs"]
    finally:
        conn.close()
    store = JobStore(partial(db.connect, empty_dsn))
    try:
        job = store.get(job_id)
        done, waiting = job.rendition("360p"), job.rendition("720p")
        assert done.state is RenditionState.SUCCEEDED and done.output_prefix == "x/360p/attempt-2"
        assert done.result == {"playlist": "index.m3u8"} and done.attempts == 2
        (task,) = done.tasks
        assert (task.chunk, task.state, task.attempts, task.last_call_id) == (
            0, TaskState.SUCCEEDED, 2, "c2",
        )  # fmt: skip
        assert task.start_s is None and task.result == done.result
        assert job.plan is None and done.quality_score is None and done.quality_flagged is None
        assert job.options_key == "renditions=*;formats=hls" and job.options is None
        assert (job.redrives, job.outputs_deleted_at, job.ready, job.outputs) == (0, None, [], {})
        assert (done.tasks[0].budget_from, done.tasks[0].redrives) == (0, 0)
        assert store.find(job.source, job.options_key) is not None
        (task,) = waiting.tasks
        assert waiting.state is RenditionState.RETRYING and waiting.error == "HTTP 500"
        assert (task.state, task.attempts, task.refusals, task.dispatch_call_id) == (
            TaskState.RETRYING, 1, 1, "c4",
        )  # fmt: skip
        assert task.next_retry_at is not None and task.error == "HTTP 500"
        assert [(c.rendition, c.to_state) for c in store.history(job_id)] == [("720p", "retrying")]
        # And it runs on: the retry is due in a minute, begins, and ends the job's last task.
        store.begin_attempt(job_id, "720p", "c4")
        store.succeed_task(job_id, "720p", {"output_prefix": "x/720p/attempt-2"}, call_id="c4")
        assert store.claim_finalization(job_id, "w") is not None
    finally:
        store.close()


def test_a_rendition_of_several_tasks_follows_them(store: JobStore, dsn: str) -> None:
    """Chunks (issue: segment-parallel encoding) are rows of the same table: the rendition is
    running from its first chunk's start to its last one's end, failed by any chunk that
    failed, and the job is finished only when no task is open; the rendition's own moves
    are in the trail beside its tasks'."""
    job, _ = store.create_job(source(), INFO, [PLAN[0]])
    conn = db.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET start_s = 0, end_s = 30 WHERE job_id = %s", (str(job.id),)
            )
            cur.execute(
                "INSERT INTO tasks (job_id, rendition, chunk, function, start_s, end_s)"
                " VALUES (%s, '360p', 1, 'transcode-360p', 30, 60),"
                "        (%s, '360p', 2, 'transcode-360p', 60, 90)",
                (str(job.id), str(job.id)),
            )
        conn.commit()
    finally:
        conn.close()

    def state() -> RenditionState:
        return store.get(job.id).rendition("360p").state

    first = store.begin_attempt(job.id, "360p", "a", chunk=0)
    assert first.rendition_state is RenditionState.RUNNING and state() is RenditionState.RUNNING
    store.succeed_task(job.id, "360p", {"segments": 5}, call_id="a", chunk=0)
    assert state() is RenditionState.RUNNING  # half of it is encoded
    assert store.claim_finalization(job.id, "w") is None
    store.begin_attempt(job.id, "360p", "b", chunk=1)
    failed = store.fail_task(job.id, "360p", "bad data", retryable=False, call_id="b", chunk=1)
    assert failed.state is TaskState.FAILED and failed.rendition_state is RenditionState.FAILED
    rend = store.get(job.id).rendition("360p")
    assert rend.state is RenditionState.FAILED and rend.error == "bad data"
    assert rend.result is None  # a chunk's result is not the rendition's
    # Chunk 2 never ran: cancelled rather than encoded for a rendition that cannot succeed
    # (cancelled, not failed: nothing was wrong with it).
    assert [t.state for t in rend.tasks] == [
        TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED,
    ]  # fmt: skip
    assert "cancelled: rendition 360p is failed" in str(rend.task(2).error)
    with pytest.raises(Conflict, match="already cancelled"):
        store.begin_attempt(job.id, "360p", "c", chunk=2)  # its call, queued before, arrives
    assert store.claim_finalization(job.id, "w") is not None
    trail = [(c.chunk, c.from_state, c.to_state) for c in store.history(job.id) if c.rendition]
    assert trail == [
        (0, "queued", "running"),
        (None, "queued", "running"),
        (0, "running", "succeeded"),
        (1, "queued", "running"),
        (1, "running", "failed"),
        (None, "running", "failed"),
        (2, "queued", "cancelled"),
    ]


def test_concurrent_migrate_applies_each_migration_once(empty_dsn: str) -> None:
    def cold_start(_: int) -> list[str]:
        conn = db.connect(empty_dsn)
        try:
            return db.migrate(conn)
        finally:
            conn.close()

    results = run_threads(8, cold_start)
    names = [m.name for m in db.load_migrations()]
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(names)
    assert sum(1 for r in results if r) == 1  # one caller did it all, in order
    assert next(r for r in results if r) == names
    assert [n for _, n in _migration_rows(empty_dsn)] == names


def test_connect_settings(dsn: str) -> None:
    conn = db.connect(dsn, application_name="vtp-split")
    try:
        assert conn.autocommit is False
        with conn.cursor() as cur:
            cur.execute("SHOW application_name")
            assert cur.fetchone() == ("vtp-split",)
            cur.execute("SHOW timezone")
            assert cur.fetchone() == ("UTC",)
        conn.rollback()
    finally:
        conn.close()


# --- jobs ---------------------------------------------------------------------------------


def test_create_job_is_idempotent(store: JobStore) -> None:
    src = source()
    job, created = store.create_job(
        src, INFO, PLAN, formats=["hls", "mp4"], callback_url="http://cb/x"
    )
    assert created
    assert job.state is JobState.QUEUED
    assert job.source.bucket == src.bucket and job.source.key == src.key
    assert job.source_info == INFO
    assert job.formats == ["hls", "mp4"]
    assert job.callback_status is CallbackStatus.PENDING
    assert [r.name for r in job.renditions] == ["360p", "720p"]
    assert job.rendition("720p").spec == PLAN[1]
    assert all(r.state is RenditionState.QUEUED and r.attempts == 0 for r in job.renditions)

    again, created_again = store.create_job(src, INFO, PLAN, formats=["hls"], callback_url=None)
    assert not created_again
    assert again.id == job.id
    # The same object with a quoted ETag (as S3 headers carry it) is the same job.
    quoted, created_quoted = store.create_job(
        src.model_copy(update={"etag": f'"{src.etag}"'}), INFO, PLAN
    )
    assert not created_quoted and quoted.id == job.id
    # A new version of the object (new ETag) is a new job.
    other, created_other = store.create_job(
        src.model_copy(update={"etag": "different"}), INFO, PLAN
    )
    assert created_other and other.id != job.id


def test_concurrent_create_makes_one_job(store: JobStore) -> None:
    src = source()
    results = run_threads(8, lambda _: store.create_job(src, INFO, PLAN))
    assert sum(1 for _, created in results if created) == 1
    assert len({job.id for job, _ in results}) == 1


def test_create_job_validates_plan(store: JobStore) -> None:
    with pytest.raises(InvalidRequest):
        store.create_job(source(), INFO, [])
    with pytest.raises(InvalidRequest):
        store.create_job(source(), INFO, [PLAN[0], PLAN[0]])


def test_rejected_job(store: JobStore) -> None:
    src = source()
    job, created = store.record_rejected(src, "no video stream", callback_url="http://cb/y")
    assert created
    assert job.state is JobState.FAILED
    assert job.error == "no video stream"
    assert job.finished_at is not None
    assert job.renditions == []
    assert job.callback_status is CallbackStatus.PENDING
    again, created_again = store.record_rejected(src, "no video stream")
    assert not created_again and again.id == job.id
    # A redelivered event for the same object finds the rejection, not a new job.
    same, created_same = store.create_job(src, INFO, PLAN)
    assert not created_same and same.id == job.id and same.state is JobState.FAILED
    assert store.claim_finalization(job.id, "anyone") is None


def test_get_and_list(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.get(uuid.uuid4())
    with pytest.raises(NotFound):
        store.get("not-a-uuid")
    a, _ = store.create_job(source(), INFO, PLAN)
    b, _ = store.create_job(source(), INFO, PLAN)
    c, _ = store.record_rejected(source(), "too long")
    store.begin_attempt(b.id, "360p", "call-b")
    assert [j.id for j in store.list()] == [c.id, b.id, a.id]
    assert [j.id for j in store.list(JobState.RUNNING)] == [b.id]
    assert [j.id for j in store.list(JobState.QUEUED)] == [a.id]
    assert [j.id for j in store.list(JobState.FAILED)] == [c.id]
    assert [j.id for j in store.list(limit=2)] == [c.id, b.id]
    assert [j.id for j in store.list(before=b.created_at)] == [a.id]
    listed = store.list(JobState.RUNNING)[0]
    assert listed.rendition("360p").state is RenditionState.RUNNING


# --- attempts -----------------------------------------------------------------------------


def test_begin_attempt_starts_rendition_and_job(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    r = store.begin_attempt(job.id, "720p", "call-1")
    assert r.state is TaskState.RUNNING and r.rendition_state is RenditionState.RUNNING
    assert r.attempts == 1
    assert r.last_call_id == "call-1"
    assert r.heartbeat_at is not None and r.started_at is not None
    job = store.get(job.id)
    assert job.state is JobState.RUNNING and job.started_at is not None
    assert job.rendition("360p").state is RenditionState.QUEUED
    with pytest.raises(NotFound):
        store.begin_attempt(job.id, "4k", "call-1")


def test_duplicate_delivery_is_a_conflict(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    store.begin_attempt(job.id, "360p", "call-1")
    with pytest.raises(Conflict, match="duplicate delivery"):
        store.begin_attempt(job.id, "360p", "call-1")  # the queue redelivered the message
    with pytest.raises(Conflict):
        store.begin_attempt(job.id, "360p", "call-2")  # a second dispatch
    assert store.get(job.id).rendition("360p").attempts == 1
    with pytest.raises(Conflict):
        store.succeed_task(job.id, "360p", {}, call_id="call-2")
    done = store.succeed_task(
        job.id,
        "360p",
        {"output_prefix": "jobs/x/360p/", "size_bytes": 1000, "avg_bitrate": 800_000, "n": 3},
        call_id="call-1",
    )
    assert done.state is TaskState.SUCCEEDED and done.finished_at is not None
    assert done.rendition_state is RenditionState.SUCCEEDED
    rend = store.get(job.id).rendition("360p")  # a rendition encoded whole: its task's result
    assert rend.output_prefix == "jobs/x/360p/" and rend.size_bytes == 1000
    assert rend.avg_bitrate == 800_000 and rend.peak_bitrate is None
    assert rend.finished_at is not None and rend.result == done.result
    assert done.result == {
        "output_prefix": "jobs/x/360p/",
        "size_bytes": 1000,
        "avg_bitrate": 800_000,
        "n": 3,
    }
    with pytest.raises(Conflict, match="already succeeded"):
        store.begin_attempt(job.id, "360p", "call-3")
    with pytest.raises(Conflict):
        store.fail_task(job.id, "360p", "late", retryable=True, max_attempts=3)
    with pytest.raises(Conflict):
        store.succeed_task(job.id, "360p", {})


def test_retry_backoff_then_dead(make_store: Callable[..., JobStore]) -> None:
    store = make_store(retry_base_s=10.0, retry_max_s=25.0)
    job, _ = store.create_job(source(), INFO, PLAN)
    expected_delays = [10.0, 20.0, 25.0, 25.0]
    for attempt, delay in enumerate(expected_delays, start=1):
        r = store.begin_attempt(job.id, "720p", f"call-{attempt}")
        assert r.attempts == attempt
        state = store.fail_task(
            job.id, "720p", f"upload failed #{attempt}", retryable=True, max_attempts=5
        ).state
        assert state is TaskState.RETRYING
        assert store.get(job.id).rendition("720p").state is RenditionState.RETRYING
        r = store.get(job.id).rendition("720p").task()
        assert r.next_retry_at is not None and r.finished_at is None
        waited = (r.next_retry_at - r.updated_at).total_seconds()
        assert waited == pytest.approx(delay, abs=0.01)
    store.begin_attempt(job.id, "720p", "call-5")
    state = store.fail_task(
        job.id, "720p", "upload failed #5", retryable=True, max_attempts=5, call_id="call-5"
    ).state
    assert state is TaskState.DEAD
    rend = store.get(job.id).rendition("720p")
    assert rend.state is RenditionState.DEAD and rend.error == "upload failed #5"
    assert rend.attempts == 5 and rend.finished_at is not None
    assert rend.task().finished_at is not None and rend.task().next_retry_at is None
    with pytest.raises(Conflict):
        store.begin_attempt(job.id, "720p", "call-6")


def test_permanent_failure(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    store.begin_attempt(job.id, "360p", "call-1")
    state = store.fail_task(
        job.id, "360p", "corrupt input", retryable=False, max_attempts=3, call_id="call-1"
    ).state
    assert state is TaskState.FAILED
    r = store.get(job.id).rendition("360p")
    assert r.error == "corrupt input" and r.attempts == 1 and r.finished_at is not None


def test_failed_dispatch_spends_no_attempt(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    assert store.record_dispatch(job.id, "720p", "call-1") is not None
    rend = store.record_refusal(job.id, "720p", "call-1", "gateway refused: 503")
    assert rend.state is TaskState.RETRYING
    assert rend.attempts == 0 and rend.refusals == 1
    assert rend.error is not None and rend.error.startswith("gateway refused: 503")


def test_refusals_have_a_budget_then_dead_letter(make_store: Callable[..., JobStore]) -> None:
    """A function that stays down (every call refused) ends dead with its reason, after
    `max_refusals` calls and back-off between them, instead of being called forever."""
    store = make_store(retry_base_s=1.0, retry_max_s=4.0, max_refusals=4)
    job, _ = store.create_job(source(), INFO, [PLAN[0]])
    delays = []
    for n in range(1, 5):
        store.record_dispatch(job.id, "360p", f"call-{n}")
        rend = store.record_refusal(
            job.id, "360p", f"call-{n}", "HTTP 500: Can't reach service for: transcode-360p."
        )
        assert rend.refusals == n and rend.attempts == 0
        if n < 4:
            assert rend.state is TaskState.RETRYING
            assert rend.next_retry_at is not None
            delays.append(round((rend.next_retry_at - rend.updated_at).total_seconds(), 1))
    assert delays == [1.0, 2.0, 4.0]
    assert rend.state is TaskState.DEAD and rend.finished_at is not None
    assert rend.rendition_state is RenditionState.DEAD
    assert rend.error is not None and "Can't reach service" in rend.error
    assert "4 calls in a row refused" in rend.error
    claimed = store.claim_finalization(job.id, "w")
    assert claimed is not None  # the job can end: nothing hangs
    state, reason = summarize_outcome(claimed.renditions)
    assert state is JobState.FAILED and reason is not None and "refused" in reason


def test_refusal_of_a_superseded_call_changes_nothing(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    store.record_dispatch(job.id, "360p", "old")
    store.record_dispatch(job.id, "360p", "new")  # e.g. the sweeper re-dispatched it
    with pytest.raises(Conflict, match="superseded"):
        store.record_refusal(job.id, "360p", "old", "HTTP 502")
    rend = store.get(job.id).rendition("360p")
    assert rend.state is RenditionState.QUEUED and rend.task().refusals == 0
    store.begin_attempt(job.id, "360p", "new")
    with pytest.raises(Conflict, match="not waiting"):
        store.record_refusal(job.id, "360p", "new", "HTTP 502")


def test_a_started_call_resets_the_refusal_count(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    store.record_dispatch(job.id, "360p", "c1")
    store.record_refusal(job.id, "360p", "c1", "HTTP 429")
    store.record_dispatch(job.id, "360p", "c2")
    assert store.begin_attempt(job.id, "360p", "c2").refusals == 0
    assert store.record_dispatch(job.id, "360p", "c3") is None  # running: nothing to dispatch


def test_a_redelivered_call_id_does_not_hand_the_new_attempt_to_the_zombie(
    store: JobStore,
) -> None:
    """A redelivered message keeps its call id: after the sweeper wrote attempt 1 off, the
    same call id begins attempt 2 while attempt 1's process still encodes. Reports of
    attempt 1 name its number and are refused; attempt 2's are taken."""
    job, _ = store.create_job(source(), INFO, PLAN)
    store.begin_attempt(job.id, "720p", "c1")
    store.reap_stale(0)
    assert store.get(job.id).rendition("720p").state is RenditionState.RETRYING
    store.begin_attempt(job.id, "720p", "c1")  # the redelivery, same call id
    for late in (
        lambda: store.heartbeat(job.id, "720p", call_id="c1", attempt=1),
        lambda: store.fail_task(job.id, "720p", "late", retryable=True, call_id="c1",
                                     attempt=1),
        lambda: store.succeed_task(job.id, "720p", {"output_prefix": "x/720p/attempt-1"},
                                        call_id="c1", attempt=1),
    ):  # fmt: skip
        with pytest.raises(Conflict, match="attempt 2"):
            late()
    rend = store.get(job.id).rendition("720p")
    assert rend.state is RenditionState.RUNNING and rend.attempts == 2 and rend.error is not None
    store.heartbeat(job.id, "720p", call_id="c1", attempt=2)
    done = store.succeed_task(
        job.id, "720p", {"output_prefix": f"{job.id}/720p/attempt-2"}, call_id="c1", attempt=2
    )
    assert done.state is TaskState.SUCCEEDED
    assert store.get(job.id).rendition("720p").output_prefix == f"{job.id}/720p/attempt-2"


def test_a_death_report_is_refuted_by_a_heartbeat_and_confirmed_by_silence(
    store: JobStore,
) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    store.begin_attempt(job.id, "720p", "c1")
    with pytest.raises(Conflict):
        store.report_death(job.id, "720p", "c0", "HTTP 500")  # not the call running
    reported = store.report_death(job.id, "720p", "c1", "HTTP 500: forged")
    assert reported.state is TaskState.RUNNING and reported.death_reported_at is not None
    store.heartbeat(job.id, "720p", call_id="c1", attempt=1)  # alive after all
    alive = store.get(job.id).rendition("720p").task()
    assert alive.death_reported_at is None and alive.death_report is None
    time.sleep(0.3)
    assert store.confirm_deaths(0.1, job_id=job.id) == []
    assert store.get(job.id).rendition("720p").state is RenditionState.RUNNING

    store.report_death(job.id, "720p", "c1", "HTTP 502: killed")
    assert store.confirm_deaths(30, job_id=job.id) == []  # not silent long enough yet
    time.sleep(0.3)
    (confirmed,) = store.confirm_deaths(0.1, job_id=job.id)
    assert confirmed.state is TaskState.RETRYING and confirmed.error == "HTTP 502: killed"
    assert confirmed.rendition_state is RenditionState.RETRYING
    with pytest.raises(Conflict):
        store.heartbeat(job.id, "720p", call_id="c1", attempt=1)  # a zombie after all
    store.record_dispatch(job.id, "720p", "c2")
    again = store.begin_attempt(job.id, "720p", "c2")
    assert again.death_reported_at is None and again.attempts == 2


def test_late_report_of_a_superseded_attempt_changes_nothing(store: JobStore) -> None:
    """of-watchdog's 504 wrote attempt 1 off while its encode went on; the late failure,
    heartbeat or success of attempt 1 must neither touch attempt 2 nor push its retry."""
    job, _ = store.create_job(source(), INFO, PLAN)
    store.begin_attempt(job.id, "720p", "a1")
    store.fail_task(job.id, "720p", "HTTP 504", retryable=True, call_id="a1")
    before = store.get(job.id).rendition("720p").task()
    assert before.state is TaskState.RETRYING
    for late in (
        lambda: store.fail_task(job.id, "720p", "late", retryable=True, call_id="a1"),
        lambda: store.heartbeat(job.id, "720p", call_id="a1"),
        lambda: store.succeed_task(job.id, "720p", {}, call_id="a1"),
    ):
        with pytest.raises(Conflict):
            late()
    after = store.get(job.id).rendition("720p").task()
    assert after.next_retry_at == before.next_retry_at and after.error == "HTTP 504"
    store.record_dispatch(job.id, "720p", "a2")
    store.begin_attempt(job.id, "720p", "a2")
    with pytest.raises(Conflict, match="written off"):
        store.fail_task(job.id, "720p", "late", retryable=True, call_id="a1")
    rend = store.get(job.id).rendition("720p")
    assert rend.state is RenditionState.RUNNING and rend.task().last_call_id == "a2"
    assert rend.attempts == 2
    changes = [(c.from_state, c.to_state) for c in store.history(job.id) if c.rendition == "720p"]
    assert ("retrying", "retrying") not in changes


def test_short_job_ids_resolve(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    short = str(job.id)[:8]
    assert store.resolve_id(short) == job.id
    assert store.resolve_id(short.upper()) == job.id
    assert store.resolve_id(str(job.id)) == job.id
    for bad in ("zz", "abc", "'; DROP TABLE jobs; --", "%"):
        with pytest.raises(NotFound):
            store.resolve_id(bad)


# --- sweeper ------------------------------------------------------------------------------

STALE_S = 1.0  # heartbeat age that counts as vanished in these tests; margins for slow CI


@pytest.mark.slow
def test_stale_renditions_are_reaped(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    store.begin_attempt(job.id, "360p", "call-1")
    store.begin_attempt(job.id, "720p", "call-2")
    assert store.stale_tasks(STALE_S) == []
    time.sleep(STALE_S + 0.3)
    store.heartbeat(job.id, "720p", call_id="call-2")  # 720p is alive, 360p went silent
    stale = store.stale_tasks(STALE_S)
    assert [(r.job_id, r.rendition) for r in stale] == [(job.id, "360p")]
    with pytest.raises(Conflict):
        store.heartbeat(job.id, "360p", call_id="someone-else")

    reaped = store.reap_stale(STALE_S, max_attempts=2)
    assert [(r.rendition, r.state) for r in reaped] == [("360p", TaskState.RETRYING)]
    assert reaped[0].error is not None and "no heartbeat" in reaped[0].error
    assert store.stale_tasks(STALE_S) == []
    # The vanished worker comes back: it is told to stop and cannot report.
    with pytest.raises(Conflict):
        store.heartbeat(job.id, "360p", call_id="call-1")
    with pytest.raises(Conflict):
        store.succeed_task(job.id, "360p", {}, call_id="call-1")

    # The retry runs and goes silent too: with attempts exhausted it is dead.
    r = store.begin_attempt(job.id, "360p", "call-3")
    assert r.attempts == 2
    with pytest.raises(Conflict):  # the old worker's late failure must not end the new attempt
        store.fail_task(job.id, "360p", "late", retryable=True, max_attempts=2, call_id="call-1")
    time.sleep(STALE_S + 0.3)
    store.heartbeat(job.id, "720p", call_id="call-2")
    reaped = store.reap_stale(STALE_S, max_attempts=2)
    assert [(r.rendition, r.state) for r in reaped] == [("360p", TaskState.DEAD)]
    assert store.get(job.id).rendition("720p").state is RenditionState.RUNNING


# --- fan-in -------------------------------------------------------------------------------


def _finish_all(store: JobStore, job_id: uuid.UUID, names: list[str]) -> None:
    for name in names:
        store.begin_attempt(job_id, name, f"call-{name}")
        store.succeed_task(job_id, name, {"output_prefix": f"out/{name}/"})


def test_claim_needs_every_rendition_ended(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    _finish_all(store, job.id, ["360p"])
    assert store.claim_finalization(job.id, "w1") is None
    store.begin_attempt(job.id, "720p", "c")
    assert store.claim_finalization(job.id, "w1") is None
    store.fail_task(job.id, "720p", "bad", retryable=True, max_attempts=3)
    assert store.claim_finalization(job.id, "w1") is None  # retrying is not the end
    with pytest.raises(NotFound):
        store.claim_finalization(uuid.uuid4(), "w1")


def test_exactly_one_of_eight_claimers_wins(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    _finish_all(store, job.id, ["360p", "720p"])
    results = run_threads(8, lambda i: store.claim_finalization(job.id, f"claimer-{i}"))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    winner = winners[0]
    assert winner.finalize_claimed_by == f"claimer-{results.index(winner)}"
    assert store.claim_finalization(job.id, "late") is None


def test_renditions_finishing_together_finalize_once(store: JobStore) -> None:
    """Eight renditions end at the same instant; each worker then tries to finalize."""
    plan = [spec(f"{h}p", h) for h in (144, 240, 360, 480, 540, 720, 900, 1080)]
    for _round in range(5):
        job, _ = store.create_job(source(), INFO, plan)
        for i, r in enumerate(plan):
            store.begin_attempt(job.id, r.name, f"call-{i}")

        def worker(i: int, job_id: uuid.UUID = job.id) -> bool:
            name = plan[i].name
            if i % 3 == 0:
                store.fail_task(
                    job_id, name, "boom", retryable=False, max_attempts=3, call_id=f"call-{i}"
                )
            else:
                store.succeed_task(job_id, name, {}, call_id=f"call-{i}")
            return store.claim_finalization(job_id, f"worker-{i}") is not None

        results = run_threads(8, worker)
        assert results.count(True) == 1, results


def test_complete_job_and_outcome(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    _finish_all(store, job.id, ["360p"])
    store.begin_attempt(job.id, "720p", "c1")
    store.fail_task(job.id, "720p", "encoder OOM", retryable=True, max_attempts=1)
    claimed = store.claim_finalization(job.id, "w")
    assert claimed is not None
    state, reason = summarize_outcome(claimed.renditions)
    assert state is JobState.FAILED
    assert reason == "rendition 720p dead after 1 attempt: encoder OOM"
    with pytest.raises(Conflict):
        store.complete_job(job.id, state, reason, claimer="not-me")
    done = store.complete_job(job.id, state, reason, claimer="w", master_playlist="m.m3u8")
    assert done.state is JobState.FAILED and done.error == reason
    assert done.finished_at is not None and done.master_playlist == "m.m3u8"
    with pytest.raises(Conflict):
        store.complete_job(job.id, JobState.SUCCEEDED)
    with pytest.raises(ValueError, match="reason"):
        store.complete_job(job.id, JobState.FAILED)

    ok, _ = store.create_job(source(), INFO, PLAN)
    _finish_all(store, ok.id, ["360p", "720p"])
    claimed = store.claim_finalization(ok.id, "w")
    assert claimed is not None
    assert summarize_outcome(claimed.renditions) == (JobState.SUCCEEDED, None)
    assert store.complete_job(ok.id, JobState.SUCCEEDED).state is JobState.SUCCEEDED


def test_abandoned_finalization_is_due_again(store: JobStore) -> None:
    unclaimed, _ = store.create_job(source(), INFO, PLAN)
    _finish_all(store, unclaimed.id, ["360p", "720p"])  # last worker died before claiming
    abandoned, _ = store.create_job(source(), INFO, PLAN)
    _finish_all(store, abandoned.id, ["360p", "720p"])
    in_flight, _ = store.create_job(source(), INFO, PLAN)
    _finish_all(store, in_flight.id, ["360p"])
    assert store.claim_finalization(abandoned.id, "crashed-worker") is not None

    due = {j.id for j in store.finalizations_due(lease_s=0.3)}
    assert due == {unclaimed.id}
    time.sleep(0.5)
    due = {j.id for j in store.finalizations_due(lease_s=0.3)}
    assert due == {unclaimed.id, abandoned.id}

    taken = store.claim_finalization(abandoned.id, "sweeper", lease_s=0.3)
    assert taken is not None and taken.finalize_claimed_by == "sweeper"
    with pytest.raises(Conflict):  # the original claimer lost its claim
        store.complete_job(abandoned.id, JobState.SUCCEEDED, claimer="crashed-worker")
    store.complete_job(abandoned.id, JobState.SUCCEEDED, claimer="sweeper")
    assert {j.id for j in store.finalizations_due(lease_s=0.3)} == {unclaimed.id}


def test_record_callback(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN, callback_url="http://cb/z")
    job = store.record_callback(job.id, CallbackStatus.FAILED, "connection refused")
    assert job.callback_status is CallbackStatus.FAILED
    assert job.callback_attempts == 1 and job.callback_last_error == "connection refused"
    job = store.record_callback(job.id, CallbackStatus.DELIVERED)
    assert job.callback_status is CallbackStatus.DELIVERED
    assert job.callback_attempts == 2 and job.callback_last_error is None
    with pytest.raises(NotFound):
        store.record_callback(uuid.uuid4(), CallbackStatus.DELIVERED)


def test_store_survives_a_dropped_connection(dsn: str, app_name: str, store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    admin = db.connect(dsn)
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (app_name,),
            )
            assert cur.rowcount >= 1
        admin.commit()
    finally:
        admin.close()
    time.sleep(0.2)
    assert store.get(job.id).id == job.id


def test_lost_dispatches_are_leased_and_only_while_queued(store: JobStore) -> None:
    """A rendition still queued long after its dispatch is handed out once for re-dispatch;
    one that started, or was dispatched recently, is not."""
    job, _ = store.create_job(source(), INFO, PLAN)
    store.record_dispatch(job.id, "360p", "d1")
    store.record_dispatch(job.id, "720p", "d2")
    assert store.get(job.id).rendition("360p").task().dispatched_at is not None
    assert store.lost_dispatches(60) == []  # dispatched just now: a queue may be long
    time.sleep(0.5)
    store.begin_attempt(job.id, "720p", "call-1")  # 720p got its call: not lost
    lost = store.lost_dispatches(0.2)
    assert [(r.job_id, r.rendition) for r in lost] == [(job.id, "360p")]
    assert store.lost_dispatches(0.2) == []  # leased: an overlapping sweep skips it
    time.sleep(0.5)
    assert [r.rendition for r in store.lost_dispatches(0.2)] == ["360p"]  # lease ran out


def test_find_by_object_version(store: JobStore) -> None:
    src = source()
    key = "renditions=*;formats=hls"
    assert store.find(src, key) is None
    job, _ = store.create_job(src, INFO, PLAN)
    found = store.find(src.model_copy(update={"etag": f'"{src.etag}"'}), key)  # quoted
    assert found is not None and found.id == job.id and len(found.renditions) == 2
    assert store.find(src.model_copy(update={"etag": "another-version"}), key) is None
    assert store.find(src, "renditions=360p;formats=hls") is None


def test_one_version_with_other_options_is_another_job(store: JobStore) -> None:
    """The idempotency key is the version and its options: the same options are one job
    however often they are recorded (a redelivered event), other options another."""
    src = source()
    first, created = store.create_job(src, INFO, PLAN)
    again, created_again = store.create_job(src, INFO, PLAN)
    other, created_other = store.create_job(
        src, INFO, PLAN[:1], options_key="renditions=360p;formats=hls",
        options={"renditions": ["360p"], "formats": ["hls"], "origin": "request"},
    )  # fmt: skip
    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id and other.id != first.id
    assert other.options == {"renditions": ["360p"], "formats": ["hls"], "origin": "request"}
    assert store.versions_jobs(src) == [
        (first.id, "renditions=*;formats=hls"), (other.id, "renditions=360p;formats=hls"),
    ]  # fmt: skip
    refused, created_refused = store.record_rejected(src, "bad", options_key="invalid-options")
    assert created_refused and refused.id not in (first.id, other.id)
    assert store.record_rejected(src, "bad", options_key="invalid-options")[0].id == refused.id


def test_a_callback_is_attached_once_and_due_at_once_for_an_ended_job(store: JobStore) -> None:
    job, _ = store.create_job(source(), INFO, PLAN)
    running, attached = store.attach_callback(job.id, "https://example.com/a")
    assert attached and running.callback_url == "https://example.com/a"
    assert running.callback_status is CallbackStatus.PENDING and running.callback_next_at is None
    kept, attached_again = store.attach_callback(job.id, "https://example.com/b")
    assert not attached_again and kept.callback_url == "https://example.com/a"
    assert [c.detail for c in store.history(job.id)][-1] == "callback URL attached"

    ended, _ = store.record_rejected(source(), "not a video")
    after, attached = store.attach_callback(ended.id, "https://example.com/c")
    assert attached and after.callback_next_at is not None  # the sweeper sends it now
    assert ended.id in [j.id for j in store.due_callbacks(limit=1000)]
