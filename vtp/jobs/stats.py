"""What the pipeline has done, counted in PostgreSQL for status's `/metrics`.

The functions are many short-lived processes (each transcode replica, split, the sweeper),
so counters kept in any one of them would see a fraction of the work and lose it on a
restart. The database has all of it: every figure here is an aggregate over the rows, in
one read-only transaction per scrape, with the histograms' buckets counted by the query.
Deleting jobs lowers the totals, which Prometheus takes as a counter reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vtp.jobs.queries import Queries
from vtp.jobs.scheduling import IN_FLIGHT_SQL, WAITING_SQL, priority_name
from vtp.jobs.transactions import Cursor

# Seconds: an encode of a 2 s chunk at 360p to a 2-hour film at 1080p; a queue wait of an
# idle pool to a long backlog.
ENCODE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class Histogram:
    """Cumulative counts per upper bound (the last is +Inf), their sum and count."""

    buckets: list[tuple[float, int]]
    total: float
    count: int


@dataclass
class Snapshot:
    jobs: dict[str, int] = field(default_factory=dict)  # by state
    renditions: dict[tuple[str, str], int] = field(default_factory=dict)  # (name, state)
    tasks: dict[str, int] = field(default_factory=dict)  # by state
    encode_seconds: dict[str, Histogram] = field(default_factory=dict)  # by rendition
    queue_wait_seconds: dict[str, Histogram] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)  # by rendition
    dead_letters: dict[str, int] = field(default_factory=dict)
    callbacks: dict[str, int] = field(default_factory=dict)  # jobs by callback status
    callback_failures: int = 0  # delivery attempts that failed
    bytes_written: dict[str, int] = field(default_factory=dict)  # by rendition
    # Fair share (vtp.jobs.scheduling), by job priority ("low", "normal", "high", "p90"):
    # tasks waiting for a slot, calls in flight, and each task's wait for its first start.
    waiting: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    wait_by_priority: dict[str, Histogram] = field(default_factory=dict)


class Stats(Queries):
    def snapshot(self) -> Snapshot:
        def tx(cur: Cursor) -> Snapshot:
            snap = Snapshot()
            cur.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state")
            snap.jobs = {str(r["state"]): int(r["n"]) for r in cur.fetchall()}
            cur.execute("SELECT name, state, count(*) AS n FROM renditions GROUP BY 1, 2")
            snap.renditions = {(str(r["name"]), str(r["state"])): int(r["n"])
                               for r in cur.fetchall()}  # fmt: skip
            cur.execute("SELECT state, count(*) AS n FROM tasks GROUP BY state")
            snap.tasks = {str(r["state"]): int(r["n"]) for r in cur.fetchall()}
            # The encode time each succeeded task recorded with its result.
            snap.encode_seconds = _histograms(
                cur,
                """
                SELECT rendition AS key, (result -> 'timings' ->> 'encode_s')::float8 AS v
                FROM tasks WHERE state = 'succeeded' AND result -> 'timings' ? 'encode_s'
                """,
                ENCODE_BUCKETS,
            )
            # From the call's dispatch to its attempt's start: the time in the queue.
            snap.queue_wait_seconds = _histograms(
                cur,
                """
                SELECT rendition AS key,
                       extract(epoch FROM attempt_started_at - dispatched_at)::float8 AS v
                FROM tasks
                WHERE attempt_started_at IS NOT NULL AND dispatched_at IS NOT NULL
                  AND attempt_started_at >= dispatched_at
                """,
                WAIT_BUCKETS,
            )
            # Task moves in the trail (a task's rows name their chunk).
            cur.execute(
                """
                SELECT rendition, to_state, count(*) AS n FROM state_changes
                WHERE chunk IS NOT NULL AND to_state IN ('retrying', 'dead')
                GROUP BY 1, 2
                """
            )
            for r in cur.fetchall():
                into = snap.retries if r["to_state"] == "retrying" else snap.dead_letters
                into[str(r["rendition"])] = int(r["n"])
            cur.execute(
                """
                SELECT callback_status, count(*) AS n,
                       sum(callback_attempts - CASE WHEN callback_status = 'delivered'
                                                    THEN 1 ELSE 0 END) AS failed
                FROM jobs WHERE callback_url IS NOT NULL GROUP BY 1
                """
            )
            for r in cur.fetchall():
                snap.callbacks[str(r["callback_status"])] = int(r["n"])
                snap.callback_failures += max(0, int(r["failed"] or 0))
            cur.execute(
                """
                SELECT name, sum(size_bytes) AS b FROM renditions
                WHERE state = 'succeeded' AND size_bytes IS NOT NULL GROUP BY name
                """
            )
            snap.bytes_written = {str(r["name"]): int(r["b"]) for r in cur.fetchall()}
            cur.execute(
                f"""
                SELECT j.priority, count(*) FILTER (WHERE {WAITING_SQL}) AS waiting,
                       count(*) FILTER (WHERE {IN_FLIGHT_SQL}) AS in_flight
                FROM tasks t JOIN jobs j ON j.id = t.job_id
                WHERE t.state IN ('queued', 'retrying', 'running') GROUP BY j.priority
                """  # noqa: S608 - literal clauses only
            )
            for r in cur.fetchall():
                name = priority_name(int(r["priority"]))
                snap.waiting[name] = int(r["waiting"])
                snap.in_flight[name] = int(r["in_flight"])
            by_priority = _histograms(
                cur,
                """
                SELECT j.priority::text AS key,
                       extract(epoch FROM t.started_at - t.created_at)::float8 AS v
                FROM tasks t JOIN jobs j ON j.id = t.job_id
                WHERE t.started_at IS NOT NULL AND t.started_at >= t.created_at
                """,
                WAIT_BUCKETS,
            )
            snap.wait_by_priority = {priority_name(int(k)): h for k, h in by_priority.items()}
            return snap

        return self._run(tx)


def _histograms(cur: Cursor, values_sql: str, bounds: Sequence[float]) -> dict[str, Histogram]:
    """Per key, the cumulative count of values at or under each bound, counted in SQL."""
    counts = ", ".join(f"count(*) FILTER (WHERE v <= {float(b)!r}) AS le{i}"
                       for i, b in enumerate(bounds))  # fmt: skip
    cur.execute(
        f"SELECT key, {counts}, count(*) AS n, coalesce(sum(v), 0) AS s "  # noqa: S608
        f"FROM ({values_sql}) AS values_ WHERE v IS NOT NULL GROUP BY key"
    )
    out = {}
    for r in cur.fetchall():
        buckets = [(b, int(r[f"le{i}"])) for i, b in enumerate(bounds)]
        buckets.append((float("inf"), int(r["n"])))
        out[str(r["key"])] = Histogram(buckets, float(r["s"]), int(r["n"]))
    return out
