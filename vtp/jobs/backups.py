"""Backup calls: a second call for a chunk that straggles, racing the first.

A rendition in chunks is as late as its slowest chunk, and one slow node (a noisy
neighbour, a throttled disk, a bad NIC) makes one chunk run several times longer than its
siblings. So, as MapReduce does with its backup tasks, the sweeper dispatches such a chunk
once more (`stragglers`, `record_backup`) and both calls run:

* the first result recorded wins (`succeed_task` accepts either call; the task is then
  succeeded, and the other call's heartbeat or report is refused with Conflict, which
  stops it before it uploads, or leaves its files in a folder of its own that fan-in
  removes). Nothing is counted twice, because a task succeeds once;
* a backup that fails, dies or falls silent is dropped and the first call goes on
  (`drop_backup`); the first failing (retryably) while its backup runs hands the task to
  the backup (`_promote_backup`) instead of starting a retry;
* a backup is dispatched at most once per task and spends none of its retry budget. Its
  call goes to the end of the gateway's queue, so on a busy pool it starts only once the
  queued work ahead of it has: backups fill idle workers near a job's end, they do not
  take them from chunks that have not begun.

A forged failure report for the backup call drops it at once (unlike one for the first
call, which must survive a heartbeat first): losing a speculative copy costs nothing but
the speed it might have brought.
"""

from __future__ import annotations

import builtins
import logging
from typing import Any
from uuid import UUID

from vtp.errors import Conflict
from vtp.jobs.models import Task
from vtp.jobs.queries import Queries
from vtp.jobs.transactions import Cursor, lock_task, one, parse_id, task_changed

log = logging.getLogger(__name__)

# The columns that make up a backup call, cleared together when it ends.
CLEAR_BACKUP = (
    "backup_call_id = NULL, backup_dispatched_at = NULL, backup_started_at = NULL, "
    "backup_heartbeat_at = NULL"
)


