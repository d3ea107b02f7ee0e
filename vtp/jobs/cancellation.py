"""Stopping the work of a job that can no longer succeed.

A job succeeds only if every rendition does (`summarize_outcome`), so once one rendition
failed or died, every chunk still to encode, of any rendition, would be encoded for
nothing: a 2-hour film in 48-second chunks is hundreds of calls. Three gates stop them,
each enough on its own, together quick:

* `cancel_doomed`, after every task outcome (fan-in's `maybe_finalize`): the tasks not
  started are ended (failed, "cancelled: ..."), so the job finishes as soon as the running
  ones have;
* `begin_attempt` refuses to start one (a call already queued for it, a retry due);
* a running one's next heartbeat ends it (within a heartbeat interval), and the encode stops.

A cancelled task ends `failed` with the reason; its rendition fails with it, and the job's
error names the rendition that failed first and why.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from vtp import lifecycle
from vtp.jobs.backups import CLEAR_BACKUP
from vtp.jobs.models import Task
from vtp.jobs.queries import Queries
from vtp.jobs.transactions import (
    Cursor,
    cancel_waiting,
    lock_rendition,
    one,
    parse_id,
    sync_rendition,
    task_changed,
)
from vtp.lifecycle import TaskState

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
        failed, with `reason`, and its backup call forgotten."""
        lifecycle.check_task(str(row["state"]), TaskState.FAILED.value)
        cur.execute(
            f"""
            UPDATE tasks
            SET state = 'failed', error = %s, finished_at = now(), next_retry_at = NULL,
                {CLEAR_BACKUP}
            WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = %s
            RETURNING *
            """,  # noqa: S608 - CLEAR_BACKUP is a constant
            (reason, str(row["job_id"]), row["rendition"], row["chunk"], row["state"]),
        )
        return task_changed(cur, row, one(cur), detail=reason)
