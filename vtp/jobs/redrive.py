"""Redriving a failed job: its dead letters queued again, with a fresh budget.

A rendition dies when its budget is spent (a function that kept crashing, a worker that
kept vanishing) and fails for good on errors a retry cannot help (an encoder bug, input
ffmpeg cannot read). Once the operator has fixed the cause (deployed a fix, given the
function more memory), `redrive_job` takes the job back: its failed and dead renditions,
and of them every task that did not succeed, go back to queued; what succeeded is kept.
The attempt count goes on (each attempt still writes a folder of its own), but only
attempts after the redrive count against the budget (`tasks.budget_from`).

The caller dispatches the tasks returned. The job's callback is due again at its new end.
"""

from __future__ import annotations

import logging
from uuid import UUID

from vtp import lifecycle
from vtp.errors import Conflict
from vtp.jobs.backups import CLEAR_BACKUP
from vtp.jobs.models import Job, Task
from vtp.jobs.queries import Queries
from vtp.jobs.transactions import (
    Cursor,
    insert_change,
    job_row,
    lock_rendition,
    one,
    parse_id,
    row_to_task,
    sync_rendition,
)
from vtp.lifecycle import JobState, RenditionState

log = logging.getLogger(__name__)

REDRIVE_NOTE = "redriven: queued again with a fresh budget"


class Redrive(Queries):
    def redrive_job(self, job_id: UUID | str) -> tuple[Job, list[Task]]:
        """Queue a failed job's failed and dead work again; the job and the tasks to
        dispatch. Conflict for a job that is not failed (still running: its failures retry
        by themselves; succeeded or cancelled: nothing to redrive) or that has no
        renditions (its source was refused: that is a new job's matter)."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> list[Task]:
            state = str(job_row(cur, jid)["state"])
            if state not in lifecycle.REDRIVABLE["job"]:
                raise Conflict(f"job {jid} is {state}: only a failed job can be redriven")
            cur.execute(
                "SELECT name, state FROM renditions WHERE job_id = %s ORDER BY name",
                (str(jid),),
            )
            broken = [
                str(r["name"])
                for r in cur.fetchall()
                if r["state"] in lifecycle.REDRIVABLE["rendition"]
            ]
            if not broken:
                raise Conflict(
                    f"job {jid} has no failed rendition to redrive (its source was refused: "
                    'upload it again, or post it with "reprocess": true)'
                )
            queued: list[Task] = []
            for name in broken:
                # Tasks before their rendition, as every transition locks them.
                cur.execute(
                    """
                    SELECT * FROM tasks
                    WHERE job_id = %s AND rendition = %s AND state = ANY(%s)
                    ORDER BY chunk FOR UPDATE
                    """,
                    (str(jid), name, sorted(lifecycle.REDRIVABLE["task"])),
                )
                rows = [dict(r) for r in cur.fetchall()]
                reopened = []
                rend = lock_rendition(cur, jid, name)
                lifecycle.check_redrive("rendition", str(rend["state"]))
                cur.execute(
                    """
                    UPDATE renditions SET state = 'queued', error = NULL, finished_at = NULL
                    WHERE job_id = %s AND name = %s
                    """,
                    (str(jid), name),
                )
                insert_change(cur, jid, name, None, str(rend["state"]),
                              RenditionState.QUEUED.value, None, None, REDRIVE_NOTE)  # fmt: skip
                for row in rows:
                    lifecycle.check_redrive("task", str(row["state"]))
                    cur.execute(
                        f"""
                        UPDATE tasks
                        SET state = 'queued', error = NULL, result = NULL, finished_at = NULL,
                            next_retry_at = NULL, heartbeat_at = NULL, refusals = 0,
                            dispatch_call_id = NULL, dispatched_at = NULL,
                            death_reported_at = NULL, death_report = NULL, {CLEAR_BACKUP},
                            budget_from = attempts, redrives = redrives + 1
                        WHERE job_id = %s AND rendition = %s AND chunk = %s
                        RETURNING *
                        """,  # noqa: S608 - CLEAR_BACKUP is a constant
                        (str(jid), name, row["chunk"]),
                    )
                    after = one(cur)
                    # Recorded as the redrive it is (the transition table has no way out of
                    # an end).
                    insert_change(cur, jid, name, int(row["chunk"]), str(row["state"]),
                                  "queued", int(row["attempts"]), None, REDRIVE_NOTE)  # fmt: skip
                    reopened.append(after)
                # The rendition in step once all its tasks are queued (one at a time, the
                # others still failed would fail it again).
                state = sync_rendition(cur, jid, name)
                queued += [row_to_task(t, rendition_state=state) for t in reopened]
            cur.execute("SELECT state FROM jobs WHERE id = %s FOR UPDATE", (str(jid),))
            now = str(one(cur)["state"])
            lifecycle.check_redrive("job", now)
            cur.execute(
                """
                UPDATE jobs
                SET state = 'queued', error = NULL, finished_at = NULL, started_at = NULL,
                    master_playlist = NULL, finalize_claimed_by = NULL,
                    finalize_claimed_at = NULL, redrives = redrives + 1,
                    callback_status = CASE WHEN callback_url IS NULL THEN 'none'
                                           ELSE 'pending' END,
                    callback_attempts = 0, callback_next_at = NULL, callback_last_error = NULL
                WHERE id = %s
                """,
                (str(jid),),
            )
            insert_change(cur, jid, None, None, now, JobState.QUEUED.value, None, None,
                          f"{REDRIVE_NOTE}: {', '.join(broken)}")  # fmt: skip
            return queued

        tasks = self._run(tx)
        log.info("job %s redriven: %d task(s) queued again", jid, len(tasks))
        return self.get(jid), tasks
