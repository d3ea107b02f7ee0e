"""The pipeline's core: submit a source, run one rendition, fan in, sweep.

Handlers stay thin: `split` calls `submit` and `on_rendition_callback`, `transcode-*` calls
`run_rendition`, `sweeper` calls `sweep`, `status` reads through `describe_job`. Every client
(database, Redis, storage, gateway) is injected, so tests and other entry points can build a
`Pipeline` from their own.

Who retries what: the OpenFaaS queue-worker calls each transcode once and then POSTs the
outcome to split's `/callback` route. A transcode that fails cleanly records a retryable or
permanent failure itself; one that dies (killed, OOM, exec_timeout) cannot, so the callback
records it. Retries are dispatched once their back-off has passed, by the callback or by the
cron sweeper, which also writes off renditions whose worker went silent. When the last
rendition ends, exactly one caller wins `claim_finalization` and finishes the job.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import psycopg2
import redis
import requests
from pydantic import BaseModel

from vtp import callbacks, db
from vtp.encode import RenditionResult, encode_rendition
from vtp.errors import Conflict, FfmpegTimeout, InvalidSource, NotFound, Unauthorized, VtpError
from vtp.events import EventBus, ProgressEvent, ProgressReporter
from vtp.ffmpeg import Progress
from vtp.invoker import Invoker
from vtp.jobs import CallbackStatus, Job, JobStore, Rendition, SourceRef, summarize_outcome
from vtp.ladder import plan_ladder
from vtp.lifecycle import RetryPolicy
from vtp.models import JobState, RenditionState, TranscodeTask
from vtp.playlist import MasterEntry, make_poster, master_playlist
from vtp.probe import probe_source
from vtp.settings import Settings
from vtp.storage import Storage
from vtp.webhook import SourceObject

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 10.0
# A retry due within this long is dispatched from a timer in split; later ones by the sweeper.
INLINE_RETRY_WAIT_S = 15.0


class SubmitResult(BaseModel):
    job: Job
    created: bool


class JobCallback(BaseModel):
    """The body POSTed to a job's callback URL when the job ends."""

    event: str = "job.finished"
    job_id: UUID
    state: JobState
    error: str | None
    source: SourceRef
    master_url: str | None
    poster_url: str | None
    renditions: list[dict[str, Any]]
    finished_at: datetime | None