class Backups(Queries):
    def stragglers(
        self, *, factor: float, min_running_s: float, limit: int = 20
    ) -> builtins.list[Task]:
        """Running chunks, with no backup yet, that have run longer than `factor` times
        what their rendition's finished chunks took per second of source (the median),
        scaled to their own length, and longer than `min_running_s` in any case.

        Per second of source, because the last chunk of a rendition absorbs its tail and is
        longer or shorter than the rest; the rendition's own chunks, because one rendition's
        chunks cost the same per second and another's do not. A rendition none of whose
        chunks has finished yet gives no measure, and no stragglers.
        """

        def tx(cur: Cursor) -> builtins.list[Task]:
            cur.execute(
                """
                WITH running AS (  -- open tasks only (tasks_open_idx), not all history
                    SELECT * FROM tasks
                    WHERE state = 'running' AND start_s IS NOT NULL AND backups = 0
                      AND now() - attempt_started_at > make_interval(secs => %(min_s)s)
                ), pace AS (
                    SELECT d.job_id, d.rendition,
                           percentile_cont(0.5) WITHIN GROUP (ORDER BY
                               extract(epoch FROM d.finished_at - d.attempt_started_at)
                               / (d.end_s - d.start_s)) AS s_per_s
                    FROM tasks d JOIN (SELECT DISTINCT job_id, rendition FROM running) r
                         USING (job_id, rendition)
                    WHERE d.state = 'succeeded' AND d.attempt_started_at IS NOT NULL
                    GROUP BY d.job_id, d.rendition
                )
                SELECT t.* FROM running t JOIN pace p USING (job_id, rendition)
                WHERE now() - t.attempt_started_at > make_interval(
                          secs => %(factor)s * p.s_per_s * (t.end_s - t.start_s))
                ORDER BY t.attempt_started_at
                LIMIT %(limit)s
                """,
                {"factor": factor, "min_s": min_running_s, "limit": limit},
            )
            return [Task.model_validate(dict(r)) for r in cur.fetchall()]

        return self._run(tx)

    def record_backup(
        self, job_id: UUID | str, rendition: str, call_id: str, *, chunk: int = 0
    ) -> Task | None:
        """Note a backup call for the running task, before it is handed to the gateway (so
        its report is always recognised). None when the task is no longer running, or has
        had its backup: nothing to dispatch."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Task | None:
            row = lock_task(cur, jid, rendition, chunk)
            if row["state"] != "running" or row["backups"] or row["backup_call_id"]:
                return None
            cur.execute(
                """
                UPDATE tasks SET backup_call_id = %s, backup_dispatched_at = now(),
                                 backups = backups + 1
                WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = 'running'
                RETURNING *
                """,
                (call_id, str(jid), rendition, chunk),
            )
            return task_changed(
                cur, row, one(cur), call_id=call_id,
                detail=f"straggler: backup call {call_id} dispatched",
            )  # fmt: skip

        return self._run(tx)

    def drop_backup(
        self, job_id: UUID | str, rendition: str, call_id: str, reason: str, *, chunk: int = 0
    ) -> Task:
        """The backup call `call_id` failed, died or was refused: forget it; the first call
        goes on. Conflict if that is not the task's backup call (it won, or was dropped)."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Task:
            row = lock_task(cur, jid, rendition, chunk)
            if row["state"] != "running" or row["backup_call_id"] != call_id:
                raise Conflict(
                    f"task {rendition}/{chunk} of job {jid} has no backup call {call_id}"
                )
            return self._drop_backup(cur, row, reason)

        return self._run(tx)

    # --- inside the attempts' own transactions ---------------------------------------------

    @staticmethod
    def _begin_backup(cur: Cursor, row: dict[str, Any]) -> Task:
        """The backup call reached the handler: it runs beside the first, as the same
        attempt (in its own folder)."""
        cur.execute(
            """
            UPDATE tasks SET backup_started_at = now(), backup_heartbeat_at = now()
            WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = 'running'
              AND backup_call_id = %s AND backup_started_at IS NULL
            RETURNING *
            """,
            (str(row["job_id"]), row["rendition"], row["chunk"], row["backup_call_id"]),
        )
        detail = f"backup call {row['backup_call_id']} began beside {row['last_call_id']}"
        return task_changed(cur, row, one(cur), call_id=row["backup_call_id"], detail=detail)

    @staticmethod
    def _drop_backup(cur: Cursor, row: dict[str, Any], reason: str) -> Task:
        cur.execute(
            f"""
            UPDATE tasks SET {CLEAR_BACKUP}
            WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = 'running'
            RETURNING *
            """,  # noqa: S608 - CLEAR_BACKUP is a constant
            (str(row["job_id"]), row["rendition"], row["chunk"]),
        )
        call = row["backup_call_id"]
        log.info("task %s/%s of job %s: backup call %s dropped: %s", row["rendition"],
                 row["chunk"], row["job_id"], call, reason)  # fmt: skip
        detail = f"backup call {call} dropped ({reason}); {row['last_call_id']} goes on"
        return task_changed(cur, row, one(cur), call_id=call, detail=detail)

    @staticmethod
    def _promote_backup(cur: Cursor, row: dict[str, Any], reason: str) -> Task:
        """The first call failed while its backup runs: the backup is the attempt now."""
        cur.execute(
            f"""
            UPDATE tasks
            SET last_call_id = backup_call_id, heartbeat_at = backup_heartbeat_at,
                attempt_started_at = backup_started_at, death_reported_at = NULL,
                death_report = NULL, {CLEAR_BACKUP}
            WHERE job_id = %s AND rendition = %s AND chunk = %s AND state = 'running'
              AND backup_started_at IS NOT NULL
            RETURNING *
            """,  # noqa: S608 - CLEAR_BACKUP is a constant
            (str(row["job_id"]), row["rendition"], row["chunk"]),
        )
        log.info("task %s/%s of job %s: first call %s failed (%s); backup call %s goes on",
                 row["rendition"], row["chunk"], row["job_id"], row["last_call_id"], reason,
                 row["backup_call_id"])  # fmt: skip
        detail = f"call {row['last_call_id']} failed ({reason}); its backup goes on"
        return task_changed(cur, row, one(cur), call_id=row["backup_call_id"], detail=detail)
