"""Transactions on PostgreSQL for the job store, and the row helpers its parts share: locks,
the audit trail, and keeping a rendition's state in step with its tasks'.

`Transactions` keeps one connection per thread (a warm function reuses its connection, a
threaded server never shares one between requests) and runs each unit of work in one
transaction, retried once on a fresh connection when the cached one turns out dead before
anything was committed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar
from uuid import UUID

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from vtp import lifecycle
from vtp.errors import Conflict, NotFound
from vtp.jobs.models import Job, Rendition, SourceRef, Task
from vtp.lifecycle import TaskState
from vtp.models import RenditionState

log = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection
ConnectionFactory = Callable[[], Connection]
Cursor = psycopg2.extras.RealDictCursor
T = TypeVar("T")

TERMINAL_RENDITION = tuple(s.value for s in RenditionState if s.terminal)
TERMINAL_TASK = tuple(s.value for s in TaskState if s.terminal)
# Result keys copied into a rendition's typed columns (the whole dict is kept in `result`).
RESULT_COLUMNS = (
    "output_prefix",
    "size_bytes",
    "avg_bitrate",
    "peak_bitrate",
    "quality_metric",
    "quality_score",
    "quality_worst",
    "quality_flagged",
)
# SET clauses keeping a column's value where a result leaves it out.
KEPT_RESULT_COLUMNS = ", ".join(f"{c} = COALESCE(%({c})s, {c})" for c in RESULT_COLUMNS)


class Transactions:
    """A connection per thread and `_run(fn)`: one transaction per call."""

    def __init__(self, connect: ConnectionFactory) -> None:
        """`connect` returns a new connection (e.g. `functools.partial(vtp.db.connect, dsn)`)."""
        self._connect = connect
        self._local = threading.local()
        self._all: set[Connection] = set()
        self._all_lock = threading.Lock()

    @property
    def connection_factory(self) -> ConnectionFactory:
        """How this store connects: what a part beside it (vtp.quotas) shares."""
        return self._connect

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


# --- row helpers, shared by the store's parts ----------------------------------------------


def parse_id(job_id: UUID | str) -> UUID:
    if isinstance(job_id, UUID):
        return job_id
    try:
        return UUID(job_id)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"no job {job_id!r}") from None


def one(cur: Cursor) -> dict[str, Any]:
    row = cur.fetchone()
    if row is None:
        raise Conflict("the row changed under us")  # guarded UPDATE lost a race
    return dict(row)


def job_row(
    cur: Cursor, jid: UUID, lock: Literal["", "FOR UPDATE", "FOR NO KEY UPDATE"] = ""
) -> dict[str, Any]:
    """The job's state and finalization claim, with the row lock asked for; NotFound for
    an unknown job."""
    query = f"SELECT state, finalize_claimed_by FROM jobs WHERE id = %s {lock}"  # noqa: S608 - a literal lock clause
    cur.execute(query, (str(jid),))
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"no job {jid}")
    return dict(row)


def lock_rendition(cur: Cursor, jid: UUID, name: str) -> dict[str, Any]:
    cur.execute(
        "SELECT * FROM renditions WHERE job_id = %s AND name = %s FOR UPDATE",
        (str(jid), name),
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"job {jid} has no rendition {name!r}")
    return dict(row)


def lock_task(cur: Cursor, jid: UUID, rendition: str, chunk: int) -> dict[str, Any]:
    cur.execute(
        "SELECT * FROM tasks WHERE job_id = %s AND rendition = %s AND chunk = %s FOR UPDATE",
        (str(jid), rendition, chunk),
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"job {jid} has no task {rendition}/{chunk}")
    return dict(row)


def expect_running(row: dict[str, Any], call_id: str | None, attempt: int | None = None) -> bool:
    """The report comes from an attempt of this task running now: its first call or its
    started backup call (vtp.jobs.backups), and, when given, the same attempt number (a
    redelivered message keeps its call id, so after a write-off the call id alone could name
    a newer attempt than the zombie reporting). True if it is the backup call."""
    what = f"task {row['rendition']}/{row['chunk']} of job {row['job_id']}"
    if row["state"] != TaskState.RUNNING.value:
        raise Conflict(f"{what} is {row['state']}, not running")
    backup = (
        call_id is not None
        and row.get("backup_call_id") == call_id
        and row.get("backup_started_at") is not None
    )
    if call_id is not None and row["last_call_id"] != call_id and not backup:
        raise Conflict(
            f"{what} is running under call {row['last_call_id']}, not {call_id}: "
            "this attempt was written off"
        )
    if attempt is not None and int(row["attempts"]) != attempt:
        raise Conflict(
            f"{what} is running attempt {row['attempts']}, not {attempt}: "
            "this attempt was written off"
        )
    return backup


def task_changed(
    cur: Cursor,
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    call_id: str | None = None,
    detail: str | None = None,
) -> Task:
    """After a task's guarded UPDATE (`before` locked, `after` returned): check and record
    the transition, bring its rendition's state in step, and return the task with it."""
    old, new = before["state"], after["state"]
    jid = UUID(str(after["job_id"]))
    if old != new or detail is not None:
        lifecycle.check_task(old, new)
        insert_change(
            cur,
            jid,
            after["rendition"],
            after["chunk"],
            old,
            new,
            int(after["attempts"]),
            call_id if call_id is not None else after["last_call_id"],
            detail,
        )
    state = sync_rendition(cur, jid, after["rendition"])
    return row_to_task(after, rendition_state=state)


