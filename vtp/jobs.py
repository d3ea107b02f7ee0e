"""The job store: jobs and renditions in PostgreSQL, and every state transition between them.

Why the transitions look the way they do:

* The OpenFaaS queue-worker calls each function at most once and never retries, but it may
  deliver a message a second time when a call outlives `ack_wait`. So retries, back-off and
  dead-lettering live here, and `begin_attempt` refuses a rendition that is already running
  (a duplicate delivery) or already finished.
* Every UPDATE names the state it expects to move from, under a row lock, so two workers,
  a worker and the sweeper, or two sweepers can race without corrupting anything: the loser
  gets `Conflict` (or `None`) instead of overwriting the winner.
* Workers pass their `call_id` (the gateway's X-Call-Id) when they report. After the sweeper
  has written off a silent attempt and a new one has started, a late report from the old
  worker no longer matches and is refused, so a zombie cannot finish someone else's attempt.
* Fan-in: whichever caller sees the last rendition end calls `claim_finalization`. The job
  row is locked and the renditions re-read in a fresh statement, so of any number of
  concurrent callers exactly one gets the job back (and the others `None`); that one writes
  the master playlist, calls `complete_job` and fires the callback. A claim carries a lease:
  if its holder dies, `finalizations_due` lists the job again for the sweeper.

Job life: queued -> running (first attempt begins) -> succeeded | failed.
Rendition life: queued -> running -> succeeded | failed (permanent) | retrying -> running ...
-> dead (attempts exhausted). The job's `error` names the failed rendition and its reason.

`JobStore` takes a connection factory and keeps one connection per thread, so a warm
function reuses its connection and a threaded server never shares one between requests.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from pydantic import BaseModel, ConfigDict, Field

from vtp.errors import Conflict, InvalidRequest, NotFound
from vtp.models import JobState, RenditionSpec, RenditionState, SourceInfo

log = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection
ConnectionFactory = Callable[[], Connection]
Cursor = psycopg2.extras.RealDictCursor
T = TypeVar("T")

_ACTIVE_JOB = (JobState.QUEUED.value, JobState.RUNNING.value)
_TERMINAL_RENDITION = tuple(s.value for s in RenditionState if s.terminal)

# Result keys copied into typed columns (the whole dict is kept in `result` as well).
_RESULT_COLUMNS = ("output_prefix", "size_bytes", "avg_bitrate", "peak_bitrate")


class CallbackStatus(StrEnum):
    """Delivery of the job's callback. `none`: the job has no callback URL."""

    NONE = "none"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class SourceRef(BaseModel):
    """Which object a job transcodes. (bucket, key, etag) is the job's idempotency key."""

    model_config = ConfigDict(frozen=True)

    bucket: str = Field(min_length=1)
    key: str = Field(min_length=1)
    etag: str = Field(min_length=1)
    size: int | None = Field(default=None, ge=0)

    @property
    def normalized_etag(self) -> str:
        """S3 APIs quote ETags inconsistently (headers yes, MinIO events no); compare bare."""
        return self.etag.strip('"')


