"""The job store: jobs and renditions in PostgreSQL, and every state transition between them.

One class for callers, assembled from one part per responsibility, each in its own module:
reading (`queries`), recording new jobs (`submission`), attempts and their reports
(`attempts`), backup calls for stragglers (`backups`), stopping a job that cannot succeed
(`cancellation`), dispatched calls and refusals (`dispatches`), fan-in (`fanin`), and
queueing a failed job's dead letters again (`redrive`), and deleting jobs and expiring
their outputs (`deletion`), and the counts behind `/metrics` (`stats`). Every part
runs its statements through `transactions.Transactions`: one connection per thread, one
transaction per operation, guarded UPDATEs so racing callers get Conflict instead of
overwriting each other.
"""

from __future__ import annotations

from vtp.jobs.deletion import Deletion
from vtp.jobs.dispatches import Dispatches
from vtp.jobs.fanin import FanIn
from vtp.jobs.redrive import Redrive
from vtp.jobs.stats import Stats
from vtp.jobs.submission import Submission


class JobStore(Submission, Dispatches, FanIn, Redrive, Deletion, Stats):
    """Jobs and renditions in PostgreSQL. Safe to share between threads.

    `JobStore(connect, retry=RetryPolicy(...))`: `connect` returns a new connection (e.g.
    `functools.partial(vtp.db.connect, dsn)`); the policy sets attempts, refusals and
    back-off (the cron sweeper picks due retries up, so its schedule adds up to one period).
    """
