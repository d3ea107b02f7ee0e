"""Attempts: a rendition's runs, from the call that starts one to the report that ends it.

Why the transitions look the way they do:

* The OpenFaaS queue-worker calls each function at most once and never retries, but it may
  deliver a message a second time when a call outlives `ack_wait`. So retries, back-off and
  dead-lettering live here, and `begin_attempt` refuses a rendition that is already running
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

Rendition life: queued -> running -> succeeded | failed (permanent) | retrying -> queued
(dispatched again) -> running ... -> dead (budget spent). See `vtp.lifecycle.RetryPolicy`.
"""

from __future__ import annotations

import builtins
import logging
from typing import Any
from uuid import UUID

import psycopg2.extras

from vtp.errors import Conflict
from vtp.jobs.models import Rendition
from vtp.jobs.queries import Queries
from vtp.jobs.transactions import (
    ConnectionFactory,
    Cursor,
    audit,
    expect_running,
    lock_rendition,
    one,
    parse_id,
    row_to_rendition,
)
from vtp.lifecycle import RetryPolicy
from vtp.models import JobState, RenditionState

log = logging.getLogger(__name__)

# Result keys copied into typed columns (the whole dict is kept in `result` as well).
_RESULT_COLUMNS = ("output_prefix", "size_bytes", "avg_bitrate", "peak_bitrate")


