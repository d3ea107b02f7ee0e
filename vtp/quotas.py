"""Limits per credential: what one `submit` credential may start, so that a leaked or buggy
client cannot run up the bill (every manual job is a full encode).

- jobs at work: at most `quota_active_jobs` of its manual jobs queued or running;
- reprocesses: at most `quota_reprocesses_per_hour` of one object version within an hour;
- requests: `quota_requests_per_second` on average, bursts of `quota_request_burst` (a token
  bucket), over split's submit routes (jobs, dry runs, links).

Beyond one, the caller gets 429 with `Retry-After` and the limit named (`TooManyRequests`),
and the refusal is counted for the metrics. Everything is counted in PostgreSQL, in the
tables of migration 0015, so every replica of split agrees; a limit of 0 is no limit.
Bucket notifications are not a credential's and are not limited here: what lands in the
bucket was already paid for by whoever could upload it (bounded uploads, vtp_relay.uploads).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from vtp.errors import TooManyRequests
from vtp.jobs.transactions import ConnectionFactory, Cursor, Transactions
from vtp.settings import Settings

log = logging.getLogger(__name__)

# The SQL of the quotas, in one place.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('vtp-quota:' || %(credential)s))"
_ACTIVE = """
    SELECT count(DISTINCT COALESCE(s.job_id::text, 'pending-' || s.id)) AS n
      FROM submissions s LEFT JOIN jobs j ON j.id = s.job_id
     WHERE s.credential = %(credential)s
       AND ((s.job_id IS NULL AND s.at > now() - interval '10 minutes')
            OR j.state IN ('queued', 'running'))
"""
_REPROCESSES = """
    SELECT count(*) AS n, EXTRACT(EPOCH FROM min(at) + interval '1 hour' - now()) AS wait
      FROM submissions
     WHERE reprocess AND credential = %(credential)s AND source_bucket = %(bucket)s
       AND source_key = %(key)s AND source_etag = %(etag)s AND at > now() - interval '1 hour'
"""
_RESERVE = """
    INSERT INTO submissions (credential, source_bucket, source_key, source_etag, reprocess)
    VALUES (%(credential)s, %(bucket)s, %(key)s, %(etag)s, %(reprocess)s) RETURNING id
"""
_SETTLE = "UPDATE submissions SET job_id = %(job_id)s WHERE id = %(id)s"
_RELEASE = "DELETE FROM submissions WHERE id = %(id)s"
_BUCKET_ROW = """
    INSERT INTO rate_buckets (credential, tokens, updated_at)
    VALUES (%(credential)s, %(burst)s, clock_timestamp()) ON CONFLICT (credential) DO NOTHING
"""
_BUCKET = """
    SELECT tokens, EXTRACT(EPOCH FROM clock_timestamp() - updated_at) AS idle
      FROM rate_buckets WHERE credential = %(credential)s FOR UPDATE
"""
_TAKE = """
    UPDATE rate_buckets SET tokens = %(tokens)s, updated_at = clock_timestamp()
     WHERE credential = %(credential)s
"""
_REFUSED = """
    INSERT INTO quota_refusals (credential, limit_name, total) VALUES (%(credential)s, %(limit)s, 1)
    ON CONFLICT (credential, limit_name) DO UPDATE SET total = quota_refusals.total + 1
"""
_REFUSALS = "SELECT credential, limit_name, total FROM quota_refusals"
_AT_WORK = """
    SELECT s.credential, count(DISTINCT s.job_id) AS n FROM submissions s
      JOIN jobs j ON j.id = s.job_id WHERE j.state IN ('queued', 'running')
     GROUP BY s.credential