class Pipeline:
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

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
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

    def callback_url(self, job_id: UUID | str, rendition: str) -> str:
        """split's route for the queue-worker's report on one transcode call. It is reachable
        by anyone who reaches the gateway, so it carries a signature of what it is about."""
        query = {"job": str(job_id), "rendition": rendition}
        sig = self._callback_signature(str(job_id), rendition)
        if sig:
            query["sig"] = sig
        return self.invoker.function_url("split", "/callback", query)

    def check_callback_signature(self, job_id: str, rendition: str, sig: str | None) -> None:
        expected = self._callback_signature(job_id, rendition)
        if expected and not hmac.compare_digest(expected, sig or ""):
            raise Unauthorized("rendition callback without a valid signature")

    def _callback_signature(self, job_id: str, rendition: str) -> str | None:
        secret = self.settings.callback_secret
        if secret is None or not secret.get_secret_value():
            return None
        msg = f"rendition-callback:{job_id}:{rendition}".encode()
        return hmac.new(secret.get_secret_value().encode(), msg, hashlib.sha256).hexdigest()

    # --- split ---------------------------------------------------------------------------
    def submit(
        self,
        src: SourceObject,
        *,
        renditions: list[str] | None = None,
        formats: list[str] | None = None,
        callback_url: str | None = None,
    ) -> SubmitResult:
        """Probe, plan and record a job for one object, then dispatch its renditions.

        The same object version (bucket, key, ETag) always maps to one job: a duplicate
        event returns the existing job and dispatches nothing.
        """
        if callback_url:
            callbacks.check_destination(
                callback_url, allow_private=self.settings.callback_allow_private_networks
            )
        obj = self.storage.stat(src.bucket, src.key)
        ref = SourceRef(bucket=src.bucket, key=src.key, etag=obj.etag or "none", size=obj.size)
        existing = self.store.find(ref)
        if existing is not None:
            # MinIO redelivers events (at least once): answer without probing again.
            return SubmitResult(job=existing, created=False)
        url = self.storage.presigned_get(src.bucket, src.key, expires=600)
        try:
            info = probe_source(url, self.settings, size_bytes=obj.size)
        except InvalidSource as exc:
            job, created = self.store.record_rejected(ref, exc.reason, callback_url=callback_url)
            if created:
                log.warning("rejected s3://%s/%s: %s", src.bucket, src.key, exc.reason)
                self._publish_job(job)
                self._fire_callback(job)
            return SubmitResult(job=self.store.get(job.id), created=created)
        plan = plan_ladder(info, self.settings, renditions)
        job, created = self.store.create_job(
            ref, info, plan, formats=formats or ["hls"], callback_url=callback_url
        )
        if created:
            log.info(
                "job %s for s3://%s/%s: %s",
                job.id,
                src.bucket,
                src.key,
                ", ".join(f"{r.name} {r.spec.width}x{r.spec.height}" for r in job.renditions),
            )
            self._publish_job(job)
            for rend in job.renditions:
                self._publish(
                    ProgressEvent(job_id=str(job.id), rendition=rend.name, state="queued")
                )
                self.dispatch(job.id, rend)
        return SubmitResult(job=self.store.get(job.id), created=created)

    def dispatch(self, job_id: UUID, rend: Rendition) -> None:
        """Queue one transcode call; a refused dispatch becomes a retry, never a lost task.

        The call id is chosen here and recorded before the call is handed to the gateway
        (which keeps an X-Call-Id it is given), so the queue-worker's report on it, however
        fast, is always matched to this dispatch.
        """
        call_id = str(uuid4())
        if self.store.record_dispatch(job_id, rend.name, call_id) is None:
            return  # running or finished meanwhile: nothing to dispatch
        try:
            self.invoker.invoke_async(
                rend.function,
                TranscodeTask(job_id=job_id, rendition=rend.name),
                callback_url=self.callback_url(job_id, rend.name),
                call_id=call_id,
            )
        except VtpError as exc:
            log.error("could not dispatch %s of job %s: %s", rend.name, job_id, exc.reason)
            self._refused(job_id, rend.name, call_id, f"dispatch failed: {exc.reason}")

    def dispatch_due_retries(self) -> int:
        due = self.store.due_retries()
        for rend in due:
            log.info(
                "retrying %s of job %s (attempt %d)", rend.name, rend.job_id, rend.attempts + 1
            )
            self.dispatch(rend.job_id, rend)
        return len(due)

    def on_rendition_callback(
        self,
        job_id: str,
        rendition: str,
        *,
        function_status: int,
        call_id: str | None,
        body: bytes = b"",
    ) -> dict[str, Any]:
        """The queue-worker reports how a transcode call ended.

        It reports every call, whatever happened, and only once. What the report means
        depends on which call it is about and where the rendition is now:

        * the attempt running under this call is still running and the call failed: the
          worker ended without recording an outcome (killed, out of memory, cut off): a
          failed attempt. A 2xx for a running attempt is a redelivery of its message (NATS
          Streaming delivers a restarted queue-worker's unacknowledged message again at
          once) that the handler refused as a duplicate: the attempt goes on;
        * the rendition still waits for this very call and the status is not 2xx: the call
          never reached the handler (429 from a busy watchdog, 500 "Can't reach service"
          from the provider, 502/503 while the function restarts): a refusal;
        * anything else (the attempt recorded its own outcome, or the call was superseded):
          nothing to do. A late report never changes a newer attempt.
        """
        job = self.store.get(job_id)
        rend = job.rendition(rendition)
        what = _status_text(function_status, body)
        failed = not 200 <= function_status < 300
        if (
            rend.state is RenditionState.RUNNING
            and call_id
            and rend.last_call_id == call_id
            and failed
        ):
            self._fail_retryable(
                rend,
                f"{rend.function} ended without a result ({what}; "
                "killed, out of memory or past its exec_timeout)",
                call_id=call_id,
            )
        elif (
            rend.state is RenditionState.QUEUED
            and failed
            and (call_id is None or rend.dispatch_call_id == call_id)
        ):
            self._refused(
                rend.job_id, rend.name, call_id, f"{rend.function} did not take the call ({what})"
            )
        rend = self.store.get(job_id).rendition(rendition)
        if rend.state is RenditionState.RETRYING:
            self._schedule_retry(rend)
        finished = self.maybe_finalize(job_id, claimer=f"callback:{call_id}")
        return {
            "job_id": job_id,
            "rendition": rendition,
            "state": rend.state,
            "finalized": finished,
        }

    def _schedule_retry(self, rend: Rendition) -> None:
        """Dispatch a retry due soon from a timer thread, so the answer to the queue-worker
        (which runs one call at a time) is not held up; later ones go to the sweeper, which
        also covers a timer lost with its process."""
        if rend.next_retry_at is None:
            return
        wait = (rend.next_retry_at - datetime.now(UTC)).total_seconds()
        if wait > INLINE_RETRY_WAIT_S:
            return
        timer = threading.Timer(max(wait, 0) + 0.05, self._dispatch_due_quietly)
        timer.daemon = True
        timer.start()

    def _dispatch_due_quietly(self) -> None:
        try:
            self.dispatch_due_retries()
        except Exception:
            log.exception("dispatching due retries failed; the sweeper will pick them up")

    def _refused(self, job_id: UUID, rendition: str, call_id: str | None, reason: str) -> None:
        """Record that a call never reached the handler (a refusal: no attempt spent) and
        tell progress followers; a stale report (Conflict) changes nothing."""
        try:
            rend = self.store.record_refusal(job_id, rendition, call_id, reason)
        except Conflict as exc:
            log.info("refusal report ignored: %s", exc.reason)
            return
        self._publish(
            ProgressEvent(
                job_id=str(job_id),
                rendition=rendition,
                state=rend.state.value,
                attempt=rend.attempts or None,
                error=rend.error,
            )
        )
        if rend.state is RenditionState.DEAD:
            self.maybe_finalize(job_id, claimer=f"refusal:{call_id}")

    def _fail_retryable(self, rend: Rendition, reason: str, *, call_id: str) -> None:
        """Record a retryable failure of the attempt running under `call_id` and tell
        progress followers; an attempt that ended in the meantime (Conflict) is left as is."""
        try:
            state = self.store.fail_rendition(
                rend.job_id, rend.name, reason, retryable=True, call_id=call_id
            )
        except Conflict:
            return
        self._publish(
            ProgressEvent(
                job_id=str(rend.job_id),
                rendition=rend.name,
                state=state.value,
                attempt=rend.attempts or None,
                error=reason,
            )
        )

    # --- transcode -------------------------------------------------------------------------
    def run_rendition(
        self, task: TranscodeTask, call_id: str, *, started: float | None = None
    ) -> dict[str, Any]:
        """Encode one rendition and record the outcome; never raises for a failed encode.

        `started` (time.monotonic() when the call reached the handler) anchors the call's
        deadline: the work ends, recorded, before the function's exec_timeout, since
        of-watchdog would answer 504 then and let it run on unrecorded.
        """
        started = time.monotonic() if started is None else started
        deadline = started + self.settings.work_deadline_seconds()
        job = self.store.get(task.job_id)
        spec_rend = job.rendition(task.rendition)
        expected = f"transcode-{self.settings.rendition}" if self.settings.rendition else None
        if expected and spec_rend.function != expected:
            log.warning("%s runs %s's task for %s", expected, spec_rend.function, task.rendition)
        try:
            rend = self.store.begin_attempt(task.job_id, task.rendition, call_id)
        except Conflict as exc:
            log.info("skipping duplicate delivery %s: %s", call_id, exc.reason)
            return {"skipped": exc.reason, "job_id": str(task.job_id), "rendition": task.rendition}
        assert job.source_info is not None
        info = job.source_info
        reporter = ProgressReporter(self.bus, job.id, rend.name, rend.attempts, info.duration)
        reporter.state(RenditionState.RUNNING)
        heartbeat = _Heartbeat(self.store, job.id, rend.name, call_id)

        def on_progress(p: Progress) -> None:
            reporter.sample(p.out_time, p.fps, p.speed)
            heartbeat.beat()  # raises Conflict once this attempt was written off

        prefix = f"{job.id}/{rend.name}"
        outcome: dict[str, Any]
        try:
            self._check_source_unchanged(job)
            budget = deadline - time.monotonic()
            url = self.storage.presigned_get(
                job.source.bucket, job.source.key, expires=int(budget) + 600
            )
            with tempfile.TemporaryDirectory(prefix=f"vtp-{rend.name}-") as tmp:
                out = Path(tmp)
                result = encode_rendition(
                    url,
                    info,
                    rend.spec,
                    out,
                    formats=job.formats,
                    settings=self.settings,
                    on_progress=on_progress,
                    timeout=budget,
                    cancel=self.stopping,
                )
                self.storage.upload_dir(out, self.settings.outputs_bucket, prefix)
            record = result.model_dump(mode="json") | {"output_prefix": prefix}
            self.store.succeed_rendition(job.id, rend.name, record, call_id=call_id)
            reporter.state(RenditionState.SUCCEEDED)
            outcome = {"state": "succeeded", "result": record}
        except Conflict as exc:
            # Written off while it ran (the sweeper, or the callback of an earlier 504): a
            # newer attempt owns the rendition now. Stop, and record nothing.
            log.warning("attempt %s of %s/%s superseded: %s", call_id, job.id, rend.name, exc)
            return {"job_id": str(job.id), "rendition": rend.name, "superseded": exc.reason}
        except Exception as exc:
            reason, retryable = _failure(exc, self.settings)
            if self.stopping.is_set():
                reason = f"interrupted: the function was stopped ({reason})"
                retryable = True
            state = self._record_failure(job.id, rend.name, reason, retryable, call_id)
            if state is None:
                return {"job_id": str(job.id), "rendition": rend.name, "superseded": reason}
            reporter.state(state, error=reason)
            outcome = {"state": state.value, "error": reason}
        finally:
            reporter.close()
        self.maybe_finalize(job.id, claimer=call_id)
        return {"job_id": str(job.id), "rendition": rend.name, "attempt": rend.attempts} | outcome

    def _check_source_unchanged(self, job: Job) -> None:
        """The job's object version must still be there: a source deleted or replaced since
        the job was made fails it for good, saying which (a retry would read the same)."""
        src = job.source
        where = f"s3://{src.bucket}/{src.key}"
        try:
            now = self.storage.stat(src.bucket, src.key)
        except NotFound:
            raise InvalidSource(f"the source {where} is gone (deleted since the job began)") from (
                None
            )
        if now.etag and now.etag != src.normalized_etag:
            raise InvalidSource(
                f"the source {where} was replaced (ETag {now.etag}, the job's is "
                f"{src.normalized_etag}): its new version is a job of its own"
            )

    def _record_failure(
        self, job_id: UUID, rendition: str, reason: str, retryable: bool, call_id: str
    ) -> RenditionState | None:
        """The attempt's own report of its failure; None if it was superseded meanwhile."""
        try:
            return self.store.fail_rendition(
                job_id, rendition, reason, retryable=retryable, call_id=call_id
            )
        except Conflict as exc:
            log.warning("failure of superseded attempt %s not recorded: %s", call_id, exc)
            return None

    # --- fan-in ------------------------------------------------------------------------------
    def maybe_finalize(self, job_id: UUID | str, *, claimer: str) -> bool:
        """Finish the job if every rendition has ended and no one else is doing it."""
        job = self.store.claim_finalization(job_id, claimer)
        if job is None:
            return False
        state, reason = summarize_outcome(job.renditions)
        master = None
        done = [r for r in job.renditions if r.state is RenditionState.SUCCEEDED and r.result]
        if done:
            entries = [
                MasterEntry.from_result(RenditionResult.model_validate(r.result)) for r in done
            ]
            master = master_playlist(entries)
            try:
                self.storage.put_bytes(
                    self.settings.outputs_bucket, f"{job.id}/master.m3u8", master.encode()
                )
                self._write_poster(job)
            except VtpError as exc:
                state, reason = (
                    JobState.FAILED,
                    f"could not write the master playlist: {exc.reason}",
                )
        job = self.store.complete_job(
            job.id, state, reason, claimer=claimer, master_playlist=master
        )
        log.info("job %s %s%s", job.id, job.state, f": {reason}" if reason else "")
        self._publish_job(job)
        self._fire_callback(job)
        return True

    def _write_poster(self, job: Job) -> None:
        assert job.source_info is not None
        url = self.storage.presigned_get(job.source.bucket, job.source.key, expires=600)
        try:
            with tempfile.TemporaryDirectory(prefix="vtp-poster-") as tmp:
                path = make_poster(url, job.source_info, Path(tmp) / "poster.jpg", self.settings)
                self.storage.put_bytes(
                    self.settings.outputs_bucket, f"{job.id}/poster.jpg", path.read_bytes()
                )
        except VtpError as exc:
            # A missing poster is cosmetic; the renditions are what the job is for.
            log.warning("job %s: no poster: %s", job.id, exc.reason)

    def _fire_callback(self, job: Job) -> None:
        if not job.callback_url or job.callback_status is CallbackStatus.DELIVERED:
            return
        secret = self.settings.callback_secret
        try:
            callbacks.check_destination(
                job.callback_url, allow_private=self.settings.callback_allow_private_networks
            )
        except VtpError as exc:
            self.store.record_callback(job.id, CallbackStatus.FAILED, exc.reason)
            return
        delivery = callbacks.deliver(
            job.callback_url,
            self.callback_body(job),
            delivery_id=str(job.id),
            event="job.finished",
            secret=secret.get_secret_value() if secret else None,
        )
        self.store.record_callback(
            job.id,
            CallbackStatus.DELIVERED if delivery.ok else CallbackStatus.FAILED,
            delivery.error,
        )

    def callback_body(self, job: Job) -> JobCallback:
        view = self.describe_job(job, live=False)
        return JobCallback(
            job_id=job.id,
            state=job.state,
            error=job.error,
            source=job.source,
            master_url=view["urls"].get("master"),
            poster_url=view["urls"].get("poster"),
            renditions=view["renditions"],
            finished_at=job.finished_at,
        )

    # --- sweeper -------------------------------------------------------------------------------
    def sweep(self) -> dict[str, int]:
        """Write off silent workers, dispatch due retries and lost dispatches, finish stuck
        finalizations."""
        reaped = self.store.reap_stale(self.settings.stale_after_seconds)
        for r in reaped:
            self._publish(
                ProgressEvent(
                    job_id=str(r.job_id), rendition=r.name, state=r.state.value, error=r.error
                )
            )
        retried = self.dispatch_due_retries()
        lost = self.store.lost_dispatches(self.settings.redispatch_after_seconds)
        for r in lost:
            log.warning("re-dispatching %s of job %s: still queued", r.name, r.job_id)
            self.dispatch(r.job_id, r)
        finalized = 0
        for job in self.store.finalizations_due():
            finalized += self.maybe_finalize(job.id, claimer=f"sweeper:{threading.get_ident()}")
        return {
            "reaped": len(reaped),
            "retried": retried,
            "redispatched": len(lost),
            "finalized": finalized,
        }

    # --- status --------------------------------------------------------------------------------
    def describe_job(self, job: Job, *, live: bool = True) -> dict[str, Any]:
        """The job as clients see it: state, renditions with live progress, output URLs."""
        progress = self.bus.current(job.id) if live else {}
        rends = []
        for r in job.renditions:
            item: dict[str, Any] = {
                "name": r.name,
                "state": r.state.value,
                "width": r.spec.width,
                "height": r.spec.height,
                "fps": r.spec.fps,
                "attempts": r.attempts,
                "refusals": r.refusals,
                "error": r.error,
                "size_bytes": r.size_bytes,
                "avg_bitrate": r.avg_bitrate,
                "peak_bitrate": r.peak_bitrate,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "urls": {},
            }
            if r.state is RenditionState.SUCCEEDED and r.result:
                item["urls"]["playlist"] = self.output_url(
                    job.id, f"{r.name}/{r.result['playlist']}"
                )
                if r.result.get("mp4"):
                    item["urls"]["mp4"] = self.output_url(job.id, f"{r.name}/{r.result['mp4']}")
            if live and r.name in progress:
                p = progress[r.name]
                item["progress"] = p.model_dump(
                    include={"id", "state", "percent", "fps", "speed", "eta_seconds", "ts"}
                )
            rends.append(item)
        urls: dict[str, str] = {}
        if job.master_playlist:
            urls["master"] = self.output_url(job.id, "master.m3u8")
            urls["poster"] = self.output_url(job.id, "poster.jpg")
        done = [r for r in job.renditions if r.state.terminal]
        return {
            "id": str(job.id),
            "state": job.state.value,
            "error": job.error,
            "source": job.source.model_dump(),
            "source_info": job.source_info.model_dump() if job.source_info else None,
            "formats": job.formats,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "renditions_done": len(done),
            "renditions": rends,
            "urls": urls,
            "callback": {
                "url": job.callback_url,
                "status": job.callback_status.value,
                "attempts": job.callback_attempts,
                "error": job.callback_last_error,
            }
            if job.callback_url
            else None,
        }

    def find_job(self, job_id: str) -> Job:
        """A job by its id or an unambiguous prefix of it (the page shows 8 digits)."""
        try:
            return self.store.get(self.store.resolve_id(job_id))
        except (ValueError, NotFound) as exc:
            raise NotFound(f"no job {job_id!r}") from exc

    # --- events --------------------------------------------------------------------------------
    def _publish(self, event: ProgressEvent) -> None:
        try:
            self.bus.publish(event)
        except redis.RedisError as exc:
            log.warning("progress event not published: %s", exc)

    def _publish_job(self, job: Job) -> None:
        self._publish(
            ProgressEvent(
                job_id=str(job.id),
                state=job.state.value,
                percent=100.0 if job.state is JobState.SUCCEEDED else 0.0,
                error=job.error,
            )
        )