class Attempts(Queries):
    def __init__(self, connect: ConnectionFactory, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(connect)
        self.retry = retry or RetryPolicy()

    def begin_attempt(self, job_id: UUID | str, rendition: str, call_id: str) -> Rendition:
        """Start an attempt: queued|retrying -> running, attempts + 1; the job -> running.

        Conflict when the rendition is finished, or running already (under this call id: the
        queue redelivered the message; under another: a second dispatch). A running attempt
        whose worker vanished is written off by the sweeper (`reap_stale`) first, so
        "running" always means "under a live call as far as we know".
        """
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Rendition:
            row = lock_rendition(cur, jid, rendition)
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
                    refusals = 0, heartbeat_at = now(), attempt_started_at = now(),
                    death_reported_at = NULL, death_report = NULL,
                    started_at = COALESCE(started_at, now()), next_retry_at = NULL
                WHERE job_id = %s AND name = %s AND state = %s
                RETURNING *
                """,
                (call_id, str(jid), rendition, state.value),
            )
            updated = row_to_rendition(one(cur))
            audit(cur, jid, rendition, state, RenditionState.RUNNING, updated.attempts, call_id)
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

        return self._run(tx)

    def heartbeat(
        self,
        job_id: UUID | str,
        rendition: str,
        *,
        call_id: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Record a sign of life. Conflict if the attempt is no longer running (under
        `call_id`, as `attempt`): the sweeper wrote it off or another attempt took over, so
        stop working."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> None:
            cur.execute(
                """
                UPDATE renditions r
                SET heartbeat_at = now(), death_reported_at = NULL, death_report = NULL
                FROM (SELECT death_report FROM renditions
                      WHERE job_id = %(job)s AND name = %(name)s FOR UPDATE) AS before
                WHERE r.job_id = %(job)s AND r.name = %(name)s AND r.state = 'running'
                  AND (%(call)s::text IS NULL OR r.last_call_id = %(call)s)
                  AND (%(attempt)s::int IS NULL OR r.attempts = %(attempt)s)
                RETURNING before.death_report
                """,
                {"job": str(jid), "name": rendition, "call": call_id, "attempt": attempt},
            )
            cleared = cur.fetchone()
            if cleared is not None and cleared["death_report"]:
                log.warning(
                    "rendition %s of job %s: its call was reported dead (%s) but the attempt "
                    "is alive; the report is dropped (a forged report, or a confused proxy)",
                    rendition,
                    jid,
                    cleared["death_report"],
                )
            if cur.rowcount == 0:
                row = lock_rendition(cur, jid, rendition)
                raise Conflict(
                    f"rendition {rendition} of job {jid} is {row['state']} "
                    f"(call {row['last_call_id']}, attempt {row['attempts']}), not running "
                    f"under call {call_id} as attempt {attempt}"
                )

        self._run(tx)

    def succeed_rendition(
        self,
        job_id: UUID | str,
        rendition: str,
        result: dict[str, Any],
        *,
        call_id: str | None = None,
        attempt: int | None = None,
    ) -> Rendition:
        """running -> succeeded with the transcode's result (output_prefix, size_bytes,
        avg_bitrate and peak_bitrate are also copied to their own columns)."""
        jid = parse_id(job_id)
        columns = {k: result.get(k) for k in _RESULT_COLUMNS}

        def tx(cur: Cursor) -> Rendition:
            row = lock_rendition(cur, jid, rendition)
            expect_running(row, jid, rendition, call_id, attempt)
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
            updated = row_to_rendition(one(cur))
            audit(
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
        call_id: str | None = None,
        attempt: int | None = None,
        max_attempts: int | None = None,
    ) -> RenditionState:
        """End the running attempt badly; returns the new state.

        retryable and attempts < max_attempts -> retrying (next_retry_at = now + back-off);
        retryable and exhausted -> dead; not retryable -> failed. Only the attempt running
        now may be failed: Conflict when the rendition is not running, or running under
        another call than `call_id` (a report from a superseded attempt changes nothing).
        `call_id=None` is for callers that have no call of their own (an operator's tool).
        """
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> RenditionState:
            row = lock_rendition(cur, jid, rendition)
            expect_running(row, jid, rendition, call_id, attempt)
            return self._fail_locked(cur, row, reason, retryable, max_attempts).state

        return self._run(tx)

    def _fail_locked(
        self,
        cur: Cursor,
        row: dict[str, Any],
        reason: str,
        retryable: bool,
        max_attempts: int | None,
    ) -> Rendition:
        """Apply a failed attempt to a rendition row the caller has locked and checked."""
        attempts = int(row["attempts"])
        if not retryable:
            new = RenditionState.FAILED
        elif attempts >= (max_attempts or self.retry.max_attempts):
            new = RenditionState.DEAD
        else:
            new = RenditionState.RETRYING
        updated = self._set_failed(cur, row, new, reason, self.retry.delay(attempts))
        audit(
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

    @staticmethod
    def _set_failed(
        cur: Cursor,
        row: dict[str, Any],
        new: RenditionState,
        reason: str,
        delay: float,
        *,
        refusals: int | None = None,
    ) -> Rendition:
        """The guarded UPDATE of a failure: retrying (due after `delay`), failed or dead."""
        cur.execute(
            """
            UPDATE renditions
            SET state = %(new)s, error = %(reason)s,
                refusals = COALESCE(%(refusals)s, refusals),
                finished_at = CASE WHEN %(new)s = 'retrying' THEN NULL ELSE now() END,
                next_retry_at = CASE WHEN %(new)s = 'retrying'
                                     THEN now() + make_interval(secs => %(delay)s) END
            WHERE job_id = %(job_id)s AND name = %(name)s AND state = %(old)s
            RETURNING *
            """,
            {
                "new": new.value,
                "reason": reason,
                "refusals": refusals,
                "delay": delay,
                "job_id": str(row["job_id"]),
                "name": row["name"],
                "old": row["state"],
            },
        )
        return row_to_rendition(one(cur))

    def report_death(
        self, job_id: UUID | str, rendition: str, call_id: str, reason: str
    ) -> Rendition:
        """Note that the running attempt's call was reported dead (a failed status from the
        queue-worker); `confirm_deaths` fails it once it has stayed silent for a while, and
        its next heartbeat, if it is alive after all, drops the report.

        Why not at once: the report comes to a URL that gateways and queue-workers log, and
        nothing a dead call can send proves it is dead, so a forged one would otherwise stop
        an encode that is running fine. Conflict if that call is not the one running.
        """
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Rendition:
            row = lock_rendition(cur, jid, rendition)
            expect_running(row, jid, rendition, call_id)
            cur.execute(
                """
                UPDATE renditions
                SET death_reported_at = COALESCE(death_reported_at, now()),
                    death_report = COALESCE(death_report, %s)
                WHERE job_id = %s AND name = %s AND state = 'running'
                RETURNING *
                """,
                (reason, str(jid), rendition),
            )
            return row_to_rendition(one(cur))

        return self._run(tx)

    def confirm_deaths(
        self,
        silent_for_s: float,
        *,
        max_attempts: int | None = None,
        job_id: UUID | str | None = None,
    ) -> builtins.list[Rendition]:
        """Fail the attempts reported dead that have not given a sign of life for
        `silent_for_s` since (more than one heartbeat interval): retrying or dead, with the
        report as the reason; of one job only, with `job_id`. Returns them in their new
        state."""
        only = str(parse_id(job_id)) if job_id is not None else None

        def tx(cur: Cursor) -> builtins.list[Rendition]:
            cur.execute(
                """
                SELECT * FROM renditions
                WHERE state = 'running' AND death_reported_at IS NOT NULL
                  AND death_reported_at < now() - make_interval(secs => %s)
                  AND (%s::uuid IS NULL OR job_id = %s::uuid)
                ORDER BY death_reported_at
                FOR UPDATE SKIP LOCKED
                """,
                (silent_for_s, only, only),
            )
            return [
                self._fail_locked(cur, row, str(row["death_report"]), True, max_attempts)
                for row in cur.fetchall()
            ]

        return self._run(tx)

    # --- the sweeper's part ------------------------------------------------------------

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
            return [row_to_rendition(r) for r in cur.fetchall()]

        return self._run(tx)

    def reap_stale(
        self, heartbeat_older_than_s: float, *, max_attempts: int | None = None
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
