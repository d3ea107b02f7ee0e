"""Recording jobs: a planned job with its renditions and their tasks, or a source refused
with its reason.

MinIO delivers events at least once and a user may also invoke split by hand, so the same
object version (bucket, key, etag) with the same options (`options_key`, vtp.options) must
map to one job: both inserts are idempotent on that key and tell the caller whether the
row is new.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg2.extras

from vtp.errors import Conflict, InvalidRequest
from vtp.jobs.models import CallbackStatus, Job, SourceRef
from vtp.jobs.queries import Queries
from vtp.jobs.transactions import Cursor, audit, insert_change, parse_id
from vtp.media.chunks import ChunkRange
from vtp.models import JobState, RenditionSpec, SourceInfo
from vtp.options import DEFAULT_OPTIONS_KEY

log = logging.getLogger(__name__)


class Submission(Queries):
    def create_job(
        self,
        source: SourceRef,
        info: SourceInfo,
        plan: Sequence[RenditionSpec],
        *,
        options_key: str = DEFAULT_OPTIONS_KEY,
        options: dict[str, Any] | None = None,
        formats: Sequence[str] = ("hls",),
        callback_url: str | None = None,
        chunks: Sequence[ChunkRange] = (),
        decision: dict[str, Any] | None = None,
        priority: int = 50,
    ) -> tuple[Job, bool]:
        """Record a job and its renditions; `(job, True)` if new, `(existing, False)` if not.

        MinIO delivers events at least once and a user may also invoke split by hand, so the
        same (bucket, key, etag, options_key) must map to one job. ON CONFLICT DO NOTHING
        waits for a concurrent inserter, so two racing calls still produce one job.

        `chunks`: every video rendition is encoded as these parts of the source, one task
        each (vtp.media.chunks); an audio rendition and, without chunks, every rendition is one
        task for the whole source. `decision`: how the ladder was decided (jobs.plan).
        `priority`: its share against other jobs' (vtp.jobs.scheduling).
        """
        if not plan:
            raise InvalidRequest("a job needs at least one rendition")
        names = [spec.name for spec in plan]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"duplicate rendition names in plan: {names}")
        if not formats:
            raise InvalidRequest("a job needs at least one output format")

        def tx(cur: Cursor) -> tuple[UUID, bool]:
            cur.execute(
                """
                INSERT INTO jobs (source_bucket, source_key, source_etag, source_size,
                                  options_key, options, source_info, formats, callback_url,
                                  callback_status, plan, priority)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (source_bucket, source_key, source_etag, options_key) DO NOTHING
                RETURNING id
                """,
                (
                    source.bucket,
                    source.key,
                    source.normalized_etag,
                    source.size,
                    options_key,
                    psycopg2.extras.Json(options) if options is not None else None,
                    psycopg2.extras.Json(info.model_dump(mode="json")),
                    list(formats),
                    callback_url,
                    (CallbackStatus.PENDING if callback_url else CallbackStatus.NONE).value,
                    psycopg2.extras.Json(decision) if decision is not None else None,
                    priority,
                ),
            )
            row = cur.fetchone()
            if row is None:
                return self._id_for_source(cur, source, options_key), False
            job_id = UUID(str(row["id"]))
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO renditions (job_id, name, ordinal, function, spec) VALUES %s",
                [
                    (str(job_id), spec.name, i, spec.function, spec.model_dump_json())
                    for i, spec in enumerate(plan)
                ],
                template="(%s, %s, %s, %s, %s::jsonb)",
            )
            # One task per chunk of each rendition; a rendition encoded whole: chunk 0, no range.
            parts: list[tuple[int, float | None, float | None]] = [
                (c.index, c.start_s, c.end_s) for c in chunks
            ] or [(0, None, None)]
            whole: list[tuple[int, float | None, float | None]] = [(0, None, None)]
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO tasks (job_id, rendition, chunk, function, start_s, end_s) VALUES %s",
                [
                    (str(job_id), spec.name, index, spec.function, start, end)
                    for spec in plan
                    for index, start, end in (whole if spec.kind != "video" else parts)
                ],
            )
            audit(cur, job_id, None, None, JobState.QUEUED, detail=f"renditions: {names}")
            return job_id, True

        job_id, created = self._run(tx)
        if not created:
            log.info(
                "job for %s/%s (etag %s) exists already", source.bucket, source.key, source.etag
            )
        return self.get(job_id), created

    def record_rejected(
        self,
        source: SourceRef,
        reason: str,
        *,
        options_key: str = DEFAULT_OPTIONS_KEY,
        options: dict[str, Any] | None = None,
        callback_url: str | None = None,
    ) -> tuple[Job, bool]:
        """Record a source we refused (not a video, too big...) as a failed job.

        Keeping it means a client polling for the object learns why, the callback can say so,
        and a redelivered event for the same object is recognised instead of re-probed.
        """

        def tx(cur: Cursor) -> tuple[UUID, bool]:
            cur.execute(
                """
                INSERT INTO jobs (source_bucket, source_key, source_etag, source_size,
                                  options_key, options, state, error, finished_at,
                                  callback_url, callback_status)
                VALUES (%s, %s, %s, %s, %s, %s, 'failed', %s, now(), %s, %s)
                ON CONFLICT (source_bucket, source_key, source_etag, options_key) DO NOTHING
                RETURNING id
                """,
                (
                    source.bucket,
                    source.key,
                    source.normalized_etag,
                    source.size,
                    options_key,
                    psycopg2.extras.Json(options) if options is not None else None,
                    reason,
                    callback_url,
                    (CallbackStatus.PENDING if callback_url else CallbackStatus.NONE).value,
                ),
            )
            row = cur.fetchone()
            if row is None:
                return self._id_for_source(cur, source, options_key), False
            job_id = UUID(str(row["id"]))
            audit(cur, job_id, None, None, JobState.FAILED, detail=f"rejected: {reason}")
            return job_id, True

        job_id, created = self._run(tx)
        return self.get(job_id), created

    def attach_callback(self, job_id: UUID | str, url: str) -> tuple[Job, bool]:
        """Give a job that has no callback URL this one; whether it was attached. A job that
        has ended gets it due now; one still running sends it at its end. The row lock
        orders this against the job's own end: either the end sees the URL, or this sees
        the end."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> bool:
            cur.execute(
                """
                UPDATE jobs
                SET callback_url = %s, callback_status = 'pending', callback_attempts = 0,
                    callback_next_at = CASE WHEN finished_at IS NULL THEN NULL ELSE now() END
                WHERE id = %s AND callback_url IS NULL
                RETURNING state
                """,
                (url, str(jid)),
            )
            row = cur.fetchone()
            if row is None:
                return False
            state = str(row["state"])  # the trail records it as a same-state change
            insert_change(cur, jid, None, None, state, state, None, None, "callback URL attached")
            return True

        attached = self._run(tx)
        return self.get(jid), attached

    @staticmethod
    def _id_for_source(cur: Cursor, source: SourceRef, options_key: str) -> UUID:
        cur.execute(
            """
            SELECT id FROM jobs
            WHERE source_bucket = %s AND source_key = %s AND source_etag = %s
              AND options_key = %s
            """,
            (source.bucket, source.key, source.normalized_etag, options_key),
        )
        row = cur.fetchone()
        if row is None:  # only if someone deleted it between the two statements
            raise Conflict(f"job for {source.bucket}/{source.key} vanished while being created")
        return UUID(str(row["id"]))