def sync_rendition(cur: Cursor, jid: UUID, name: str) -> RenditionState:
    """Derive the rendition's state from its tasks' (`lifecycle.rendition_state`) and write
    it if it moved, with its times, error and (for a rendition encoded whole) result.

    A rendition that ended stays ended: a chunk still reporting after its sibling failed
    changes its own row only. A rendition of one task has no trail rows of its own: its
    task's are the same moves.
    """
    row = lock_rendition(cur, jid, name)
    cur.execute(
        "SELECT * FROM tasks WHERE job_id = %s AND rendition = %s ORDER BY chunk",
        (str(jid), name),
    )
    tasks = [dict(t) for t in cur.fetchall()]
    old = RenditionState(row["state"])
    if old.terminal:
        # A cancelled job's tasks are all ended by its cancel, in the same transaction.
        if old not in (RenditionState.SUCCEEDED, RenditionState.CANCELLED) and len(tasks) > 1:
            # A sibling that was busy (locked) when the rendition failed, now moving.
            cancel_waiting(cur, jid, name, f"cancelled: rendition {name} is {old}")
        return old
    new = lifecycle.rendition_state([TaskState(t["state"]) for t in tasks])
    if new is old:
        return old
    lifecycle.check_rendition(old.value, new.value)
    failed = [t for t in tasks if t["error"] and t["state"] != TaskState.SUCCEEDED.value]
    error = failed[-1]["error"] if failed else None
    whole = tasks[0] if len(tasks) == 1 and tasks[0]["start_s"] is None else None
    result = whole["result"] if whole is not None and new is RenditionState.SUCCEEDED else None
    columns = {k: (result or {}).get(k) for k in RESULT_COLUMNS}
    cur.execute(
        f"""
        UPDATE renditions
        SET state = %(new)s, error = %(error)s,
            started_at = CASE WHEN %(new)s = 'running' THEN COALESCE(started_at, now())
                              ELSE started_at END,
            finished_at = CASE WHEN %(terminal)s THEN now() END,
            result = COALESCE(%(result)s, result),
            {KEPT_RESULT_COLUMNS}
        WHERE job_id = %(job)s AND name = %(name)s AND state = %(old)s
        """,  # noqa: S608 - KEPT_RESULT_COLUMNS is a constant
        {
            "new": new.value,
            "old": old.value,
            "error": error,
            "terminal": new.terminal,
            "result": psycopg2.extras.Json(result) if result is not None else None,
            **columns,
            "job": str(jid),
            "name": name,
        },
    )
    if cur.rowcount != 1:
        raise Conflict("the row changed under us")
    if len(tasks) > 1:
        insert_change(cur, jid, name, None, old.value, new.value, None, None, None)
        if new.terminal and new not in (RenditionState.SUCCEEDED, RenditionState.CANCELLED):
            cancel_waiting(cur, jid, name, f"cancelled: rendition {name} is {new} ({error})")
    return new


