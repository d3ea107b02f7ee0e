"""Stopping the work of a job that can no longer succeed.

A job succeeds only if every rendition does (`summarize_outcome`), so once one rendition
failed or died, every chunk still to encode, of any rendition, would be encoded for
nothing: a 2-hour film in 48-second chunks is hundreds of calls. Three gates stop them,
each enough on its own, together quick:

* `cancel_doomed`, after every task outcome (fan-in's `maybe_finalize`): the tasks not
  started are ended (cancelled, "cancelled: ..."), so the job finishes as soon as the
  running ones have;
* `begin_attempt` refuses to start one (a call already queued for it, a retry due);
* a running one's next heartbeat ends it (within a heartbeat interval), and the encode stops.

A task stopped so ends `cancelled` with the reason (nobody's fault: not `failed`, which
says its input was bad), its rendition too unless one of its own tasks failed or died, and
the job's error names the rendition that failed or died first and why, the cancelled ones
after it. (Two renditions of one function that stays down race to spend their refusal
budgets: the first to die is `dead`, the other `cancelled`, naming it.) A redrive reopens
cancelled renditions with the failed and dead ones.

A job cancelled on request (`cancel_job`: `vtp cancel`, split's cancel route) is another
matter: nothing failed, so its open tasks, its renditions not ended and the job itself end
`cancelled`, in one transaction. The same gates stop the work: a queued call finds its task
ended, and a running attempt's next heartbeat is refused (the transcode also watches a
Redis flag, so that it stops within a second or two rather than a heartbeat interval).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from vtp import lifecycle
from vtp.errors import Conflict
from vtp.jobs.backups import CLEAR_BACKUP
from vtp.jobs.models import Job, Task
from vtp.jobs.queries import Queries
from vtp.jobs.transactions import (
    TERMINAL_TASK,
    Cursor,
    audit,
    cancel_waiting,
    job_row,
    lock_rendition,
    one,
    parse_id,
    sync_rendition,
    task_changed,
)
from vtp.lifecycle import JobState, TaskState

log = logging.getLogger(__name__)


class Cancellation(Queries):
    def cancel_doomed(self, job_id: UUID | str) -> int:
        """End the tasks of the job not started yet, if one of its renditions failed or
        died; how many. A task in the middle of its own transition (locked) is skipped: it
        meets a gate when it next starts or beats."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> int:
            reason = self._doomed(cur, jid)
            if reason is None:
                return 0
            cur.execute(
                """
                SELECT DISTINCT rendition FROM tasks
                WHERE job_id = %s AND state IN ('queued', 'retrying') ORDER BY rendition
                """,
                (str(jid),),
            )
            cancelled = 0
            # Renditions in name order, each locked before its tasks (SKIP LOCKED), as every
            # transition does: two of these, or one and a transition, cannot deadlock.
            for name in [r["rendition"] for r in cur.fetchall()]:
                lock_rendition(cur, jid, name)
                cancelled += cancel_waiting(cur, jid, name, reason)
                sync_rendition(cur, jid, name)
            if cancelled:
                log.info("job %s: %d tasks not started cancelled: %s", jid, cancelled, reason)
            return cancelled

        return self._run(tx)

    def cancel_job(self, job_id: UUID | str, reason: str) -> tuple[Job, int]:
        """End a job that has not ended, on request: every task of it not ended, and every
        rendition, `cancelled` with `reason`; then the job. Returns the job and how many
        tasks were cancelled. Conflict for a job that has ended, or is ending (every task
        done, its finalization under way); NotFound for an unknown one.

        Locks go as in every transition, tasks before their rendition, the job's row last
        (begin_attempt takes it after its task's), so this cannot deadlock with them. Tasks
        are waited for, not skipped: a task in the middle of its own transition is
        cancelled once that commits."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> int:
            found = job_row(cur, jid)
            if JobState(found["state"]).terminal:
                raise Conflict(f"job {jid} has ended ({found['state']}): nothing to cancel")
            cur.execute("SELECT name FROM renditions WHERE job_id = %s ORDER BY name", (str(jid),))
            cancelled = 0
            for name in [r["name"] for r in cur.fetchall()]:
                cur.execute(
                    """
                    SELECT * FROM tasks
                    WHERE job_id = %s AND rendition = %s AND state <> ALL(%s)
                    ORDER BY chunk FOR UPDATE
                    """,
                    (str(jid), name, list(TERMINAL_TASK)),
                )
                for row in [dict(r) for r in cur.fetchall()]:
                    lifecycle.check_task(str(row["state"]), TaskState.CANCELLED.value)
                    cur.execute(
                        f"""
                        UPDATE tasks
                        SET state = 'cancelled', error = %s, finished_at = now(),
                            next_retry_at = NULL, {CLEAR_BACKUP}
                        WHERE job_id = %s AND rendition = %s AND chunk = %s
                        RETURNING *
                        """,  # noqa: S608 - CLEAR_BACKUP is a constant
                        (reason, str(jid), name, row["chunk"]),
                    )
                    task_changed(cur, row, one(cur), detail=reason)
                    cancelled += 1
            cur.execute("SELECT state FROM jobs WHERE id = %s FOR UPDATE", (str(jid),))
            state = JobState(one(cur)["state"])
            if state.terminal or cancelled == 0:
                # Ended meanwhile, or every task had: the job is being finished (fan-in).
                raise Conflict(
                    f"job {jid} is {'ending' if not state.terminal else state.value}: "
                    "every task of it has ended, nothing to cancel"
                )
            cur.execute(
                """
                UPDATE jobs
                SET state = 'cancelled', error = %s, finished_at = now(),
                    finalize_claimed_by = NULL, finalize_claimed_at = NULL
                WHERE id = %s
                """,
                (reason, str(jid)),
            )
            audit(cur, jid, None, state, JobState.CANCELLED, detail=reason)
            return cancelled

        count = self._run(tx)
        log.info("job %s cancelled (%d tasks not ended): %s", jid, count, reason)
        return self.get(jid), count

    # --- inside the attempts' own transactions ---------------------------------------------

    @staticmethod
    def _doomed(cur: Cursor, jid: UUID) -> str | None:
        """Why the job can no longer succeed (a rendition of it failed or died), or None."""
        cur.execute(
            """
            SELECT name, state FROM renditions
            WHERE job_id = %s AND state IN ('failed', 'dead')
            ORDER BY finished_at, name LIMIT 1
            """,
            (str(jid),),
        )
        row = cur.fetchone()
        if row is None:
            return None
        return f"cancelled: rendition {row['name']} is {row['state']}, so the job cannot succeed"

    @staticmethod
    def _cancel_row(cur: Cursor, row: dict[str, Any], reason: str) -> Task:
        """End a locked task that has not finished (running, or waiting for its call):
        cancelled, with `reason`, and its backup call forgotten."""
        lifecycle.check_task(str(row["state"]), TaskState.CANCELLED.value)
        cur.execute(
            f"""
            UPDATE tasks
            SET state = 'cancelled', error = %s, finished_at = now(), next_retry_at = NULL,
                {CLEAR_BACKUP}
            WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = %s
            RETURNING *
            """,  # noqa: S608 - CLEAR_BACKUP is a constant
            (reason, str(row["job_id"]), row["rendition"], row["chunk"], row["state"]),
        )
        return task_changed(cur, row, one(cur), detail=reason)
