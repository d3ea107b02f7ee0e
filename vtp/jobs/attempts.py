"""Attempts: a task's runs, from the call that starts one to the report that ends it.

A task is one unit of work (today a whole rendition, chunk 0; tomorrow one chunk of it); its
rendition's state follows from its tasks' in the same transaction (`sync_rendition`).

Why the transitions look the way they do:

* The OpenFaaS queue-worker calls each function at most once and never retries, but it may
  deliver a message a second time when a call outlives `ack_wait`. So retries, back-off and
  dead-lettering live here, and `begin_attempt` refuses a task that is already running
  (a duplicate delivery) or already finished.
* Every UPDATE names the state it expects to move from, under a row lock, so two workers,
  a worker and the sweeper, or two sweepers can race without corrupting anything: the loser
  gets `Conflict` (or `None`) instead of overwriting the winner.
* Workers pass their `call_id` (the gateway's X-Call-Id) and attempt number when they
  report, and a report is accepted only from the attempt that is running now (the number
  matters: a redelivered message keeps its call id, so after a write-off the same call id
  may begin the next attempt while the old process still runs). After the sweeper (or the callback
  route) has written off an attempt, a late report from that worker, a heartbeat, a failure
  or a success, is refused with Conflict and changes nothing: a zombie can neither finish
  nor delay someone else's attempt.

Task life: queued -> running -> succeeded | failed (permanent) | retrying -> queued
(dispatched again) -> running ... -> dead (budget spent). See `vtp.lifecycle`. A straggler's
backup call runs beside the first as the same attempt (`vtp.jobs.backups`); a job that can
no longer succeed ends its tasks instead of running them (`vtp.jobs.cancellation`).
"""

from __future__ import annotations

import builtins
import logging
from typing import Any
from uuid import UUID

import psycopg2.extras

from vtp.errors import Conflict
from vtp.jobs.backups import CLEAR_BACKUP, Backups
from vtp.jobs.cancellation import Cancellation
from vtp.jobs.models import Task
from vtp.jobs.transactions import (
    ConnectionFactory,
    Cursor,
    audit,
    expect_running,
    lock_task,
    one,
    parse_id,
    row_to_task,
    task_changed,
)
from vtp.lifecycle import RetryPolicy, TaskState
from vtp.models import JobState

log = logging.getLogger(__name__)