def cancel_waiting(cur: Cursor, jid: UUID, name: str, reason: str) -> int:
    """The chunks of a rendition that can no longer succeed which have not started: ended
    (cancelled, with the reason) instead of encoded for nothing. A call already queued for one
    is refused when it arrives (the task is finished); chunks running go on to their end.

    SKIP LOCKED: a sibling in the middle of its own transition is not waited for (waiting
    for a task's lock while holding the rendition's could deadlock with that transition);
    it meets the failed rendition when its transition syncs, and is cancelled then.
    Returns how many were cancelled; the caller brings the rendition's state in step."""
    cur.execute(
        """
        SELECT chunk, attempts, state FROM tasks
        WHERE job_id = %s AND rendition = %s AND state IN ('queued', 'retrying')
        ORDER BY chunk FOR UPDATE SKIP LOCKED
        """,
        (str(jid), name),
    )
    waiting = [dict(r) for r in cur.fetchall()]
    for row in waiting:
        lifecycle.check_task(str(row["state"]), TaskState.CANCELLED.value)
        cur.execute(
            """
            UPDATE tasks
            SET state = 'cancelled', error = %s, finished_at = now(), next_retry_at = NULL
            WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = %s
            """,
            (reason, str(jid), name, row["chunk"], row["state"]),
        )
        insert_change(cur, jid, name, int(row["chunk"]), str(row["state"]), "cancelled",
                       int(row["attempts"]), None, reason)  # fmt: skip
    return len(waiting)


def audit(
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
    """Record a job's (or a new rendition's) transition in the trail, after checking the
    lifecycle allows it: a move the table does not have raises InvalidTransition inside the
    transaction, which then rolls back, so a bug cannot commit a state no code expects."""
    old = str(from_state) if from_state is not None else None
    if rendition is None:
        lifecycle.check_job(old, str(to_state))
    else:
        lifecycle.check_rendition(old, str(to_state))
    insert_change(cur, job_id, rendition, None, old, str(to_state), attempt, call_id, detail)


def insert_change(
    cur: Cursor,
    job_id: UUID,
    rendition: str | None,
    chunk: int | None,
    from_state: str | None,
    to_state: str,
    attempt: int | None,
    call_id: str | None,
    detail: str | None,
) -> None:
    cur.execute(
        """
        INSERT INTO state_changes (job_id, rendition, chunk, from_state, to_state, attempt,
                                   call_id, detail)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (str(job_id), rendition, chunk, from_state, to_state, attempt, call_id, detail),
    )


def row_to_task(row: dict[str, Any], *, rendition_state: RenditionState | None = None) -> Task:
    return Task.model_validate(dict(row) | {"rendition_state": rendition_state})


def row_to_rendition(row: dict[str, Any], tasks: Sequence[dict[str, Any]] = ()) -> Rendition:
    return Rendition.model_validate(dict(row) | {"tasks": [row_to_task(t) for t in tasks]})


def row_to_job(
    row: dict[str, Any],
    renditions: Sequence[dict[str, Any]],
    tasks: Sequence[dict[str, Any]] = (),
) -> Job:
    data = dict(row)
    data["source"] = SourceRef(
        bucket=data.pop("source_bucket"),
        key=data.pop("source_key"),
        etag=data.pop("source_etag"),
        size=data.pop("source_size"),
    )
    by_rendition: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        by_rendition.setdefault(str(t["rendition"]), []).append(t)
    data["renditions"] = [
        row_to_rendition(r, by_rendition.get(str(r["name"]), [])) for r in renditions
    ]
    return Job.model_validate(data)
