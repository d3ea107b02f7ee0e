"""Reading jobs: by id (or an unambiguous prefix of one), by source object, in lists, and
their audit trail. Every other part of the store builds on these."""

from __future__ import annotations

import builtins
import re
from datetime import datetime
from typing import Any
from uuid import UUID

from vtp.errors import InvalidRequest, NotFound
from vtp.jobs.models import Job, SourceRef, StateChange
from vtp.jobs.transactions import Cursor, Transactions, parse_id, row_to_job
from vtp.models import JobState

# What a job id looks like when shortened (the page and the CLI show the first 8 digits).
_ID_PREFIX = re.compile(r"^[0-9a-f-]{4,36}$")


class Queries(Transactions):
    def find(self, source: SourceRef, options_key: str) -> Job | None:
        """The job of this object version with these options, if there is one (the
        idempotency key's lookup)."""

        def tx(cur: Cursor) -> UUID | None:
            cur.execute(
                """
                SELECT id FROM jobs
                WHERE source_bucket = %s AND source_key = %s AND source_etag = %s
                  AND options_key = %s
                """,
                (source.bucket, source.key, source.normalized_etag, options_key),
            )
            row = cur.fetchone()
            return UUID(str(row["id"])) if row else None

        job_id = self._run(tx)
        return self.get(job_id) if job_id else None

    def versions_jobs(self, source: SourceRef) -> builtins.list[tuple[UUID, str]]:
        """Every job of this object version, oldest first: (id, options_key)."""

        def tx(cur: Cursor) -> builtins.list[tuple[UUID, str]]:
            cur.execute(
                """
                SELECT id, options_key FROM jobs
                WHERE source_bucket = %s AND source_key = %s AND source_etag = %s
                ORDER BY created_at, id
                """,
                (source.bucket, source.key, source.normalized_etag),
            )
            return [(UUID(str(r["id"])), str(r["options_key"])) for r in cur.fetchall()]

        return self._run(tx)

    def get(self, job_id: UUID | str) -> Job:
        """The job with its renditions in plan order; NotFound for an unknown or malformed id."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> Job:
            cur.execute("SELECT * FROM jobs WHERE id = %s", (str(jid),))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"no job {jid}")
            cur.execute("SELECT * FROM renditions WHERE job_id = %s ORDER BY ordinal", (str(jid),))
            renditions = cur.fetchall()
            cur.execute("SELECT * FROM tasks WHERE job_id = %s ORDER BY chunk", (str(jid),))
            return row_to_job(row, renditions, cur.fetchall())

        return self._run(tx)

    def list(
        self,
        state: JobState | None = None,
        limit: int = 50,
        *,
        before: datetime | None = None,
        bucket: str | None = None,
        key: str | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally in one state or of one source object; page with
        `before=<last created_at>`. A client that uploaded an object finds its job by key."""
        limit = max(1, min(limit, 1000))

        def tx(cur: Cursor) -> builtins.list[Job]:
            cur.execute(
                """
                SELECT * FROM jobs
                WHERE (%(state)s::text IS NULL OR state = %(state)s)
                  AND (%(before)s::timestamptz IS NULL OR created_at < %(before)s)
                  AND (%(bucket)s::text IS NULL OR source_bucket = %(bucket)s)
                  AND (%(key)s::text IS NULL OR source_key = %(key)s)
                ORDER BY created_at DESC, id
                LIMIT %(limit)s
                """,
                {
                    "state": state.value if state else None,
                    "before": before,
                    "bucket": bucket,
                    "key": key,
                    "limit": limit,
                },
            )
            jobs = cur.fetchall()
            if not jobs:
                return []
            cur.execute(
                "SELECT * FROM renditions WHERE job_id = ANY(%s::uuid[]) ORDER BY job_id, ordinal",
                ([str(j["id"]) for j in jobs],),
            )
            by_job: dict[str, builtins.list[dict[str, Any]]] = {}
            for r in cur.fetchall():
                by_job.setdefault(str(r["job_id"]), []).append(r)
            cur.execute(
                "SELECT * FROM tasks WHERE job_id = ANY(%s::uuid[]) ORDER BY job_id, chunk",
                ([str(j["id"]) for j in jobs],),
            )
            tasks: dict[str, builtins.list[dict[str, Any]]] = {}
            for t in cur.fetchall():
                tasks.setdefault(str(t["job_id"]), []).append(t)
            return [
                row_to_job(j, by_job.get(str(j["id"]), []), tasks.get(str(j["id"]), []))
                for j in jobs
            ]

        return self._run(tx)

    def history(self, job_id: UUID | str) -> builtins.list[StateChange]:
        """The job's audit trail, oldest first."""
        jid = parse_id(job_id)

        def tx(cur: Cursor) -> builtins.list[StateChange]:
            cur.execute("SELECT * FROM state_changes WHERE job_id = %s ORDER BY id", (str(jid),))
            return [StateChange.model_validate(dict(r)) for r in cur.fetchall()]

        return self._run(tx)

    def resolve_id(self, text: str) -> UUID:
        """A job id from its full form or an unambiguous prefix (at least 4 hex digits), as
        the progress page and `vtp jobs` show it. NotFound for none, InvalidRequest for
        several."""
        candidate = text.strip().lower()
        try:
            return UUID(candidate)
        except ValueError:
            pass
        if not _ID_PREFIX.match(candidate):
            raise NotFound(f"no job {text!r}")

        def tx(cur: Cursor) -> builtins.list[UUID]:
            cur.execute(
                "SELECT id FROM jobs WHERE id::text LIKE %s ORDER BY created_at DESC LIMIT 3",
                (candidate + "%",),
            )
            return [UUID(str(r["id"])) for r in cur.fetchall()]

        found = self._run(tx)
        if not found:
            raise NotFound(f"no job {text!r}")
        if len(found) > 1:
            raise InvalidRequest(
                f"{text!r} is the start of several job ids ({', '.join(map(str, found))}...):"
                " give more of it"
            )
        return found[0]

    def known_versions(
        self, bucket: str, versions: builtins.list[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which of these (key, etag) object versions of `bucket` have a job, or had one
        that an operator deleted (its source kept: not a lost event)."""
        if not versions:
            return set()

        def tx(cur: Cursor) -> set[tuple[str, str]]:
            cur.execute(
                """
                SELECT j.source_key, j.source_etag FROM jobs j
                JOIN unnest(%(keys)s::text[], %(etags)s::text[]) AS v(key, etag)
                  ON j.source_key = v.key AND j.source_etag = v.etag
                WHERE j.source_bucket = %(bucket)s
                UNION
                SELECT d.source_key, d.source_etag FROM deleted_jobs d
                JOIN unnest(%(keys)s::text[], %(etags)s::text[]) AS v(key, etag)
                  ON d.source_key = v.key AND d.source_etag = v.etag
                WHERE d.source_bucket = %(bucket)s
                """,
                {
                    "keys": [k for k, _ in versions],
                    "etags": [e.strip('"') for _, e in versions],
                    "bucket": bucket,
                },
            )
            return {(str(r["source_key"]), str(r["source_etag"])) for r in cur.fetchall()}

        return self._run(tx)
