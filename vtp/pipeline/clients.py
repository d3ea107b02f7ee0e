"""The clients every part of the pipeline uses (database, Redis, storage, gateway), built once
from settings or injected by a test, and the one way progress events leave the pipeline."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from functools import cached_property
from uuid import UUID

import redis

from vtp import db
from vtp.events import EventBus, ProgressEvent
from vtp.invoker import Invoker
from vtp.jobs import Job, JobStore, Task
from vtp.jobs.scheduling import FairShare
from vtp.lifecycle import RetryPolicy
from vtp.settings import Settings
from vtp.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clients:
    """What the parts of the pipeline share; each part gets it, and the other parts it calls,
    when it is built (`vtp.pipeline.Pipeline`), never from a global."""

    settings: Settings
    store: JobStore
    storage: Storage
    bus: EventBus
    invoker: Invoker

    @classmethod
    def from_settings(cls, settings: Settings) -> Clients:
        """Build every client from settings and bring the schema up to date (idempotent)."""
        dsn = settings.postgres_dsn.get_secret_value()
        conn = db.connect(dsn)
        try:
            db.migrate(conn)
        finally:
            conn.close()
        retry = RetryPolicy(
            max_attempts=settings.max_attempts,
            max_refusals=settings.max_refusals,
            base_s=settings.retry_base_seconds,
            max_s=settings.retry_max_seconds,
        )
        client = redis.Redis.from_url(settings.redis_url.get_secret_value())
        return cls(
            settings,
            JobStore(functools.partial(db.connect, dsn), retry=retry),
            Storage.from_settings(settings),
            EventBus(client, settings.redis_prefix),
            Invoker(settings.gateway_url),
        )

    @cached_property
    def queue(self) -> FairShare:
        """Who gets the next call (vtp.jobs.scheduling), on the store's database: one per
        process, shared by the dispatcher and the job views."""
        return FairShare(self.store.connection_factory, self.settings)

    # --- events --------------------------------------------------------------------------------
    def publish(self, event: ProgressEvent) -> None:
        """Progress is best effort: a Redis outage must not fail the work it reports on."""
        try:
            self.bus.publish(event)
        except redis.RedisError as exc:
            log.warning("progress event not published: %s", exc)

    def publish_job(self, job: Job) -> None:
        self.publish(ProgressEvent.of_job(job))

    def announce(self, job: Job) -> None:
        """The job and each of its renditions as they are: what a new job, or one that
        ended all at once (cancelled), tells the page and the CLI."""
        self.publish_job(job)
        for rend in job.renditions:
            self.publish(ProgressEvent.of_rendition(rend))

    # --- cancel flags ----------------------------------------------------------------------
    CANCEL_FLAG_TTL_S = 7 * 24 * 3600  # longer than any job runs

    def flag_cancelled(self, job_id: UUID) -> None:
        """Tell the job's running transcodes to stop now (they poll it, `cancelled`). Best
        effort: without Redis they stop at their next heartbeat, which the database
        refuses."""
        try:
            self.bus.redis.set(self.bus.keys.job_cancelled(job_id), b"1", ex=self.CANCEL_FLAG_TTL_S)
        except redis.RedisError as exc:
            log.warning("cancel flag of job %s not set: %s", job_id, exc)

    def forget_job(self, job_id: UUID) -> None:
        """A deleted job's Redis keys (its latest progress, its cancel flag). Best effort:
        the progress hash expires by itself."""
        keys = self.bus.keys
        try:
            self.bus.redis.delete(keys.job_progress(job_id), keys.job_cancelled(job_id))
        except redis.RedisError as exc:
            log.warning("Redis keys of deleted job %s not removed: %s", job_id, exc)

    def cancelled(self, job_id: UUID) -> bool:
        """Whether the job's cancel flag is set (False when Redis cannot say)."""
        try:
            return bool(self.bus.redis.exists(self.bus.keys.job_cancelled(job_id)))
        except redis.RedisError:
            return False

    def publish_task(self, task: Task) -> None:
        """After a transition of `task` (the row the store returned, with its rendition's
        state): events are derived from transitions, one way for every caller."""
        self.publish(ProgressEvent.of_task(task))
