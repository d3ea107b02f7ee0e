"""Fair share: which waiting task gets the next call, so that a short job is not stuck behind a
long one.

The gateway's queue is first in, first out, with no priorities (OpenFaaS CE). Handing it every
task of a job at once made a 30-second clip uploaded after a two-hour film wait for all of the
film. So tasks wait here, in PostgreSQL, and only a bounded number of calls is ever in the
platform's queue or running:

* at most `dispatch_slots` calls in all (about what the platform runs at once: its
  queue-workers): the platform's queue holds next to nothing, so what runs next is decided
  here, and a queue with a hard size limit is never overfilled;
* at most `job_window` calls of one job, so one job never takes every slot.

When a slot frees (a call ended: the queue-worker's report, the task's own result; or the
sweeper's round, for what nobody reported), `claim` picks the next task: first by submitter,
the credential with the fewest calls in flight (a credential's jobs share one account, so one
tenant cannot starve the others); then by priority (0-100; low 25, normal 50, high 75, as SVT
Encore has them), higher first, each job's rising one level (25 points) per
`priority_ageing_seconds` it has waited, so a low job is never starved by a stream of normal
ones; then the job using the least right now, the fewest calls in flight; then the one with
the least work left (short jobs pass long ones); then the oldest.

Priority is an order, not a weight: measured on the local stack (bench/fairness.py), a high
clip behind ten normal ones that only weighed twice as much got a slot after every normal
clip with nothing running had one, and took 4.4 times its time alone.

Inside a job, tasks go costliest first (vtp.media.chunks.longest_first), as when they were all
dispatched at once.

A task is *waiting* while it is queued without a call (`dispatch_call_id` NULL) or retrying
past its back-off; *in flight* while a call for it is in the platform's queue (queued with a
call id) or running, plus a straggler's backup call, and after its task ended until the
queue-worker has reported the call and had time to acknowledge its message (`unreported`:
a task records its own end before it answers the call, and the CE queue-worker posts the
report before it acknowledges; counted free at the task's end, a slot refilled meanwhile
made the job's W+1st message in NATS for that moment). Both are read from the rows under one
advisory lock, so concurrent claims (several split replicas, the sweeper) never exceed the
bounds, and a claim records its calls before they are handed to the gateway.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from vtp.jobs.dispatches import record_call
from vtp.jobs.models import Task
from vtp.jobs.transactions import ConnectionFactory, Cursor, Transactions
from vtp.media.chunks import estimated_cost, longest_first
from vtp.options import PRIORITY_NAMES
from vtp.settings import Settings

log = logging.getLogger(__name__)

# One lock for every claim: the counts it reads stay true until it commits.
_LOCK_KEY = 0x7674_7073  # "vtps"
_LEVEL = 25  # priority points per level: what waiting `priority_ageing_seconds` adds

# The two sets of tasks the bounds count, as conditions on `tasks t` (metrics read them too).
IN_FLIGHT_SQL = "(t.state = 'running' OR (t.state = 'queued' AND t.dispatch_call_id IS NOT NULL))"
# Whose a task's job is: the credential that submitted it ('' for a bucket's upload).
_TENANT_SQL = (
    "COALESCE((SELECT MIN(s.credential) FROM submissions s WHERE s.job_id = t.job_id), '')"
    " AS tenant"
)
WAITING_SQL = (
    "((t.state = 'queued' AND t.dispatch_call_id IS NULL)"
    " OR (t.state = 'retrying' AND t.next_retry_at <= now()))"
)


def unreported(settings: Settings) -> str:
    """The condition on `tasks t` of a task that ended while its latest call is still the
    platform's: not reported yet, or reported less than the hand-over ago; never longer than
    the grace after the task's end (a report lost must not hold a slot for good)."""
    handover = float(settings.slot_handover_seconds)
    grace = float(settings.call_report_grace_seconds)
    return (
        f"(t.finished_at > now() - make_interval(secs => {grace:.3f})"
        " AND t.dispatch_call_id IS NOT NULL"
        " AND (t.reported_call_id IS DISTINCT FROM t.dispatch_call_id"
        f" OR t.reported_at > now() - make_interval(secs => {handover:.3f})))"
    )