class _Heartbeat:
    """A running attempt's sign of life, at most every HEARTBEAT_EVERY_S.

    A database hiccup must not kill an hour-long encode, so errors other than Conflict are
    logged and the encode goes on (the sweeper only writes an attempt off after
    `stale_after_seconds` without any beat). Conflict means the attempt was written off: it
    propagates and stops the encode.
    """

    def __init__(self, store: JobStore, job_id: UUID, rendition: str, call_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.rendition = rendition
        self.call_id = call_id
        self.last = time.monotonic()

    def beat(self) -> None:
        if time.monotonic() - self.last < HEARTBEAT_EVERY_S:
            return
        self.last = time.monotonic()
        try:
            self.store.heartbeat(self.job_id, self.rendition, call_id=self.call_id)
        except Conflict:
            raise
        except Exception as exc:
            log.warning("heartbeat of %s/%s not recorded: %r", self.job_id, self.rendition, exc)


# Errors of the environment, not of the code: the same call may well work a moment later.
_TRANSIENT = (OSError, psycopg2.Error, redis.RedisError, requests.RequestException)


def _failure(exc: BaseException, settings: Settings) -> tuple[str, bool]:
    """The recorded reason of a failed attempt, and whether trying again can help.

    A bad source is final; ffmpeg, storage and other pipeline errors may be passing; so are
    network and database errors. An exception of any other kind is a bug in the pipeline:
    recorded as what it is (type and message, so the job's error says it), and not retried,
    since the same input would hit it again.
    """
    if isinstance(exc, FfmpegTimeout):
        limit = settings.exec_timeout_seconds
        why = f"; the function's exec_timeout is {limit:g}s" if limit else ""
        return f"{exc.reason}{why}", True
    if isinstance(exc, VtpError):
        return exc.reason, not isinstance(exc, InvalidSource)
    if isinstance(exc, _TRANSIENT):
        return f"{type(exc).__name__}: {exc}", True
    log.error("transcode failed on an unexpected error", exc_info=exc)
    return f"internal error ({type(exc).__name__}: {exc}); not retried", False


def _status_text(status: int, body: bytes) -> str:
    """`HTTP 500: Can't reach service for: x.` from a queue-worker report, body shortened."""
    text = body[:200].decode("utf-8", "replace").strip().splitlines()
    first = text[0].strip() if text else ""
    if first.startswith("{"):  # our own JSON answers: the caller has them elsewhere
        first = ""
    return f"HTTP {status}" + (f": {first}" if first else "")
