"""The pipeline's clients (database, Redis, storage, gateway), injected so tests and other
entry points can build one from their own; the URLs it hands out and the events it publishes."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import threading
from typing import Self
from urllib.parse import quote
from uuid import UUID

import redis

from vtp import db
from vtp.errors import Unauthorized
from vtp.events import EventBus, ProgressEvent
from vtp.invoker import Invoker
from vtp.jobs import Job, JobStore, Task
from vtp.lifecycle import RetryPolicy
from vtp.settings import Settings
from vtp.storage import Storage

log = logging.getLogger(__name__)


class PipelineBase:
    """The clients every part of the pipeline uses, and the URLs and events they share."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        bus: EventBus,
        invoker: Invoker,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.bus = bus
        self.invoker = invoker
        # Set when the process is asked to stop: encodes in flight end, recorded (SIGTERM).
        self.stopping = threading.Event()
        # Job callbacks are tried again with the same back-off rule as renditions.
        self.callback_retry = RetryPolicy(
            base_s=settings.callback_retry_base_seconds,
            max_s=settings.callback_retry_max_seconds,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
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
        store = JobStore(functools.partial(db.connect, dsn), retry=retry)
        client = redis.Redis.from_url(settings.redis_url.get_secret_value())
        return cls(
            settings,
            store,
            Storage.from_settings(settings),
            EventBus(client, settings.redis_prefix),
            Invoker(settings.gateway_url),
        )

    # --- URLs ----------------------------------------------------------------------------
    def output_url(self, job_id: UUID | str, path: str) -> str:
        """Public URL of an output: the outputs bucket is anonymously readable, because an HLS
        player fetches segments by relative URL, which a presigned master cannot cover."""
        base = self.settings.public_s3_endpoint.rstrip("/")
        return f"{base}/{self.settings.outputs_bucket}/{job_id}/{quote(path)}"

    def callback_url(self, job_id: UUID | str, rendition: str, call_id: str, chunk: int = 0) -> str:
        """split's route for the queue-worker's report on one transcode call. It is reachable
        by anyone who reaches the gateway, and the CE components log it (the queue-worker
        every message, of-watchdog every request line), so its signature covers the call it
        is about: a URL copied from a log can speak of that call only, never of another
        attempt, another chunk or another rendition (chunk 0, a rendition encoded whole, is
        left out of the URL and of what is signed, as before there were chunks)."""
        query = {"job": str(job_id), "rendition": rendition, "call": call_id}
        if chunk:
            query["chunk"] = str(chunk)
        sig = self._callback_signature(str(job_id), rendition, call_id, chunk)
        if sig:
            query["sig"] = sig
        return self.invoker.function_url("split", "/callback", query)

    def check_callback_signature(
        self, job_id: str, rendition: str, call_id: str | None, sig: str | None, chunk: int = 0
    ) -> None:
        expected = self._callback_signature(job_id, rendition, call_id, chunk)
        if expected and not hmac.compare_digest(expected, sig or ""):
            raise Unauthorized("rendition callback without a valid signature")

    def _callback_signature(
        self, job_id: str, rendition: str, call_id: str | None, chunk: int = 0
    ) -> str | None:
        secret = self.settings.callback_secret
        if secret is None or not secret.get_secret_value():
            return None
        # Without a call id: the URLs of calls queued before the call was signed too.
        tail = f":{call_id}" if call_id is not None else ""
        part = f"/{chunk}" if chunk else ""
        msg = f"rendition-callback:{job_id}:{rendition}{part}{tail}".encode()
        return hmac.new(secret.get_secret_value().encode(), msg, hashlib.sha256).hexdigest()

    # --- events --------------------------------------------------------------------------------
    def _publish(self, event: ProgressEvent) -> None:
        try:
            self.bus.publish(event)
        except redis.RedisError as exc:
            log.warning("progress event not published: %s", exc)

    def _publish_job(self, job: Job) -> None:
        self._publish(ProgressEvent.of_job(job))

    def _publish_task(self, task: Task) -> None:
        """After a transition of `task` (the row the store returned, with its rendition's
        state): events are derived from transitions, one way for every caller."""
        self._publish(ProgressEvent.of_task(task))
