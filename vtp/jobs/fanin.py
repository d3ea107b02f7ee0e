"""Fan-in: finishing a job exactly once when its last task ends, and its callback.

Whichever caller sees the last task end calls `claim_finalization`. The job row is
locked and the tasks counted by a fresh statement, so of any number of concurrent
callers exactly one gets the job back (and the others `None`); that one writes the master
playlist, calls `complete_job` and fires the callback. A claim carries a lease: if its holder
dies, `finalizations_due` lists the job again for the sweeper.

Job life: queued -> running (first attempt begins) -> succeeded | failed. The job's `error`
names each rendition that did not succeed and why.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg2.extras

from vtp.errors import Conflict, NotFound
from vtp.jobs.models import CallbackStatus, Job, Rendition
from vtp.jobs.queries import Queries
from vtp.jobs.transactions import (
    KEPT_RESULT_COLUMNS,
    RESULT_COLUMNS,
    TERMINAL_TASK,
    Cursor,
    audit,
    job_row,
    one,
    parse_id,
    row_to_rendition,
)
from vtp.models import JobState


class FanIn(Queries):
    def claim_finalization(
        self, job_id: UUID | str, claimer: str, *, lease_s: float = 300.0
    ) -> Job | None:
        """Return the job to exactly one caller once every task has ended.

        None when a task is still in flight (a rendition of several is not over while one
        of its chunks still runs, even once another failed it), the job is already finished,
        or someone else holds a live claim (younger than `lease_s`). The job row is locked
        first (FOR NO KEY UPDATE: excludes other claimers without blocking audit inserts that
        only need a key-share lock), then the tasks are counted by a new statement, so its
        snapshot includes every task update that committed before the lock was granted.
        """
        jid = parse_id(job_id)

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
                FROM tasks WHERE job_id = %s
                """,
                (list(TERMINAL_TASK), str(jid)),
            )
            counts = one(cur)
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
            audit(cur, jid, None, job["state"], job["state"], detail=detail)
            return True

        return self.get(jid) if self._run(tx) else None

    def finalizations_due(self, *, lease_s: float = 300.0) -> builtins.list[Job]:
        """Jobs whose tasks have all ended but which nobody is finalizing: never claimed
        (the last worker died after its update) or claimed longer than `lease_s` ago."""

        def tx(cur: Cursor) -> builtins.list[UUID]:
            cur.execute(
                """
                SELECT j.id FROM jobs j
                WHERE j.state IN ('queued', 'running')
                  AND (j.finalize_claimed_at IS NULL
                       OR j.finalize_claimed_at <= now() - make_interval(secs => %s))
                  AND EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id)
                  AND NOT EXISTS (SELECT 1 FROM tasks t
                                  WHERE t.job_id = j.id AND t.state <> ALL(%s))
                ORDER BY j.created_at
                """,
                (lease_s, list(TERMINAL_TASK)),
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
        ready: builtins.list[str] | None = None,
        outputs: dict[str, Any] | None = None,
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
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> None:
            row = job_row(cur, jid, "FOR NO KEY UPDATE")
            if JobState(row["state"]).terminal:
                raise Conflict(f"job {jid} is already {row['state']}")
            if claimer is not None and row["finalize_claimed_by"] != claimer:
                raise Conflict(
                    f"job {jid} finalization is claimed by {row['finalize_claimed_by']}, "
                    f"not {claimer}"
                )
            cur.execute(
                """
                UPDATE jobs SET state = %s, error = %s, master_playlist = %s, finished_at = now(),
                                ready = COALESCE(%s, ready), outputs = COALESCE(%s, outputs)
                WHERE id = %s AND state = %s
                """,
                (
                    state.value,
                    reason,
                    master_playlist,
                    ready,
                    psycopg2.extras.Json(outputs) if outputs is not None else None,
                    str(jid),
                    row["state"],
                ),
            )
            audit(cur, jid, None, row["state"], state, detail=reason)

        self._run(tx)
        return self.get(jid)

    def record_joined(self, job_id: UUID | str, rendition: str, result: dict[str, Any]) -> None:
        """The result of a rendition encoded in chunks, once fan-in has joined them (its
        state followed its tasks' already): its playlist, sizes and bit rates."""
        jid = parse_id(job_id)
        columns = {k: result.get(k) for k in RESULT_COLUMNS}

        def tx(cur: Cursor) -> None:
            cur.execute(
                f"""
                UPDATE renditions
                SET result = %(result)s, {KEPT_RESULT_COLUMNS}
                WHERE job_id = %(job)s AND name = %(name)s AND state = 'succeeded'
                """,  # noqa: S608 - KEPT_RESULT_COLUMNS is a constant
                {
                    "result": psycopg2.extras.Json(result),
                    **columns,
                    "job": str(jid),
                    "name": rendition,
                },
            )
            if cur.rowcount != 1:
                raise Conflict(f"rendition {rendition} of job {jid} is not succeeded")

        self._run(tx)

    def record_callback(
        self,
        job_id: UUID | str,
        status: CallbackStatus,
        error: str | None = None,
        *,
        retry_in: float | None = None,
    ) -> Job:
        """Record a callback delivery attempt: delivered, failed for good, or (pending with
        `retry_in` seconds) to be tried again by the sweeper."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> None:
            cur.execute(
                """
                UPDATE jobs
                SET callback_status = %s, callback_last_error = %s, callback_at = now(),
                    callback_attempts = callback_attempts + 1,
                    callback_next_at = CASE WHEN %s::float8 IS NULL THEN NULL
                                            ELSE now() + make_interval(secs => %s) END
                WHERE id = %s
                """,
                (status.value, error, retry_in, retry_in, str(jid)),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no job {jid}")

        self._run(tx)
        return self.get(jid)

    def record_ready(
        self,
        job_id: UUID | str,
        publish: Callable[[builtins.list[Rendition]], builtins.list[str] | None],
    ) -> builtins.list[str] | None:
        """While the job is open (not ended, its finalization not claimed), under its row
        lock: `publish` gets its renditions, writes what they make playable (the master
        playlist) and returns the names it lists, which are recorded. None when the job is
        not open or nothing is playable yet.

        The lock orders two renditions finishing at once: the second writes after the first,
        with both, so the master never loses a rendition it had. The finalization's claim
        waits for it, and its master (the final one) comes after."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> builtins.list[str] | None:
            row = job_row(cur, jid, "FOR UPDATE")
            if JobState(row["state"]).terminal or row["finalize_claimed_by"] is not None:
                return None
            cur.execute("SELECT * FROM renditions WHERE job_id = %s ORDER BY ordinal", (str(jid),))
            renditions = [row_to_rendition(dict(r)) for r in cur.fetchall()]
            ready = publish(renditions)
            if ready is None:
                return None
            cur.execute("UPDATE jobs SET ready = %s WHERE id = %s", (ready, str(jid)))
            return ready

        return self._run(tx)

    def due_callbacks(self, *, limit: int = 20, lease_s: float = 300.0) -> builtins.list[Job]:
        """Claim finished jobs whose pending callback is due again, pushing the next try out
        by `lease_s` so an overlapping sweep leaves them to this one."""

        def tx(cur: Cursor) -> builtins.list[UUID]:
            cur.execute(
                """
                WITH due AS (
                    SELECT id FROM jobs
                    WHERE callback_status = 'pending' AND callback_next_at <= now()
                    ORDER BY callback_next_at
                    LIMIT %s
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE jobs j SET callback_next_at = now() + make_interval(secs => %s)
                FROM due WHERE j.id = due.id
                RETURNING j.id
                """,
                (limit, lease_s),
            )
            return [UUID(str(r["id"])) for r in cur.fetchall()]

        return [self.get(jid) for jid in self._run(tx)]

    def reset_callback(self, job_id: UUID | str) -> Job:
        """A callback to send again (by hand): pending and due now, whatever happened
        before. NotFound for a job without a callback URL; Conflict for one not finished."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> None:
            cur.execute(
                "SELECT state, callback_url FROM jobs WHERE id = %s FOR NO KEY UPDATE",
                (str(jid),),
            )
            row = cur.fetchone()
            if row is None or not row["callback_url"]:
                raise NotFound(f"job {jid} has no callback URL")
            if not JobState(row["state"]).terminal:
                raise Conflict(f"job {jid} is still {row['state']}: its callback comes at its end")
            cur.execute(
                """
                UPDATE jobs SET callback_status = 'pending', callback_next_at = now()
                WHERE id = %s
                """,
                (str(jid),),
            )

        self._run(tx)
        return self.get(jid)

    def claim_periodic(self, task: str, every_s: float) -> bool:
        """True for one caller per `every_s` seconds: work the sweeper does now and then."""

        def tx(cur: Cursor) -> bool:
            cur.execute(
                """
                INSERT INTO periodic_tasks (task, last_run_at) VALUES (%s, now())
                ON CONFLICT (task) DO UPDATE SET last_run_at = now()
                WHERE periodic_tasks.last_run_at <= now() - make_interval(secs => %s)
                RETURNING task
                """,
                (task, every_s),
            )
            return cur.fetchone() is not None

        return self._run(tx)