class Rendition(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: UUID
    name: str
    function: str
    spec: RenditionSpec
    state: RenditionState
    attempts: int
    last_call_id: str | None = None
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None
    attempt_started_at: datetime | None = None
    finished_at: datetime | None = None
    next_retry_at: datetime | None = None
    dispatched_at: datetime | None = None
    output_prefix: str | None = None
    size_bytes: int | None = None
    avg_bitrate: int | None = None
    peak_bitrate: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    source: SourceRef
    source_info: SourceInfo | None = None
    state: JobState
    formats: list[str]
    error: str | None = None
    master_playlist: str | None = None
    callback_url: str | None = None
    callback_status: CallbackStatus
    callback_attempts: int
    callback_last_error: str | None = None
    callback_at: datetime | None = None
    finalize_claimed_by: str | None = None
    finalize_claimed_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    renditions: list[Rendition] = Field(default_factory=list)

    def rendition(self, name: str) -> Rendition:
        for r in self.renditions:
            if r.name == name:
                return r
        raise NotFound(f"job {self.id} has no rendition {name!r}")


class StateChange(BaseModel):
    """One row of the audit trail."""

    model_config = ConfigDict(frozen=True)

    id: int
    job_id: UUID
    rendition: str | None
    from_state: str | None
    to_state: str
    attempt: int | None
    call_id: str | None
    detail: str | None
    at: datetime


def summarize_outcome(renditions: Sequence[Rendition]) -> tuple[JobState, str | None]:
    """The job's final state and reason from its (terminal) renditions.

    The reason names every rendition that did not succeed, so a client reading the job (or
    its callback) learns which rung broke and why without digging through logs.
    """
    problems = []
    for r in renditions:
        if r.state is RenditionState.SUCCEEDED:
            continue
        if not r.state.terminal:
            raise ValueError(f"rendition {r.name} is still {r.state}")
        how = (
            f"dead after {r.attempts} attempt{'s' if r.attempts != 1 else ''}"
            if r.state is RenditionState.DEAD
            else "failed"
        )
        problems.append(f"rendition {r.name} {how}: {r.error}")
    if not renditions:
        return JobState.FAILED, "job has no renditions"
    if problems:
        return JobState.FAILED, "; ".join(problems)
    return JobState.SUCCEEDED, None


class JobStore:
    """Jobs and renditions in PostgreSQL. Safe to share between threads."""

    def __init__(
        self,
        connect: ConnectionFactory,
        *,
        retry_base_s: float = 10.0,
        retry_max_s: float = 600.0,
    ) -> None:
        """`connect` returns a new connection (e.g. `functools.partial(vtp.db.connect, dsn)`).

        Retry back-off is `retry_base_s * 2**(attempts-1)` seconds, capped at `retry_max_s`.
        The cron sweeper picks due retries up, so its schedule adds up to one period.
        """
        self._connect = connect
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._local = threading.local()
        self._all: set[Connection] = set()
        self._all_lock = threading.Lock()

    # --- connections and transactions -------------------------------------------------------

    def _conn(self) -> tuple[Connection, bool]:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn, False
        conn = self._connect()
        self._local.conn = conn
        with self._all_lock:
            self._all.add(conn)
        return conn, True

    def _discard(self, conn: Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._all_lock:
            self._all.discard(conn)
        with contextlib.suppress(psycopg2.Error):
            conn.close()

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._all_lock:
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
        self._local = threading.local()

    def _run(self, fn: Callable[[Cursor], T]) -> T:
        """Run `fn` in one transaction and commit.

        A cached connection may have died while the function was idle (PostgreSQL restarted,
        a proxy dropped it). If the connection turns out dead before the commit, the server
        never committed anything, so it is safe to run `fn` once more on a fresh connection.
        """
        for attempt in (1, 2):
            conn, fresh = self._conn()
            try:
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    result = fn(cur)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if conn.closed:
                    self._discard(conn)
                    if not fresh and attempt == 1:
                        log.warning("database connection was lost; retrying on a new one")
                        continue
                else:
                    conn.rollback()
                raise
            except BaseException:
                if conn.closed:
                    self._discard(conn)
                else:
                    conn.rollback()
                raise
            try:
                conn.commit()
            except BaseException:
                # The outcome of a failed COMMIT is unknown: never retry it.
                if conn.closed:
                    self._discard(conn)
                else:
                    conn.rollback()
                raise
            return result
        raise AssertionError("unreachable")

    # --- jobs ----------------------------------------------------------------------------

    def create_job(
        self,
        source: SourceRef,
        info: SourceInfo,
        plan: Sequence[RenditionSpec],
        *,
        formats: Sequence[str] = ("hls",),
        callback_url: str | None = None,
    ) -> tuple[Job, bool]:
        """Record a job and its renditions; `(job, True)` if new, `(existing, False)` if not.

        MinIO delivers events at least once and a user may also invoke split by hand, so the
        same (bucket, key, etag) must map to one job. ON CONFLICT DO NOTHING waits for a
        concurrent inserter, so two racing calls still produce one job.
        """
        if not plan:
            raise InvalidRequest("a job needs at least one rendition")
        names = [spec.name for spec in plan]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"duplicate rendition names in plan: {names}")
        if not formats:
            raise InvalidRequest("a job needs at least one output format")

        def tx(cur: Cursor) -> tuple[UUID, bool]:
            cur.execute(
                """
                INSERT INTO jobs (source_bucket, source_key, source_etag, source_size,
                                  source_info, formats, callback_url, callback_status)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (source_bucket, source_key, source_etag) DO NOTHING
                RETURNING id
                """,
                (
                    source.bucket,
                    source.key,
                    source.normalized_etag,
                    source.size,
                    psycopg2.extras.Json(info.model_dump(mode="json")),
                    list(formats),
                    callback_url,
                    (CallbackStatus.PENDING if callback_url else CallbackStatus.NONE).value,
                ),
            )
            row = cur.fetchone()
            if row is None:
                return self._id_for_source(cur, source), False
            job_id = UUID(str(row["id"]))
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO renditions (job_id, name, ordinal, function, spec) VALUES %s",
                [
                    (str(job_id), spec.name, i, spec.function, spec.model_dump_json())
                    for i, spec in enumerate(plan)
                ],
                template="(%s, %s, %s, %s, %s::jsonb)",
            )
            _audit(cur, job_id, None, None, JobState.QUEUED, detail=f"renditions: {names}")
            return job_id, True

        job_id, created = self._run(tx)
        if not created:
            log.info(
                "job for %s/%s (etag %s) exists already", source.bucket, source.key, source.etag
            )
        return self.get(job_id), created

    def record_rejected(
        self, source: SourceRef, reason: str, *, callback_url: str | None = None
    ) -> tuple[Job, bool]:
        """Record a source we refused (not a video, too big...) as a failed job.

        Keeping it means a client polling for the object learns why, the callback can say so,
        and a redelivered event for the same object is recognised instead of re-probed.
        """

        def tx(cur: Cursor) -> tuple[UUID, bool]:
            cur.execute(
                """
                INSERT INTO jobs (source_bucket, source_key, source_etag, source_size, state,
                                  error, finished_at, callback_url, callback_status)
                VALUES (%s, %s, %s, %s, 'failed', %s, now(), %s, %s)
                ON CONFLICT (source_bucket, source_key, source_etag) DO NOTHING
                RETURNING id
                """,
                (
                    source.bucket,
                    source.key,
                    source.normalized_etag,
                    source.size,
                    reason,
                    callback_url,
                    (CallbackStatus.PENDING if callback_url else CallbackStatus.NONE).value,
                ),
            )
            row = cur.fetchone()
            if row is None:
                return self._id_for_source(cur, source), False
            job_id = UUID(str(row["id"]))
            _audit(cur, job_id, None, None, JobState.FAILED, detail=f"rejected: {reason}")
            return job_id, True

        job_id, created = self._run(tx)
        return self.get(job_id), created

    @staticmethod
    def _id_for_source(cur: Cursor, source: SourceRef) -> UUID:
        cur.execute(
            "SELECT id FROM jobs WHERE source_bucket = %s AND source_key = %s AND source_etag = %s",
            (source.bucket, source.key, source.normalized_etag),
        )
        row = cur.fetchone()
        if row is None:  # only if someone deleted it between the two statements
            raise Conflict(f"job for {source.bucket}/{source.key} vanished while being created")
        return UUID(str(row["id"]))

    def find(self, source: SourceRef) -> Job | None:
        """The job of this object version, if there is one (the idempotency key's lookup)."""

        def tx(cur: Cursor) -> UUID | None:
            cur.execute(
                "SELECT id FROM jobs"
                " WHERE source_bucket = %s AND source_key = %s AND source_etag = %s",
                (source.bucket, source.key, source.normalized_etag),
            )
            row = cur.fetchone()
            return UUID(str(row["id"])) if row else None

        job_id = self._run(tx)
        return self.get(job_id) if job_id else None

    def get(self, job_id: UUID | str) -> Job:
        """The job with its renditions in plan order; NotFound for an unknown or malformed id."""
        jid = _parse_id(job_id)

        def tx(cur: Cursor) -> Job:
            cur.execute("SELECT * FROM jobs WHERE id = %s", (str(jid),))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"no job {jid}")
            cur.execute("SELECT * FROM renditions WHERE job_id = %s ORDER BY ordinal", (str(jid),))
            return _job(row, cur.fetchall())

        return self._run(tx)

    def list(
        self,
        state: JobState | None = None,
        limit: int = 50,
        *,
        before: datetime | None = None,
        bucket: str | None = None,
        key: str | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally in one state or of one source object; page with
        `before=<last created_at>`. A client that uploaded an object finds its job by key."""
        limit = max(1, min(limit, 1000))

        def tx(cur: Cursor) -> builtins.list[Job]:
            cur.execute(
                """
                SELECT * FROM jobs
                WHERE (%(state)s::text IS NULL OR state = %(state)s)
                  AND (%(before)s::timestamptz IS NULL OR created_at < %(before)s)
                  AND (%(bucket)s::text IS NULL OR source_bucket = %(bucket)s)
                  AND (%(key)s::text IS NULL OR source_key = %(key)s)
                ORDER BY created_at DESC, id
                LIMIT %(limit)s
                """,
                {
                    "state": state.value if state else None,
                    "before": before,
                    "bucket": bucket,
                    "key": key,
                    "limit": limit,
                },
            )
            jobs = cur.fetchall()
            if not jobs:
                return []
            cur.execute(
                "SELECT * FROM renditions WHERE job_id = ANY(%s::uuid[]) ORDER BY job_id, ordinal",
                ([str(j["id"]) for j in jobs],),
            )
            by_job: dict[str, builtins.list[dict[str, Any]]] = {}
            for r in cur.fetchall():
                by_job.setdefault(str(r["job_id"]), []).append(r)
            return [_job(j, by_job.get(str(j["id"]), [])) for j in jobs]

        return self._run(tx)

    def history(self, job_id: UUID | str) -> builtins.list[StateChange]:
        """The job's audit trail, oldest first."""
        jid = _parse_id(job_id)

        def tx(cur: Cursor) -> builtins.list[StateChange]:
            cur.execute("SELECT * FROM state_changes WHERE job_id = %s ORDER BY id", (str(jid),))
            return [StateChange.model_validate(dict(r)) for r in cur.fetchall()]

        return self._run(tx)

    # --- rendition attempts ------------------------------------------------------------

    def begin_attempt(self, job_id: UUID | str, rendition: str, call_id: str) -> Rendition:
        """Start an attempt: queued|retrying -> running, attempts + 1; the job -> running.

        Conflict when the rendition is finished, or running already (under this call id: the
        queue redelivered the message; under another: a second dispatch). A running attempt
        whose worker vanished is written off by the sweeper (`reap_stale`) first, so
        "running" always means "under a live call as far as we know".
        """
        jid = _parse_id(job_id)

        def tx(cur: Cursor) -> Rendition:
            row = _lock_rendition(cur, jid, rendition)
            state = RenditionState(row["state"])
            if state.terminal:
                raise Conflict(f"rendition {rendition} of job {jid} is already {state}")
            if state is RenditionState.RUNNING:
                same = row["last_call_id"] == call_id
                raise Conflict(
                    f"rendition {rendition} of job {jid} is already running under "
                    f"{'this' if same else 'another'} call ({row['last_call_id']}, attempt "
                    f"{row['attempts']}): duplicate delivery"
                )
            cur.execute(
                """
                UPDATE renditions
                SET state = 'running', attempts = attempts + 1, last_call_id = %s,
                    heartbeat_at = now(), attempt_started_at = now(),
                    started_at = COALESCE(started_at, now()), next_retry_at = NULL
                WHERE job_id = %s AND name = %s AND state = %s
                RETURNING *
                """,
                (call_id, str(jid), rendition, state.value),
            )
            updated = _rendition(_one(cur))
            _audit(cur, jid, rendition, state, RenditionState.RUNNING, updated.attempts, call_id)
            cur.execute(
                """
                UPDATE jobs SET state = 'running', started_at = now()
                WHERE id = %s AND state = 'queued'
                """,
                (str(jid),),
            )
            if cur.rowcount:
                _audit(cur, jid, None, JobState.QUEUED, JobState.RUNNING, detail=rendition)
            return updated

        return self._run(tx)

    def heartbeat(self, job_id: UUID | str, rendition: str, *, call_id: str | None = None) -> None:
        """Record a sign of life. Conflict if the attempt is no longer running (under
        `call_id`): the sweeper wrote it off or another attempt took over, so stop working."""
        jid = _parse_id(job_id)

        def tx(cur: Cursor) -> None:
            cur.execute(
                """
                UPDATE renditions SET heartbeat_at = now()
                WHERE job_id = %s AND name = %s AND state = 'running'
                  AND (%s::text IS NULL OR last_call_id = %s)
                """,
                (str(jid), rendition, call_id, call_id),
            )
            if cur.rowcount == 0:
                row = _lock_rendition(cur, jid, rendition)
                raise Conflict(
                    f"rendition {rendition} of job {jid} is {row['state']} "
                    f"(call {row['last_call_id']}), not running under call {call_id}"
                )

        self._run(tx)

    def succeed_rendition(
        self,
        job_id: UUID | str,
        rendition: str,
        result: dict[str, Any],
        *,
        call_id: str | None = None,
    ) -> Rendition:
        """running -> succeeded with the transcode's result (output_prefix, size_bytes,
        avg_bitrate and peak_bitrate are also copied to their own columns)."""
        jid = _parse_id(job_id)
        columns = {k: result.get(k) for k in _RESULT_COLUMNS}

        def tx(cur: Cursor) -> Rendition:
            row = _lock_rendition(cur, jid, rendition)
            _expect_running(row, jid, rendition, call_id)
            cur.execute(
                """
                UPDATE renditions
                SET state = 'succeeded', finished_at = now(), error = NULL, next_retry_at = NULL,
                    result = %s, output_prefix = %s, size_bytes = %s, avg_bitrate = %s,
                    peak_bitrate = %s
                WHERE job_id = %s AND name = %s AND state = 'running'
                RETURNING *
                """,
                (
                    psycopg2.extras.Json(result),
                    columns["output_prefix"],
                    columns["size_bytes"],
                    columns["avg_bitrate"],
                    columns["peak_bitrate"],
                    str(jid),
                    rendition,
                ),
            )
            updated = _rendition(_one(cur))
            _audit(
                cur,
                jid,
                rendition,
                RenditionState.RUNNING,
                RenditionState.SUCCEEDED,
                updated.attempts,
                updated.last_call_id,
            )
            return updated

        return self._run(tx)

    def fail_rendition(
        self,
        job_id: UUID | str,
        rendition: str,
        reason: str,
        *,
        retryable: bool,
        max_attempts: int,
        call_id: str | None = None,
    ) -> RenditionState:
        """End an attempt badly; returns the new state.

        retryable and attempts < max_attempts -> retrying (next_retry_at = now + back-off);
        retryable and exhausted -> dead; not retryable -> failed. Allowed from queued or
        retrying too (e.g. the dispatch itself was refused), which spends no attempt.
        """
        jid = _parse_id(job_id)

        def tx(cur: Cursor) -> RenditionState:
            row = _lock_rendition(cur, jid, rendition)
            state = RenditionState(row["state"])
            if state.terminal:
                raise Conflict(f"rendition {rendition} of job {jid} is already {state}")
            if state is RenditionState.RUNNING:
                _expect_running(row, jid, rendition, call_id)
            return self._fail_locked(cur, row, reason, retryable, max_attempts).state

        return self._run(tx)

    def _fail_locked(
        self,
        cur: Cursor,
        row: dict[str, Any],
        reason: str,
        retryable: bool,
        max_attempts: int,
    ) -> Rendition:
        """Apply a failure to a rendition row the caller has locked and checked."""
        attempts = int(row["attempts"])
        if not retryable:
            new = RenditionState.FAILED
        elif attempts >= max_attempts:
            new = RenditionState.DEAD
        else:
            new = RenditionState.RETRYING
        delay = min(self._retry_base_s * 2 ** max(attempts - 1, 0), self._retry_max_s)
        cur.execute(
            """
            UPDATE renditions
            SET state = %(new)s, error = %(reason)s,
                finished_at = CASE WHEN %(new)s = 'retrying' THEN NULL ELSE now() END,
                next_retry_at = CASE WHEN %(new)s = 'retrying'
                                     THEN now() + make_interval(secs => %(delay)s) END
            WHERE job_id = %(job_id)s AND name = %(name)s AND state = %(old)s
            RETURNING *
            """,
            {
                "new": new.value,
                "reason": reason,
                "delay": delay,
                "job_id": str(row["job_id"]),
                "name": row["name"],
                "old": row["state"],
            },
        )
        updated = _rendition(_one(cur))
        _audit(
            cur,
            updated.job_id,
            updated.name,
            RenditionState(row["state"]),
            new,
            attempts,
            row["last_call_id"],
            detail=reason,
        )
        log.info(
            "rendition %s of job %s: %s -> %s after attempt %d: %s",
            updated.name,
            updated.job_id,
            row["state"],
            new,
            attempts,
            reason,
        )
        return updated

    # --- sweeper -----------------------------------------------------------------------

    def stale_renditions(self, heartbeat_older_than_s: float) -> builtins.list[Rendition]:
        """Running renditions with no heartbeat for that long: their worker probably died."""

        def tx(cur: Cursor) -> builtins.list[Rendition]:
            cur.execute(
                """
                SELECT * FROM renditions
                WHERE state = 'running'
                  AND COALESCE(heartbeat_at, attempt_started_at)
                      < now() - make_interval(secs => %s)
                ORDER BY COALESCE(heartbeat_at, attempt_started_at)
                """,
                (heartbeat_older_than_s,),
            )
            return [_rendition(r) for r in cur.fetchall()]

        return self._run(tx)

    def reap_stale(
        self, heartbeat_older_than_s: float, *, max_attempts: int
    ) -> builtins.list[Rendition]:
        """Write off silent attempts: each stale running rendition -> retrying or dead.

        Staleness is re-checked under the row lock in the same statement that selects, so a
        heartbeat that lands in between wins; SKIP LOCKED lets two sweepers split the work.
        Returns the renditions in their new state.
        """

        def tx(cur: Cursor) -> builtins.list[Rendition]:
            cur.execute(
                """
                SELECT * FROM renditions
                WHERE state = 'running'
                  AND COALESCE(heartbeat_at, attempt_started_at)
                      < now() - make_interval(secs => %s)
                ORDER BY COALESCE(heartbeat_at, attempt_started_at)
                FOR UPDATE SKIP LOCKED
                """,
                (heartbeat_older_than_s,),
            )
            reaped = []
            for row in cur.fetchall():
                reason = (
                    f"worker vanished: no heartbeat for {heartbeat_older_than_s:g}s "
                    f"(attempt {row['attempts']}, call {row['last_call_id']})"
                )
                reaped.append(self._fail_locked(cur, row, reason, True, max_attempts))
            return reaped

        return self._run(tx)

    def mark_dispatched(self, job_id: UUID | str, rendition: str) -> None:
        """Record that a call for this rendition is on the queue (see `lost_dispatches`)."""
        jid = _parse_id(job_id)

        def tx(cur: Cursor) -> None:
            cur.execute(
                """
                UPDATE renditions SET dispatched_at = now()
                WHERE job_id = %s AND name = %s AND state IN ('queued', 'retrying')
                """,
                (str(jid), rendition),
            )

        self._run(tx)

    def lost_dispatches(self, older_than_s: float, *, limit: int = 100) -> builtins.list[Rendition]:
        """Claim renditions still queued `older_than_s` after their dispatch, to dispatch again.

        A long queue is not a lost call, so the threshold should be generous; claiming moves
        dispatched_at to now (a lease), and a duplicate call that does arrive is refused by
        `begin_attempt` once the first one runs.
        """

        def tx(cur: Cursor) -> builtins.list[Rendition]:
            cur.execute(
                """
                WITH lost AS (
                    SELECT job_id, name FROM renditions
                    WHERE state = 'queued'
                      AND COALESCE(dispatched_at, created_at) < now() - make_interval(secs => %s)
                    ORDER BY COALESCE(dispatched_at, created_at)
                    LIMIT %s
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE renditions r SET dispatched_at = now()
                FROM lost WHERE r.job_id = lost.job_id AND r.name = lost.name
                RETURNING r.*
                """,
                (older_than_s, limit),
            )
            return [_rendition(row) for row in cur.fetchall()]

        return self._run(tx)

    def due_retries(self, *, limit: int = 100, lease_s: float = 120.0) -> builtins.list[Rendition]:
        """Claim retrying renditions whose back-off has passed, for re-dispatch.

        Claiming pushes next_retry_at forward by `lease_s`: overlapping sweeper runs do not
        dispatch the same retry twice, and a dispatch that got lost is picked up again when
        the lease runs out (a duplicate that does arrive is refused by `begin_attempt`).
        """

        def tx(cur: Cursor) -> builtins.list[Rendition]:
            cur.execute(
                """
                WITH due AS (
                    SELECT job_id, name FROM renditions
                    WHERE state = 'retrying' AND next_retry_at <= now()
                    ORDER BY next_retry_at
                    LIMIT %s
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE renditions r SET next_retry_at = now() + make_interval(secs => %s)
                FROM due WHERE r.job_id = due.job_id AND r.name = due.name
                RETURNING r.*
                """,
                (limit, lease_s),
            )
            return [_rendition(r) for r in cur.fetchall()]

        return self._run(tx)

    # --- fan-in ---------------------------------------------------------------------------

    def claim_finalization(
        self, job_id: UUID | str, claimer: str, *, lease_s: float = 300.0
    ) -> Job | None:
        """Return the job to exactly one caller once every rendition has ended.

        None when a rendition is still in flight, the job is already finished, or someone
        else holds a live claim (younger than `lease_s`). The job row is locked first
        (FOR NO KEY UPDATE: excludes other claimers without blocking audit inserts that only
        need a key-share lock), then the renditions are read by a new statement, so its
        snapshot includes every rendition update that committed before the lock was granted.
        """
        jid = _parse_id(job_id)

        def tx(cur: Cursor) -> bool:
            cur.execute(
                """
                SELECT state, finalize_claimed_by, finalize_claimed_at,
                       finalize_claimed_at > now() - make_interval(secs => %s) AS claim_live
                FROM jobs WHERE id = %s FOR NO KEY UPDATE
                """,
                (lease_s, str(jid)),
            )
            job = cur.fetchone()
            if job is None:
                raise NotFound(f"no job {jid}")
            if JobState(job["state"]).terminal or job["claim_live"]:
                return False
            cur.execute(
                """
                SELECT count(*) AS total,
                       count(*) FILTER (WHERE state <> ALL(%s)) AS open
                FROM renditions WHERE job_id = %s
                """,
                (list(_TERMINAL_RENDITION), str(jid)),
            )
            counts = _one(cur)
            if counts["total"] == 0 or counts["open"] > 0:
                return False
            cur.execute(
                """
                UPDATE jobs SET finalize_claimed_by = %s, finalize_claimed_at = now()
                WHERE id = %s
                """,
                (claimer, str(jid)),
            )
            detail = f"finalization claimed by {claimer}"
            if job["finalize_claimed_by"]:
                detail += f" (expired claim of {job['finalize_claimed_by']})"
            _audit(cur, jid, None, job["state"], job["state"], detail=detail)
            return True

        return self.get(jid) if self._run(tx) else None

    def finalizations_due(self, *, lease_s: float = 300.0) -> builtins.list[Job]:
        """Jobs whose renditions have all ended but which nobody is finalizing: never claimed
        (the last worker died after its update) or claimed longer than `lease_s` ago."""

        def tx(cur: Cursor) -> builtins.list[UUID]:
            cur.execute(
                """
                SELECT j.id FROM jobs j
                WHERE j.state IN ('queued', 'running')
                  AND (j.finalize_claimed_at IS NULL
                       OR j.finalize_claimed_at <= now() - make_interval(secs => %s))
                  AND EXISTS (SELECT 1 FROM renditions r WHERE r.job_id = j.id)
                  AND NOT EXISTS (SELECT 1 FROM renditions r
                                  WHERE r.job_id = j.id AND r.state <> ALL(%s))
                ORDER BY j.created_at
                """,
                (lease_s, list(_TERMINAL_RENDITION)),
            )
            return [UUID(str(r["id"])) for r in cur.fetchall()]

        return [self.get(jid) for jid in self._run(tx)]

    def complete_job(
        self,
        job_id: UUID | str,
        state: JobState,
        reason: str | None = None,
        *,
        claimer: str | None = None,
        master_playlist: str | None = None,
    ) -> Job:
        """Finish the job (succeeded, or failed with `reason`).

        With `claimer`, only the holder of the finalization claim may finish it, so a
        finalizer whose lease expired and was taken over cannot also complete the job.
        Conflict if the job is finished already or the claim is someone else's.
        """
        if not state.terminal:
            raise ValueError(f"complete_job needs a terminal state, not {state}")
        if state is JobState.FAILED and not reason:
            raise ValueError("a failed job needs a reason")
        jid = _parse_id(job_id)

        def tx(cur: Cursor) -> None:
            cur.execute(
                "SELECT state, finalize_claimed_by FROM jobs WHERE id = %s FOR NO KEY UPDATE",
                (str(jid),),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"no job {jid}")
            if JobState(row["state"]).terminal:
                raise Conflict(f"job {jid} is already {row['state']}")
            if claimer is not None and row["finalize_claimed_by"] != claimer:
                raise Conflict(
                    f"job {jid} finalization is claimed by {row['finalize_claimed_by']}, "
                    f"not {claimer}"
                )
            cur.execute(
                """
                UPDATE jobs SET state = %s, error = %s, master_playlist = %s, finished_at = now()
                WHERE id = %s AND state = %s
                """,
                (state.value, reason, master_playlist, str(jid), row["state"]),
            )
            _audit(cur, jid, None, row["state"], state, detail=reason)

        self._run(tx)
        return self.get(jid)

    def record_callback(
        self, job_id: UUID | str, status: CallbackStatus, error: str | None = None
    ) -> Job:
        """Record a callback delivery attempt (delivered/failed count as attempts)."""
        jid = _parse_id(job_id)
        counts = status in (CallbackStatus.DELIVERED, CallbackStatus.FAILED)

        def tx(cur: Cursor) -> None:
            cur.execute(
                """
                UPDATE jobs
                SET callback_status = %s, callback_last_error = %s, callback_at = now(),
                    callback_attempts = callback_attempts + %s
                WHERE id = %s
                """,
                (status.value, error, 1 if counts else 0, str(jid)),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no job {jid}")

        self._run(tx)
        return self.get(jid)


# --- helpers ----------------------------------------------------------------------------


def _parse_id(job_id: UUID | str) -> UUID:
    if isinstance(job_id, UUID):
        return job_id
    try:
        return UUID(job_id)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"no job {job_id!r}") from None


def _one(cur: Cursor) -> dict[str, Any]:
    row = cur.fetchone()
    if row is None:
        raise Conflict("the row changed under us")  # guarded UPDATE lost a race
    return dict(row)


def _lock_rendition(cur: Cursor, jid: UUID, name: str) -> dict[str, Any]:
    cur.execute(
        "SELECT * FROM renditions WHERE job_id = %s AND name = %s FOR UPDATE",
        (str(jid), name),
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"job {jid} has no rendition {name!r}")
    return dict(row)


def _expect_running(row: dict[str, Any], jid: UUID, name: str, call_id: str | None) -> None:
    if row["state"] != RenditionState.RUNNING.value:
        raise Conflict(f"rendition {name} of job {jid} is {row['state']}, not running")
    if call_id is not None and row["last_call_id"] != call_id:
        raise Conflict(
            f"rendition {name} of job {jid} is running under call {row['last_call_id']}, "
            f"not {call_id}: this attempt was written off"
        )


def _audit(
    cur: Cursor,
    job_id: UUID,
    rendition: str | None,
    from_state: str | None,
    to_state: str,
    attempt: int | None = None,
    call_id: str | None = None,
    *,
    detail: str | None = None,
) -> None:
    cur.execute(
        """
        INSERT INTO state_changes (job_id, rendition, from_state, to_state, attempt, call_id,
                                   detail)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        """,
        (
            str(job_id),
            rendition,
            str(from_state) if from_state is not None else None,
            str(to_state),
            attempt,
            call_id,
            detail,
        ),
    )


def _rendition(row: dict[str, Any]) -> Rendition:
    return Rendition.model_validate(dict(row))


def _job(row: dict[str, Any], renditions: Sequence[dict[str, Any]]) -> Job:
    data = dict(row)
    data["source"] = SourceRef(
        bucket=data.pop("source_bucket"),
        key=data.pop("source_key"),
        etag=data.pop("source_etag"),
        size=data.pop("source_size"),
    )
    data["renditions"] = [_rendition(r) for r in renditions]
    return Job.model_validate(data)