class Attempts(Backups, Cancellation):
    def __init__(self, connect: ConnectionFactory, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(connect)
        self.retry = retry or RetryPolicy()

    def begin_attempt(
        self, job_id: UUID | str, rendition: str, call_id: str, *, chunk: int = 0
    ) -> Task:
        """Start an attempt: queued|retrying -> running, attempts + 1; the job -> running.

        Conflict when the task is finished, or running already (under this call id: the
        queue redelivered the message; under another: a second dispatch). A running attempt
        whose worker vanished is written off by the sweeper (`reap_stale`) first, so
        "running" always means "under a live call as far as we know".
        """
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Task:
            row = lock_task(cur, jid, rendition, chunk)
            state = TaskState(row["state"])
            what = f"task {rendition}/{chunk} of job {jid}"
            if state.terminal:
                raise Conflict(f"{what} is already {state}")
            if (
                state is TaskState.RUNNING
                and row["backup_call_id"] == call_id
                and row["backup_started_at"] is None
            ):
                return self._begin_backup(cur, row)  # a straggler's second call
            if state is TaskState.RUNNING:
                same = call_id in (row["last_call_id"], row["backup_call_id"])
                raise Conflict(
                    f"{what} is already running under "
                    f"{'this' if same else 'another'} call ({row['last_call_id']}, attempt "
                    f"{row['attempts']}): duplicate delivery"
                )
            doomed = self._doomed(cur, jid)
            if doomed:  # its job cannot succeed: ended instead of encoded for nothing
                return self._cancel_row(cur, row, doomed)
            cur.execute(
                """
                UPDATE tasks
                SET state = 'running', attempts = attempts + 1, last_call_id = %s,
                    refusals = 0, heartbeat_at = now(), attempt_started_at = now(),
                    death_reported_at = NULL, death_report = NULL,
                    started_at = COALESCE(started_at, now()), next_retry_at = NULL
                WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = %s
                RETURNING *
                """,
                (call_id, str(jid), rendition, chunk, state.value),
            )
            updated = task_changed(cur, row, one(cur))
            cur.execute(
                """
                UPDATE jobs SET state = 'running', started_at = now()
                WHERE id = %s AND state = 'queued'
                """,
                (str(jid),),
            )
            if cur.rowcount:
                audit(cur, jid, None, JobState.QUEUED, JobState.RUNNING, detail=rendition)
            return updated

        began = self._run(tx)
        if began.state is TaskState.CANCELLED:
            raise Conflict(f"task {rendition}/{chunk} of job {jid}: {began.error}")
        return began

    def heartbeat(
        self,
        job_id: UUID | str,
        rendition: str,
        *,
        call_id: str | None = None,
        attempt: int | None = None,
        chunk: int = 0,
    ) -> None:
        """Record a sign of life. Conflict if the attempt is no longer running (under
        `call_id`, as `attempt`): the sweeper wrote it off, another attempt took over, or
        the job can no longer succeed (vtp.jobs.cancellation), so stop working."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> tuple[str | None, str | None]:
            """(why the job is cancelled, the death report this beat refutes)."""
            row = lock_task(cur, jid, rendition, chunk)
            try:
                backup = expect_running(row, call_id, attempt)
            except Conflict as exc:
                raise Conflict(
                    f"{exc.reason} (call {row['last_call_id']}, attempt {row['attempts']}); "
                    f"this is call {call_id}, attempt {attempt}"
                ) from None
            doomed = self._doomed(cur, jid)
            if doomed:  # its job cannot succeed: the encode stops (Conflict, below)
                return str(self._cancel_row(cur, row, doomed).error), None
            if backup:
                cur.execute(
                    """
                    UPDATE tasks SET backup_heartbeat_at = now()
                    WHERE job_id = %s AND rendition = %s AND chunk = %s
                    """,
                    (str(jid), rendition, chunk),
                )
                return None, None
            cur.execute(
                """
                UPDATE tasks SET heartbeat_at = now(), death_reported_at = NULL,
                                 death_report = NULL
                WHERE job_id = %s AND rendition = %s AND chunk = %s
                """,
                (str(jid), rendition, chunk),
            )
            return None, row["death_report"]

        cancelled, refuted = self._run(tx)
        if refuted:  # said once committed, so whoever reads the log reads the row dropped
            log.warning(
                "task %s/%s of job %s: its call was reported dead (%s) but the attempt "
                "is alive; the report is dropped (a forged report, or a confused proxy)",
                rendition,
                chunk,
                jid,
                refuted,
            )
        if cancelled:
            raise Conflict(f"task {rendition}/{chunk} of job {jid}: {cancelled}")

    def succeed_task(
        self,
        job_id: UUID | str,
        rendition: str,
        result: dict[str, Any],
        *,
        call_id: str | None = None,
        attempt: int | None = None,
        chunk: int = 0,
    ) -> Task:
        """running -> succeeded with the transcode's result. A rendition encoded whole takes
        the result as its own (output_prefix, size_bytes, avg_bitrate and peak_bitrate in
        their own columns too)."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Task:
            row = lock_task(cur, jid, rendition, chunk)
            backup = expect_running(row, call_id, attempt)
            # The winner's call is the task's call from now on; a racing one is refused.
            winner = call_id if backup else row["last_call_id"]
            cur.execute(
                f"""
                UPDATE tasks
                SET state = 'succeeded', finished_at = now(), error = NULL, next_retry_at = NULL,
                    result = %s, last_call_id = %s, {CLEAR_BACKUP}
                WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = 'running'
                RETURNING *
                """,  # noqa: S608 - CLEAR_BACKUP is a constant
                (psycopg2.extras.Json(result), winner, str(jid), rendition, chunk),
            )
            raced = row["backup_started_at"] is not None
            detail = None
            if raced:
                loser = row["last_call_id"] if backup else row["backup_call_id"]
                detail = f"{'backup' if backup else 'first'} call won; {loser} superseded"
            return task_changed(cur, row, one(cur), call_id=winner, detail=detail)

        return self._run(tx)

    def fail_task(
        self,
        job_id: UUID | str,
        rendition: str,
        reason: str,
        *,
        retryable: bool,
        call_id: str | None = None,
        attempt: int | None = None,
        max_attempts: int | None = None,
        chunk: int = 0,
    ) -> Task:
        """End the running attempt badly; returns the task in its new state.

        retryable and attempts < max_attempts -> retrying (next_retry_at = now + back-off);
        retryable and exhausted -> dead; not retryable -> failed. Only the attempt running
        now may be failed: Conflict when the task is not running, or running under
        another call than `call_id` (a report from a superseded attempt changes nothing).
        `call_id=None` is for callers that have no call of their own (an operator's tool).
        """
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Task:
            row = lock_task(cur, jid, rendition, chunk)
            if expect_running(row, call_id, attempt) and retryable:
                return self._drop_backup(cur, row, reason)  # the first call goes on
            return self._fail_locked(cur, row, reason, retryable, max_attempts)

        return self._run(tx)

    def _fail_locked(
        self,
        cur: Cursor,
        row: dict[str, Any],
        reason: str,
        retryable: bool,
        max_attempts: int | None,
    ) -> Task:
        """Apply a failed attempt to a task row the caller has locked and checked; a
        passing failure while a backup call runs hands the task to it (vtp.jobs.backups)."""
        if retryable and row.get("backup_started_at") is not None:
            return self._promote_backup(cur, row, reason)
        attempts = int(row["attempts"])
        spent = attempts - int(row.get("budget_from") or 0)  # a redrive gives a fresh budget
        if not retryable:
            new = TaskState.FAILED
        elif spent >= (max_attempts or self.retry.max_attempts):
            new = TaskState.DEAD
        else:
            new = TaskState.RETRYING
        updated = self._set_failed(cur, row, new, reason, self.retry.delay(spent))
        log.info(
            "task %s/%s of job %s: %s -> %s after attempt %d: %s",
            row["rendition"],
            row["chunk"],
            row["job_id"],
            row["state"],
            new,
            attempts,
            reason,
        )
        return task_changed(cur, row, updated, detail=reason)

    @staticmethod
    def _set_failed(
        cur: Cursor,
        row: dict[str, Any],
        new: TaskState,
        reason: str,
        delay: float,
        *,
        refusals: int | None = None,
    ) -> dict[str, Any]:
        """The guarded UPDATE of a failure: retrying (due after `delay`), failed or dead."""
        cur.execute(
            f"""
            UPDATE tasks
            SET state = %(new)s, error = %(reason)s, {CLEAR_BACKUP},
                refusals = COALESCE(%(refusals)s, refusals),
                finished_at = CASE WHEN %(new)s = 'retrying' THEN NULL ELSE now() END,
                next_retry_at = CASE WHEN %(new)s = 'retrying'
                                     THEN now() + make_interval(secs => %(delay)s) END
            WHERE job_id = %(job_id)s AND rendition = %(name)s AND chunk = %(chunk)s
              AND state = %(old)s
            RETURNING *
            """,  # noqa: S608 - CLEAR_BACKUP is a constant
            {
                "new": new.value,
                "reason": reason,
                "refusals": refusals,
                "delay": delay,
                "job_id": str(row["job_id"]),
                "name": row["rendition"],
                "chunk": row["chunk"],
                "old": row["state"],
            },
        )
        return one(cur)

    def report_death(
        self, job_id: UUID | str, rendition: str, call_id: str, reason: str, *, chunk: int = 0
    ) -> Task:
        """Note that the running attempt's call was reported dead (a failed status from the
        queue-worker); `confirm_deaths` fails it once it has stayed silent for a while, and
        its next heartbeat, if it is alive after all, drops the report.

        Why not at once: the report comes to a URL that gateways and queue-workers log, and
        nothing a dead call can send proves it is dead, so a forged one would otherwise stop
        an encode that is running fine. Conflict if that call is not the one running.
        """
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Task:
            row = lock_task(cur, jid, rendition, chunk)
            if expect_running(row, call_id):
                return self._drop_backup(cur, row, reason)  # only speculation is lost
            cur.execute(
                """
                UPDATE tasks
                SET death_reported_at = COALESCE(death_reported_at, now()),
                    death_report = COALESCE(death_report, %s)
                WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = 'running'
                RETURNING *
                """,
                (reason, str(jid), rendition, chunk),
            )
            return row_to_task(one(cur))

        return self._run(tx)

    def confirm_deaths(
        self,
        silent_for_s: float,
        *,
        max_attempts: int | None = None,
        job_id: UUID | str | None = None,
    ) -> builtins.list[Task]:
        """Fail the attempts reported dead that have not given a sign of life for
        `silent_for_s` since (more than one heartbeat interval): retrying or dead, with the
        report as the reason; of one job only, with `job_id`. Returns them in their new
        state."""
        only = str(parse_id(job_id)) if job_id is not None else None

        def tx(cur: Cursor) -> builtins.list[Task]:
            cur.execute(
                """
                SELECT * FROM tasks
                WHERE state = 'running' AND death_reported_at IS NOT NULL
                  AND death_reported_at < now() - make_interval(secs => %s)
                  AND (%s::uuid IS NULL OR job_id = %s::uuid)
                ORDER BY death_reported_at
                FOR UPDATE SKIP LOCKED
                """,
                (silent_for_s, only, only),
            )
            return [
                self._fail_locked(cur, dict(row), str(row["death_report"]), True, max_attempts)
                for row in cur.fetchall()
            ]

        return self._run(tx)

    # --- the sweeper's part ------------------------------------------------------------

    def stale_tasks(self, heartbeat_older_than_s: float) -> builtins.list[Task]:
        """Running tasks with no heartbeat for that long: their worker probably died."""

        def tx(cur: Cursor) -> builtins.list[Task]:
            cur.execute(
                """
                SELECT * FROM tasks
                WHERE state = 'running'
                  AND COALESCE(heartbeat_at, attempt_started_at)
                      < now() - make_interval(secs => %s)
                ORDER BY COALESCE(heartbeat_at, attempt_started_at)
                """,
                (heartbeat_older_than_s,),
            )
            return [row_to_task(r) for r in cur.fetchall()]

        return self._run(tx)

    def reap_stale(
        self, heartbeat_older_than_s: float, *, max_attempts: int | None = None
    ) -> builtins.list[Task]:
        """Write off silent attempts: each stale running task -> retrying or dead.

        Staleness is re-checked under the row lock in the same statement that selects, so a
        heartbeat that lands in between wins; SKIP LOCKED lets two sweepers split the work.
        Returns the tasks in their new state.
        """

        def tx(cur: Cursor) -> builtins.list[Task]:
            # A backup call that fell silent is dropped first; its first call goes on (and
            # a first call that fell silent too is then written off, not handed to it).
            cur.execute(
                """
                SELECT * FROM tasks
                WHERE state = 'running' AND backup_started_at IS NOT NULL
                  AND backup_heartbeat_at < now() - make_interval(secs => %s)
                FOR UPDATE SKIP LOCKED
                """,
                (heartbeat_older_than_s,),
            )
            why = f"no heartbeat for {heartbeat_older_than_s:g}s"
            dropped = {
                (r["job_id"], r["rendition"], r["chunk"]): self._drop_backup(cur, dict(r), why)
                for r in cur.fetchall()
            }
            cur.execute(
                """
                SELECT * FROM tasks
                WHERE state = 'running'
                  AND COALESCE(heartbeat_at, attempt_started_at)
                      < now() - make_interval(secs => %s)
                ORDER BY COALESCE(heartbeat_at, attempt_started_at)
                FOR UPDATE SKIP LOCKED
                """,
                (heartbeat_older_than_s,),
            )
            for row in cur.fetchall():
                reason = (
                    f"worker vanished: no heartbeat for {heartbeat_older_than_s:g}s "
                    f"(attempt {row['attempts']}, call {row['last_call_id']})"
                )
                key = (row["job_id"], row["rendition"], row["chunk"])
                dropped[key] = self._fail_locked(cur, dict(row), reason, True, max_attempts)
            return list(dropped.values())

        return self._run(tx)
