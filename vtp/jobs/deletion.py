"""Deleting a job's rows, and expiring old jobs' outputs.

`delete_job` removes a job that has ended, with its renditions, tasks and trail (the
foreign keys cascade), and leaves a note of its source version in `deleted_jobs`:
reconciliation submits any object of an input bucket that no job knows, and would
otherwise make the job again from the source the operator chose to keep. The caller removes
the outputs first, so a failure there leaves the rows to try again with.

Retention (`expired`, `mark_outputs_deleted`): jobs that ended more than N days ago have
their outputs removed by the sweeper; their rows stay, as history, marked.
"""

from __future__ import annotations

import builtins
import logging
from uuid import UUID

from vtp.errors import Conflict
from vtp.jobs.models import Job
from vtp.jobs.queries import Queries
from vtp.jobs.transactions import Cursor, one, parse_id
from vtp.lifecycle import JobState

log = logging.getLogger(__name__)


class Deletion(Queries):
    def delete_job(self, job_id: UUID | str) -> Job:
        """Delete an ended job's rows; the job as it was. Conflict for one still at work
        (cancel it first); NotFound for an unknown one."""
        jid = parse_id(job_id)
        job = self.get(jid)

        def tx(cur: Cursor) -> None:
            cur.execute("SELECT state FROM jobs WHERE id = %s FOR UPDATE", (str(jid),))
            state = JobState(one(cur)["state"])
            if not state.terminal:
                raise Conflict(f"job {jid} is {state.value}: cancel it first (vtp cancel)")
            cur.execute(
                """
                INSERT INTO deleted_jobs (job_id, source_bucket, source_key, source_etag,
                                          options_key)
                SELECT id, source_bucket, source_key, source_etag, options_key
                FROM jobs WHERE id = %s
                ON CONFLICT (job_id) DO NOTHING
                """,
                (str(jid),),
            )
            cur.execute("DELETE FROM jobs WHERE id = %s", (str(jid),))

        self._run(tx)
        log.info("job %s deleted", jid)
        return job

    def source_in_use(self, job: Job) -> builtins.list[UUID]:
        """The other jobs of the job's source version that have not ended: deleting the
        source would fail them."""

        def tx(cur: Cursor) -> builtins.list[UUID]:
            cur.execute(
                """
                SELECT id FROM jobs
                WHERE source_bucket = %s AND source_key = %s AND source_etag = %s
                  AND id <> %s AND finished_at IS NULL
                ORDER BY created_at
                """,
                (job.source.bucket, job.source.key, job.source.normalized_etag, str(job.id)),
            )
            return [UUID(str(r["id"])) for r in cur.fetchall()]

        return self._run(tx)

    def expired(self, days: float, *, limit: int = 100) -> builtins.list[Job]:
        """Ended jobs older than `days` (by their end) whose outputs are still there,
        oldest first."""

        def tx(cur: Cursor) -> builtins.list[UUID]:
            cur.execute(
                """
                SELECT id FROM jobs
                WHERE finished_at IS NOT NULL AND outputs_deleted_at IS NULL
                  AND finished_at < now() - make_interval(secs => %s)
                ORDER BY finished_at LIMIT %s
                """,
                (days * 86400.0, limit),
            )
            return [UUID(str(r["id"])) for r in cur.fetchall()]

        return [self.get(jid) for jid in self._run(tx)]

    def mark_outputs_deleted(self, job_id: UUID | str) -> None:
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> None:
            cur.execute("UPDATE jobs SET outputs_deleted_at = now() WHERE id = %s", (str(jid),))

        self._run(tx)