"""


class Quotas:
    def __init__(self, connect: ConnectionFactory, settings: Settings) -> None:
        self.tx = Transactions(connect)
        self.settings = settings

    # --- requests per second ----------------------------------------------------------------

    def take_request(self, credential: str) -> None:
        """One request of `credential`'s bucket, or TooManyRequests when it is empty."""
        rate = self.settings.quota_requests_per_second
        if rate <= 0:
            return
        burst = float(max(1, self.settings.quota_request_burst))
        args: dict[str, Any] = {"credential": credential, "burst": burst}

        def take(cur: Cursor) -> float | None:
            cur.execute(_BUCKET_ROW, args)
            cur.execute(_BUCKET, args)
            row = _one(cur)
            tokens = min(burst, float(row["tokens"]) + float(row["idle"]) * rate)
            if tokens < 1:
                cur.execute(_TAKE, args | {"tokens": tokens})
                cur.execute(_REFUSED, args | {"limit": "requests_per_second"})
                return (1 - tokens) / rate
            cur.execute(_TAKE, args | {"tokens": tokens - 1})
            return None

        wait = self.tx._run(take)
        if wait is not None:
            raise TooManyRequests(
                f"{credential!r} is over its rate of {rate:g} requests per second "
                f"(bursts of {burst:g}): VTP_QUOTA_REQUESTS_PER_SECOND",
                retry_after=math.ceil(wait),
                limit="requests_per_second",
            )

    # --- jobs -----------------------------------------------------------------------------

    @contextmanager
    def admitting(
        self, credential: str, bucket: str, key: str, etag: str, *, reprocess: bool
    ) -> Iterator[Admission]:
        """A place for one more job of `credential`, held while it is submitted: the counts
        and the reservation are one transaction under a lock of this credential's, so two
        replicas admitting at once cannot both take the last place. Settle the admission
        with the job made (or the existing one a duplicate returns); without it, the place
        is given back."""
        args = {
            "credential": credential, "bucket": bucket, "key": key, "etag": etag,
            "reprocess": reprocess,
        }  # fmt: skip
        refusal: TooManyRequests | None = None

        def reserve(cur: Cursor) -> int | None:
            nonlocal refusal
            cur.execute(_LOCK, args)
            refusal = self._over(cur, args, reprocess=reprocess)
            if refusal is not None:
                cur.execute(_REFUSED, args | {"limit": refusal.limit})
                return None
            cur.execute(_RESERVE, args)
            return int(_one(cur)["id"])

        reserved = self.tx._run(reserve)
        if reserved is None:
            assert refusal is not None
            log.info("refused a job for %s: %s", credential, refusal.limit)
            raise refusal
        admission = Admission()
        try:
            yield admission
        finally:
            if admission.job_id is not None:
                ids = {"id": reserved, "job_id": str(admission.job_id)}
                self.tx._run(lambda cur: cur.execute(_SETTLE, ids))
            else:
                self.tx._run(lambda cur: cur.execute(_RELEASE, {"id": reserved}))

    def _over(
        self, cur: Cursor, args: dict[str, Any], *, reprocess: bool
    ) -> TooManyRequests | None:
        active = self.settings.quota_active_jobs
        if active > 0:
            cur.execute(_ACTIVE, args)
            if int(_one(cur)["n"]) >= active:
                return TooManyRequests(
                    f"{args['credential']!r} has {active} jobs queued or running, its limit "
                    "(VTP_QUOTA_ACTIVE_JOBS): submit again when one has ended",
                    retry_after=max(5, int(self.settings.segment_seconds)),
                    limit="active_jobs",
                )
        per_hour = self.settings.quota_reprocesses_per_hour
        if reprocess and per_hour > 0:
            cur.execute(_REPROCESSES, args)
            row = _one(cur)
            if int(row["n"]) >= per_hour:
                wait = float(row["wait"])  # until the oldest of them is an hour old
                return TooManyRequests(
                    f"{args['credential']!r} reprocessed this version of "
                    f"s3://{args['bucket']}/{args['key']} {per_hour} times in the last hour, "
                    "its limit (VTP_QUOTA_REPROCESSES_PER_HOUR)",
                    retry_after=math.ceil(wait),
                    limit="reprocesses_per_hour",
                )
        return None

    # --- figures --------------------------------------------------------------------------

    def figures(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """Refusals by (credential, limit), and jobs at work by credential."""

        def read(cur: Cursor) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
            cur.execute(_REFUSALS)
            refused = {(r["credential"], r["limit_name"]): int(r["total"]) for r in cur}
            cur.execute(_AT_WORK)
            return refused, {r["credential"]: int(r["n"]) for r in cur}

        return self.tx._run(read)


def _one(cur: Cursor) -> Any:
    row = cur.fetchone()
    assert row is not None, "these queries always answer one row"
    return row


class Admission:
    """The job an admitted submission made (or found): set it, or the place is given back."""

    job_id: UUID | None = None
