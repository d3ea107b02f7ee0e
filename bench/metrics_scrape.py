"""How long status's /metrics takes as the job table grows: every figure is counted from
PostgreSQL at each scrape (vtp.jobs.stats), so its cost grows with the rows.

Starts the local runtime's PostgreSQL alone, fills it with synthetic history (jobs of three
renditions, each a task with an encode time, its dispatch and start; one in twenty retried,
one in a hundred dead, callbacks), and times `metrics.exposition` (the database's snapshot
plus the text format) at each size, median of 5. Prints the figures, and the size of the
answer. Knobs: VTP_BENCH_METRICS_SIZES (comma-separated job counts, default 1000,10000,50000).
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402

from localfaas import services  # noqa: E402
from localfaas.config import LocalConfig  # noqa: E402
from tests.ports import free_port, free_port_base  # noqa: E402
from vtp import db, metrics  # noqa: E402
from vtp.jobs import JobStore  # noqa: E402

SIZES = [int(x) for x in os.environ.get("VTP_BENCH_METRICS_SIZES", "1000,10000,50000").split(",")]

FILL = """
WITH j AS (
    INSERT INTO jobs (source_bucket, source_key, source_etag, options_key, state, finished_at,
                      started_at, callback_url, callback_status, callback_attempts)
    SELECT 'uploads', 'bench/' || g || '.mp4', md5(g::text), 'renditions=*;formats=hls',
           'succeeded', now() - (g || ' seconds')::interval, now() - interval '1 day',
           CASE WHEN g %% 4 = 0 THEN 'https://example.com/hook' END,
           CASE WHEN g %% 4 = 0 THEN (CASE WHEN g %% 40 = 0 THEN 'failed' ELSE 'delivered' END)
                ELSE 'none' END,
           CASE WHEN g %% 4 = 0 THEN 1 + (g %% 3) ELSE 0 END
    FROM generate_series(%(start)s, %(stop)s - 1) AS g
    RETURNING id
), r AS (
    INSERT INTO renditions (job_id, name, ordinal, function, spec, state, finished_at,
                            size_bytes)
    SELECT j.id, n.name, n.ord, 'transcode-' || n.name, '{}'::jsonb, 'succeeded', now(),
           1000000 * (n.ord + 1)
    FROM j CROSS JOIN (VALUES ('360p', 0), ('720p', 1), ('1080p', 2)) AS n(name, ord)
    RETURNING job_id, name, ordinal
)
INSERT INTO tasks (job_id, rendition, chunk, function, state, attempts, finished_at,
                   dispatched_at, attempt_started_at, started_at, result)
SELECT r.job_id, r.name, 0, 'transcode-' || r.name, 'succeeded', 1, now(),
       now() - interval '10 minutes',
       now() - interval '10 minutes' + make_interval(secs => random() * 30),
       now() - interval '10 minutes',
       jsonb_build_object('timings',
                          jsonb_build_object('encode_s', 5 + random() * 300 * (r.ordinal + 1)))
FROM r
"""

TRAIL = """
INSERT INTO state_changes (job_id, rendition, chunk, from_state, to_state, attempt)
SELECT job_id, rendition, 0, 'running', CASE WHEN n % 100 = 0 THEN 'dead' ELSE 'retrying' END, 1
FROM (SELECT job_id, rendition, row_number() OVER () AS n FROM tasks) AS t
WHERE n % 20 = 0
"""


def main() -> None:
    run_dir = REPO / ".run" / "bench-metrics"
    cfg = LocalConfig(run_dir=run_dir, port_base=free_port_base(), gateway_port=free_port())
    services.stop_services(cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        services.start_services(cfg, only=["postgres"])
        conn = db.connect(cfg.postgres_dsn)
        db.migrate(conn)
        conn.close()
        store = JobStore(functools.partial(db.connect, cfg.postgres_dsn))
        print(f"{'jobs':>8} {'tasks':>8} {'scrape ms (median of 5)':>24} {'answer bytes':>13}")
        filled = 0
        for size in sorted(SIZES):
            with psycopg2.connect(cfg.postgres_dsn) as raw, raw.cursor() as cur:
                cur.execute(FILL, {"start": filled, "stop": size})
                cur.execute("DELETE FROM state_changes")
                cur.execute(TRAIL)
                cur.execute("ANALYZE")
            raw.close()
            filled = size
            times, body = [], b""
            for _ in range(5):
                t = time.perf_counter()
                body = metrics.exposition(store)
                times.append((time.perf_counter() - t) * 1000)
            print(f"{size:>8} {size * 3:>8} {statistics.median(times):>24.1f} {len(body):>13}")
        store.close()
    finally:
        services.stop_services(cfg)


if __name__ == "__main__":
    main()