def job_window(settings: Settings) -> int:
    """Calls of one job at most: `job_window`, or by default two thirds of the slots (at
    least one), so a lone job keeps most of the platform busy and a newcomer finds a slot
    free at once rather than after one of the others' calls."""
    if settings.job_window:
        return min(settings.job_window, settings.dispatch_slots)
    return max(1, (2 * settings.dispatch_slots) // 3)


def priority_name(priority: int) -> str:
    """ "high" for 75, "p90" for 90: a label for metrics and views."""
    return PRIORITY_NAMES.get(priority, f"p{priority}")


@dataclass
class _Job:
    """One job with work waiting, as the choice sees it."""

    id: UUID
    priority: int
    tenant: str
    created_at: datetime
    in_flight: int
    waiting: list[dict[str, Any]] = field(default_factory=list)  # costliest first

    def level(self, now: datetime, ageing_s: float) -> float:
        """Its priority, raised one level per `ageing_s` its oldest work has waited."""
        waited = (now - self.created_at).total_seconds()
        return self.priority + _LEVEL * math.floor(max(0.0, waited) / ageing_s)

    def left(self) -> float:
        return sum(float(t["cost"]) for t in self.waiting)


@dataclass(frozen=True)
class Place:
    """Where a job with waiting work stands: `ahead` jobs are served before it (0: it is next,
    or has calls in flight already), how many of its tasks wait and run, and in about how
    many seconds its first call should start (None: it runs, or nothing to go by yet)."""

    ahead: int
    waiting: int
    in_flight: int
    start_s: float | None = None


class FairShare:
    """Claims the next calls for waiting tasks within the bounds (see the module doc)."""

    def __init__(self, connect: ConnectionFactory, settings: Settings) -> None:
        self.tx = Transactions(connect)
        self.settings = settings

    @property
    def slots(self) -> int:
        return self.settings.dispatch_slots

    @property
    def window(self) -> int:
        return job_window(self.settings)

    # --- claiming -------------------------------------------------------------------------------
    def claim(self) -> list[Task]:
        """Record a call (a fresh call id, `dispatched_at` now) for each task chosen for a free
        slot, and return them, to be handed to the gateway after this commits (a refused
        hand-over is a refusal, as before). [] when no slot is free or nothing waits."""
        claimed = self.tx._run(self._claim)
        if claimed:
            log.info("%d call(s) into free slots: %s", len(claimed),
                     ", ".join(f"{t.name} of job {t.job_id}" for t in claimed))  # fmt: skip
        return claimed

    def _claim(self, cur: Cursor) -> list[Task]:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        flight, tenants = self._in_flight(cur)
        free = self.slots - sum(flight.values())
        if free <= 0:
            return []
        jobs = self._waiting(cur, flight)
        if not jobs:
            return []
        now = datetime.now(UTC)
        chosen: list[dict[str, Any]] = []
        while free > 0:
            job = self._next(jobs, tenants, now)
            if job is None:
                break
            chosen.append(job.waiting.pop(0))
            job.in_flight += 1
            tenants[job.tenant] += 1
            free -= 1
        # A task that began or ended since it was read (a late call, a cancel) is skipped.
        recorded = [
            record_call(cur, UUID(str(r["job_id"])), r["rendition"], r["chunk"], str(uuid4()))
            for r in chosen
        ]
        return [t for t in recorded if t is not None]

    def _next(self, jobs: dict[UUID, _Job], tenants: dict[str, int], now: datetime) -> _Job | None:
        """The job whose waiting task gets the next slot (see the module doc), or None."""
        open_jobs = [j for j in jobs.values() if j.waiting and j.in_flight < self.window]
        if not open_jobs:
            return None
        return min(open_jobs, key=lambda j: self._key(j, tenants, now))

    def _key(self, job: _Job, tenants: dict[str, int], now: datetime) -> tuple[Any, ...]:
        """The smallest is served first: its submitter's calls in flight, then the higher
        (aged) priority, its own calls in flight, the least work left, the oldest."""
        return (
            tenants[job.tenant],
            -job.level(now, self.settings.priority_ageing_seconds),
            job.in_flight,
            job.left(),
            job.created_at,
        )

    def _in_flight(self, cur: Cursor) -> tuple[dict[UUID, int], dict[str, int]]:
        """Calls in flight by job (a running task's backup call counts too), and by tenant."""
        cur.execute(
            f"""
            SELECT t.job_id, count(*) + count(t.backup_call_id) AS calls, {_TENANT_SQL}
            FROM tasks t
            WHERE {IN_FLIGHT_SQL} OR {unreported(self.settings)}
            GROUP BY t.job_id
            """  # noqa: S608 - literal clauses and numbers only
        )
        flight: dict[UUID, int] = {}
        tenants: dict[str, int] = defaultdict(int)
        for row in cur.fetchall():
            flight[UUID(str(row["job_id"]))] = int(row["calls"])
            tenants[str(row["tenant"])] += int(row["calls"])
        return flight, tenants

    def _waiting(self, cur: Cursor, flight: dict[UUID, int]) -> dict[UUID, _Job]:
        """Jobs with waiting tasks, each with its tasks costliest first."""
        cur.execute(
            f"""
            SELECT t.job_id, t.rendition, t.chunk, t.start_s, t.end_s, t.state,
                   j.priority, j.created_at, j.source_info->>'duration' AS duration,
                   r.spec->>'width' AS width, r.spec->>'height' AS height,
                   COALESCE(r.spec->>'audio_only', 'false') AS audio_only, {_TENANT_SQL}
            FROM tasks t
            JOIN jobs j ON j.id = t.job_id
            JOIN renditions r ON r.job_id = t.job_id AND r.name = t.rendition
            WHERE {WAITING_SQL} AND j.state NOT IN ('succeeded', 'failed', 'cancelled')
            """  # noqa: S608 - literal clauses only
        )
        jobs: dict[UUID, _Job] = {}
        rows: dict[UUID, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        for row in cur.fetchall():
            jid = UUID(str(row["job_id"]))
            if jid not in jobs:
                jobs[jid] = _Job(
                    id=jid, priority=int(row["priority"]), tenant=str(row["tenant"]),
                    created_at=row["created_at"], in_flight=flight.get(jid, 0),
                )  # fmt: skip
            whole = float(row["duration"] or 0.0)
            span = (
                float(row["end_s"]) - float(row["start_s"])
                if row["start_s"] is not None and row["end_s"] is not None
                else whole
            )
            cost = estimated_cost(
                span, width=int(row["width"] or 0), height=int(row["height"] or 0),
                audio_only=row["audio_only"] == "true",
            )  # fmt: skip
            rows[jid].append((cost, dict(row) | {"cost": cost}))
        for jid, job in jobs.items():
            job.waiting = list(longest_first(rows[jid]))
        return jobs

    def spare(self) -> int:
        """Free slots nothing waits for (what a straggler's backup call may take), else 0."""

        def tx(cur: Cursor) -> int:
            flight, _ = self._in_flight(cur)
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM tasks t WHERE {WAITING_SQL}) AS any")  # noqa: S608
            row = cur.fetchone()
            return 0 if row and row["any"] else max(0, self.slots - sum(flight.values()))

        return self.tx._run(tx)

    # --- reading --------------------------------------------------------------------------------
    def place(self, job_id: UUID) -> Place | None:
        """Where `job_id` stands, or None when it has nothing waiting."""
        return self.places().get(job_id)

    def places(self) -> dict[UUID, Place]:
        """Every job with waiting work, and where it stands."""
        return self.tx._run(self._places)

    def _places(self, cur: Cursor) -> dict[UUID, Place]:
        """The waiting jobs in the order `claim` prefers them now: a job's `ahead` counts the
        waiting jobs before it that have nothing running yet; its start is estimated from
        how long calls took lately (the median of the last 50), `ahead + 1` of them shared
        by the slots."""
        flight, tenants = self._in_flight(cur)
        jobs = self._waiting(cur, flight)
        cur.execute(
            """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS typical FROM (
                SELECT EXTRACT(EPOCH FROM finished_at - attempt_started_at) AS seconds
                FROM tasks
                WHERE state = 'succeeded' AND attempt_started_at IS NOT NULL
                ORDER BY finished_at DESC LIMIT 50
            ) recent
            """
        )
        found = cur.fetchone()
        typical = found["typical"] if found else None
        now = datetime.now(UTC)
        ordered = sorted(jobs.values(), key=lambda j: self._key(j, tenants, now))
        result: dict[UUID, Place] = {}
        ahead = 0
        for job in ordered:
            start_s = None
            if not job.in_flight and typical is not None:
                start_s = (ahead + 1) * float(typical) / self.slots
            result[job.id] = Place(
                ahead=0 if job.in_flight else ahead, waiting=len(job.waiting),
                in_flight=job.in_flight, start_s=start_s,
            )  # fmt: skip
            if not job.in_flight:
                ahead += 1
        return result
