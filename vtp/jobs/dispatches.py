"""Dispatches: the calls put on the gateway's queue for a task, and those refused.

A task waits in `queued` for one call at a time, the one whose X-Call-Id split chose and
recorded (`record_dispatch`) before handing it to the gateway. The queue-worker reports the
outcome of every call to split's callback route; a call that never reached the handler
(the function down, restarting, busy or unknown to the provider) is a *refusal*
(`record_refusal`): it spends no attempt, but refusals in a row have a budget of their own
(`RetryPolicy.max_refusals`), with back-off, so a function that stays down ends in a dead
letter with its reason instead of being re-dispatched forever. Refusals are counted only for
the call being waited for: a late report of a superseded call changes nothing.

Which task gets a call when is fair share's choice (vtp.jobs.scheduling: it records its calls
the way `record_dispatch` does). The sweeper re-dispatches what waited so long that its call
was probably lost (`lost_dispatches`), claiming rows under a lease so overlapping sweeps do
not dispatch twice; a duplicate call that does arrive is refused by `begin_attempt`.
"""

from __future__ import annotations

import builtins
import logging
from uuid import UUID

from vtp.errors import Conflict
from vtp.jobs.attempts import Attempts
from vtp.jobs.models import Task
from vtp.jobs.transactions import Cursor, lock_task, one, parse_id, row_to_task, task_changed
from vtp.lifecycle import TaskState

log = logging.getLogger(__name__)


def record_call(cur: Cursor, jid: UUID, rendition: str, chunk: int, call_id: str) -> Task | None:
    """In `cur`'s transaction: queued|retrying -> queued, waiting for call `call_id`; None
    when the task is running or finished (or cancelled) meanwhile: nothing to dispatch.
    `record_dispatch` and fair share's claims (vtp.jobs.scheduling) both record calls so."""
    row = lock_task(cur, jid, rendition, chunk)
    state = TaskState(row["state"])
    if state not in (TaskState.QUEUED, TaskState.RETRYING):
        return None
    cur.execute(
        """
        UPDATE tasks
        SET state = 'queued', dispatch_call_id = %s, dispatched_at = now(),
            next_retry_at = NULL
        WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = %s
        RETURNING *
        """,
        (call_id, str(jid), rendition, chunk, state.value),
    )
    detail = "dispatched again" if state is TaskState.RETRYING else None
    return task_changed(cur, row, one(cur), call_id=call_id, detail=detail)


class Dispatches(Attempts):
    def record_dispatch(
        self, job_id: UUID | str, rendition: str, call_id: str, *, chunk: int = 0
    ) -> Task | None:
        """queued|retrying -> queued, waiting for call `call_id`: call this *before* the call is
        handed to the gateway, so that its report can never arrive unrecognised. None when
        the task is running or finished: nothing to dispatch."""
        jid = parse_id(job_id)
        return self._run(lambda cur: record_call(cur, jid, rendition, chunk, call_id))

    def record_report(
        self, job_id: UUID | str, rendition: str, call_id: str, *, chunk: int = 0
    ) -> None:
        """The queue-worker reported the end of call `call_id`: if it is the task's latest
        call, its slot frees (after the hand-over to the acknowledgement: see
        vtp.jobs.scheduling). A report of an older call changes nothing."""
        jid = parse_id(job_id)

        def report(cur: Cursor) -> None:
            cur.execute(
                """
                UPDATE tasks SET reported_call_id = %s, reported_at = now()
                WHERE job_id = %s AND rendition = %s AND chunk = %s AND dispatch_call_id = %s
                """,
                (call_id, str(jid), rendition, chunk, call_id),
            )

        self._run(report)

    def record_refusal(
        self,
        job_id: UUID | str,
        rendition: str,
        call_id: str | None,
        reason: str,
        *,
        chunk: int = 0,
    ) -> Task:
        """The call the task waits for never reached the handler: queued -> retrying
        (after a back-off) or, once `max_refusals` calls in a row were refused, -> dead.

        Conflict when the task is not waiting for `call_id` (it runs, ended, or waits
        for a newer call): the report is stale. `call_id=None` matches whatever call is
        awaited (a dispatch that failed before any call id reached the gateway).
        """
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Task:
            row = lock_task(cur, jid, rendition, chunk)
            what = f"task {rendition}/{chunk} of job {jid}"
            if row["state"] != TaskState.QUEUED.value:
                raise Conflict(f"{what} is {row['state']}, not waiting for a call")
            if call_id is not None and row["dispatch_call_id"] != call_id:
                raise Conflict(
                    f"{what} waits for call {row['dispatch_call_id']}, not {call_id}: "
                    "a superseded call"
                )
            refusals = int(row["refusals"]) + 1
            if refusals >= self.retry.max_refusals:
                new = TaskState.DEAD
                why = f"{reason} ({refusals} calls in a row refused; giving up)"
            else:
                new = TaskState.RETRYING
                why = f"{reason} (refused call {refusals} of {self.retry.max_refusals})"
            delay = self.retry.delay(refusals)
            updated = self._set_failed(cur, row, new, why, delay, refusals=refusals)
            log.info("task %s/%s of job %s: queued -> %s: %s", rendition, chunk, jid, new, why)
            return task_changed(cur, row, updated, call_id=row["dispatch_call_id"], detail=why)

        return self._run(tx)

    def lost_dispatches(self, older_than_s: float, *, limit: int = 100) -> builtins.list[Task]:
        """Claim tasks still queued `older_than_s` after their dispatch, to dispatch again
        (a task waiting for a slot has no call to lose: vtp.jobs.scheduling).

        A long queue is not a lost call, so the threshold should be generous; claiming moves
        dispatched_at to now (a lease), and a duplicate call that does arrive is refused by
        `begin_attempt` once the first one runs.
        """

        def tx(cur: Cursor) -> builtins.list[Task]:
            cur.execute(
                """
                WITH lost AS (
                    SELECT job_id, rendition, chunk FROM tasks
                    WHERE state = 'queued' AND dispatch_call_id IS NOT NULL
                      AND dispatched_at < now() - make_interval(secs => %s)
                    ORDER BY dispatched_at
                    LIMIT %s
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE tasks t SET dispatched_at = now()
                FROM lost
                WHERE t.job_id = lost.job_id AND t.rendition = lost.rendition
                  AND t.chunk = lost.chunk
                RETURNING t.*
                """,
                (older_than_s, limit),
            )
            return [row_to_task(row) for row in cur.fetchall()]

        return self._run(tx)
