"""Running one task in a transcode function (today a whole rendition): the attempt, its
heartbeats and deadline, the encode, the upload, and the outcome recorded whatever happens."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psycopg2
import redis
import requests

from vtp import layout, logs, privacy, workdirs
from vtp.errors import (
    Conflict,
    FfmpegError,
    FfmpegTimeout,
    InvalidSource,
    JoinRefused,
    NotFound,
    VtpError,
)
from vtp.events import ProgressReporter
from vtp.jobs import Job, JobStore, Task
from vtp.media import measure
from vtp.media.build import build
from vtp.media.chunks import ChunkRange
from vtp.media.colour import pixel_format
from vtp.media.encode import (
    ChunkResult,
    RenditionResult,
    encode_audio,
    encode_chunk,
    encode_rendition,
    encode_text,
    frame_rate,
)
from vtp.media.ffmpeg import Progress
from vtp.media.join import check_chunk
from vtp.media.measure import Measurement
from vtp.media.quality import quality_record
from vtp.media.timeline import chunk_frames
from vtp.models import (
    JobState,
    RenditionSpec,
    RenditionState,
    SourceInfo,
    TaskState,
    TranscodeTask,
)
from vtp.pipeline.clients import Clients
from vtp.pipeline.fanin import FanIn
from vtp.settings import Settings

log = logging.getLogger(__name__)


class _StopWatch:
    """One event for all that must stop a call's ffmpeg processes (the encode, the quality
    measurement): the process asked to stop (SIGTERM), or the job cancelled, whose Redis
    flag is polled every POLL_S. A heartbeat would also learn of the cancel, but only every
    `heartbeat_seconds`, and not during the measurement."""

    POLL_S = 0.5

    def __init__(self, clients: Clients, job_id: UUID, stopping: threading.Event) -> None:
        self.event = threading.Event()
        self.cancelled = False
        self._clients, self._job_id, self._stopping = clients, job_id, stopping
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stop-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            if self._stopping.wait(self.POLL_S):
                self.event.set()
                return
            if not self._done.is_set() and self._clients.cancelled(self._job_id):
                self.cancelled = True
                self.event.set()
                return

    def close(self) -> None:
        self._done.set()


class TaskRunner:
    """What a transcode function does with the call it was given."""

    def __init__(self, clients: Clients, fanin: FanIn, stopping: threading.Event) -> None:
        self.clients = clients
        self.settings = clients.settings
        self.store = clients.store
        self.storage = clients.storage
        self.bus = clients.bus
        self.fanin = fanin
        # Set when the process is asked to stop: the encode in flight ends, recorded.
        self.stopping = stopping

    def run(
        self, task: TranscodeTask, call_id: str, *, started: float | None = None
    ) -> dict[str, Any]:
        """Encode one rendition and record the outcome; never raises for a failed encode.

        `started` (time.monotonic() when the call reached the handler) anchors the call's
        deadline: the work ends, recorded, before the function's exec_timeout, since
        of-watchdog would answer 504 then and let it run on unrecorded. Every line logged
        meanwhile names the task and the call (vtp.logs).
        """
        with logs.context(
            job_id=task.job_id, rendition=task.rendition, chunk=task.chunk, call_id=call_id
        ):
            return self._run(task, call_id, started)

    def _run(self, task: TranscodeTask, call_id: str, started: float | None) -> dict[str, Any]:
        started = time.monotonic() if started is None else started
        deadline = started + self.settings.work_deadline_seconds()
        job = self.store.get(task.job_id)
        spec_rend = job.rendition(task.rendition)
        expected = f"transcode-{self.settings.rendition}" if self.settings.rendition else None
        if expected and spec_rend.function != expected:
            log.warning("%s runs %s's task for %s", expected, spec_rend.function, task.rendition)
        try:
            began = self.store.begin_attempt(task.job_id, task.rendition, call_id, chunk=task.chunk)
        except Conflict as exc:
            log.info("skipping call %s: %s", call_id, exc.reason)
            self._finalize(task.job_id, call_id)  # it may have been cancelled, the last one open
            return {"skipped": exc.reason, "job_id": str(task.job_id), "rendition": task.rendition}
        assert job.source_info is not None
        info = job.source_info
        rend = spec_rend
        attempt = began.attempts
        logs.bind(attempt=attempt)
        chunk = _chunk_of(began, self.settings)
        # A chunk reports its own progress over its own length, and the rendition's over
        # all its chunks (vtp.events.ProgressReporter).
        reporter = ProgressReporter(
            self.bus,
            job.id,
            rend.name,
            attempt,
            chunk.duration if chunk else info.duration,
            chunk=chunk.index if chunk else None,
            chunk_lengths=[(t.end_s or 0) - (t.start_s or 0) for t in rend.tasks] if chunk else (),
        )

        def report(t: Task, error: str | None = None) -> None:
            """The state a transition recorded: the task's and its rendition's for a chunk,
            the rendition's (the same) for a rendition encoded whole."""
            if chunk:
                reporter.state(t.state.value, error=error, rendition=t.rendition_state)
            else:
                reporter.state(t.rendition_state or t.state.value, error=error)

        report(began)  # as recorded: running
        heartbeat = _Heartbeat(self.store, began, call_id, self.settings.heartbeat_seconds)

        # A straggler's backup call (vtp.jobs.backups) races the first one quietly: two
        # copies sampling one chunk's progress would make its bar jump back and forth.
        backup = began.is_backup(call_id)

        def on_progress(p: Progress) -> None:
            if not backup:
                reporter.sample(p.out_time, p.fps, p.speed)
            heartbeat.beat()  # raises Conflict once this attempt was written off

        prefix = (
            layout.chunk_prefix(job.id, rend.name, chunk.index, attempt, backup=backup)
            if chunk
            else layout.attempt_prefix(job.id, rend.name, attempt)
        )
        # The job's own outputs bucket: the private one for a private job (vtp.privacy).
        bucket = privacy.outputs_bucket(self.settings, job)
        outcome: dict[str, Any]
        # What stops this call's ffmpeg: the process stopping, or the job cancelled.
        watch = _StopWatch(self.clients, job.id, self.stopping)
        uploading = False
        try:
            self._check_source_unchanged(job)
            budget = deadline - time.monotonic()
            url = self.storage.presigned_get(
                job.source.bucket, job.source.key, expires=int(budget) + 600
            )
            with workdirs.scratch(rend.name) as tmp, workdirs.scratch("quality") as qtmp:
                out = Path(tmp)
                encode_started = time.monotonic()
                result: RenditionResult | ChunkResult
                measured: dict[str, Any] = {}
                if rend.spec.text_only:
                    caption = rend.spec.caption_key
                    result = encode_text(
                        url,
                        info,
                        rend.spec,
                        out,
                        settings=self.settings,
                        caption_url=self.storage.presigned_get(
                            job.source.bucket, caption, expires=int(budget) + 600
                        ) if caption else None,
                        timeout=budget,
                        cancel=watch.event,
                    )  # fmt: skip
                elif rend.spec.audio_only:
                    result = encode_audio(
                        url,
                        info,
                        rend.spec,
                        out,
                        settings=self.settings,
                        on_progress=on_progress,
                        timeout=budget,
                        cancel=watch.event,
                    )
                else:
                    result, measured = self._encode_video(
                        job, began, chunk, url, out, Path(qtmp), on_progress, deadline,
                        watch.event,
                    )  # fmt: skip
                # Still ours? A zombie stops here instead of uploading (and if it was written
                # off during the upload, its files are in its own folder, which nothing uses).
                heartbeat.beat(force=True)
                encode_s = time.monotonic() - encode_started
                upload_started = time.monotonic()
                uploading = True
                self.storage.upload_dir(out, bucket, prefix)
            # Where the call's time went, kept with the result (operators, the benchmark).
            timings = {
                # Its quality against the source is measured within (vtp.media.measure).
                "encode_s": round(encode_s, 3),
                "upload_s": round(time.monotonic() - upload_started, 3),
            }
            record = (
                result.model_dump(mode="json")
                | measured
                | {"output_prefix": prefix, "timings": timings, "tools": build().model_dump()}
            )
            done = _persist(
                lambda: self.store.succeed_task(
                    job.id, rend.name, record, call_id=call_id, attempt=attempt, chunk=task.chunk
                ),
                self.settings.final_write_seconds,
            )
            report(done)
            outcome = {"state": "succeeded", "result": record}
            if done.rendition_state is RenditionState.SUCCEEDED:
                self._ready(job.id, rend.name)
        except Conflict as exc:
            # Written off while it ran (the sweeper, or the callback of an earlier 504): a
            # newer attempt owns the rendition now. Stop, and record nothing.
            log.warning("attempt %s of %s/%s superseded: %s", call_id, job.id, rend.name, exc)
            if uploading and self._job_cancelled(job.id, watch):
                self._remove_own(bucket, prefix)  # written after the cancel removed the job's files
            self._finalize(job.id, call_id)  # cancelled (its job cannot succeed), maybe last
            return {"job_id": str(job.id), "rendition": rend.name, "superseded": exc.reason}
        except Exception as exc:
            if watch.cancelled:  # the job was cancelled: ffmpeg was stopped for it
                log.info("attempt %s of %s/%s stopped: job cancelled", call_id, job.id, rend.name)
                if uploading:
                    self._remove_own(bucket, prefix)
                return {"job_id": str(job.id), "rendition": rend.name, "cancelled": True}
            reason, retryable = _failure(exc, self.settings)
            if self.stopping.is_set():
                reason = f"interrupted: the function was stopped ({reason})"
                retryable = True
            failed = self._record_failure(began, reason, retryable, call_id)
            if failed is None:
                return {"job_id": str(job.id), "rendition": rend.name, "superseded": reason}
            if backup and failed.state is TaskState.RUNNING:  # dropped; the first goes on
                return {"job_id": str(job.id), "rendition": rend.name, "backup_dropped": reason}
            report(failed, reason)
            outcome = {"state": failed.state.value, "error": reason}
        finally:
            watch.close()
            reporter.close()
        self._finalize(job.id, call_id)
        return {"job_id": str(job.id), "rendition": rend.name, "attempt": attempt} | outcome

    def _encode_video(
        self,
        job: Job,
        began: Task,
        chunk: ChunkRange | None,
        url: str,
        out: Path,
        logs_dir: Path,
        on_progress: Callable[[Progress], None],
        deadline: float,
        cancel: threading.Event,
    ) -> tuple[RenditionResult | ChunkResult, dict[str, Any]]:
        """The picture of a rendition (or of its chunk), measuring its own quality as it is
        encoded; the result and its quality record."""
        assert job.source_info is not None
        info, spec = job.source_info, job.rendition(began.rendition).spec

        def encode(m: Measurement | None) -> RenditionResult | ChunkResult:
            left = deadline - time.monotonic()
            if chunk is not None:
                return self._encode_chunk(began, url, info, spec, chunk, out, on_progress,
                                          left, cancel, m)  # fmt: skip
            return encode_rendition(
                url, info, spec, out, formats=job.formats, settings=self.settings,
                on_progress=on_progress, timeout=left, cancel=cancel, measure=m,
            )  # fmt: skip

        measurement = self._measurement(job, spec, info, chunk, logs_dir)
        return _measured(encode, measurement, cancel, spec, self.settings)

    def _measurement(
        self,
        job: Job,
        spec: RenditionSpec,
        info: SourceInfo,
        chunk: ChunkRange | None,
        logs_dir: Path,
    ) -> Measurement | None:
        """How the encode of `spec` (or of its `chunk`) measures its own quality
        (vtp.media.measure): at its size, and scaled up to the ladder's largest picture;
        None with measurement off."""
        if not self.settings.quality_measure:
            return None
        rate = frame_rate(spec.fps)
        start, end = (chunk.start_s, chunk.end_s) if chunk else (0.0, info.duration)
        videos = [r.spec for r in job.renditions if r.spec.kind == "video"]
        largest = max(videos, key=lambda v: v.width * v.height, default=spec)
        return measure.plan(
            max(1, chunk_frames(start, end, rate)),
            spec.fps,
            logs=logs_dir,
            settings=self.settings,
            pixel_format=pixel_format(spec.dynamic_range),
            display=(largest.width, largest.height),
            size=(spec.width, spec.height),
        )

    def _job_cancelled(self, job_id: UUID, watch: _StopWatch) -> bool:
        if watch.cancelled:
            return True
        try:
            return self.store.get(job_id).state is JobState.CANCELLED
        except _TRANSIENT:
            return False

    def _remove_own(self, bucket: str, prefix: str) -> None:
        """An attempt of a cancelled job removes what it uploaded: the cancel removed the
        job's files before these were written."""
        try:
            self.storage.remove_prefix(bucket, prefix.rstrip("/") + "/")
        except VtpError as exc:
            log.warning("files of cancelled attempt under %s not removed: %s", prefix, exc.reason)

    def _ready(self, job_id: UUID, name: str) -> None:
        """The rendition is whole: the master playlist gets it (playable early). Best
        effort: the job's end writes the final master whatever happens here."""
        try:
            self.fanin.rendition_ready(job_id, name)
        except (VtpError, *_TRANSIENT) as exc:
            log.warning("job %s: %s not published early: %r", job_id, name, exc)

    def _finalize(self, job_id: UUID, call_id: str) -> None:
        try:
            self.fanin.maybe_finalize(job_id, claimer=call_id)
        except _TRANSIENT as exc:
            # The task's own outcome is recorded; the sweeper finishes the job.
            log.warning("job %s not finalized now (%r): the sweeper will", job_id, exc)

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

    def _encode_chunk(
        self,
        began: Task,
        url: str,
        info: SourceInfo,
        spec: RenditionSpec,
        chunk: ChunkRange,
        out: Path,
        on_progress: Callable[[Progress], None],
        budget: float,
        cancel: threading.Event,
        measurement: Measurement | None = None,
    ) -> ChunkResult:
        """One chunk, proven to fit its place before it is recorded as done
        (vtp.media.join). A refusal the previous attempt met in the same words is final:
        the source or the code, not a passing fault (its error is still on the task as it
        began)."""
        try:
            result = encode_chunk(
                url, info, spec, chunk, out,
                settings=self.settings, on_progress=on_progress, timeout=budget, cancel=cancel,
                measure=measurement,
            )  # fmt: skip
            problems = check_chunk(result, fps=frame_rate(spec.fps))
            if problems:
                raise JoinRefused("; ".join(problems))
        except JoinRefused as exc:
            why = f"chunk {chunk.index}: {exc.reason}"
            raise JoinRefused(why, repeated=began.error == why) from exc
        return result

    def _record_failure(
        self, task: Task, reason: str, retryable: bool, call_id: str
    ) -> Task | None:
        """The attempt's own report of its failure; None if it was superseded meanwhile."""
        try:
            return _persist(
                lambda: self.store.fail_task(
                    task.job_id,
                    task.rendition,
                    reason,
                    retryable=retryable,
                    call_id=call_id,
                    attempt=task.attempts,
                    chunk=task.chunk,
                ),
                self.settings.final_write_seconds,
            )
        except Conflict as exc:
            log.warning("failure of superseded attempt %s not recorded: %s", call_id, exc)
            return None


def _chunk_of(task: Task, settings: Settings) -> ChunkRange | None:
    """The part of the source a task encodes; None for a rendition encoded whole."""
    if task.start_s is None or task.end_s is None:
        return None
    return ChunkRange.on_grid(task.chunk, task.start_s, task.end_s, settings.segment_seconds)


class _Heartbeat:
    """A running attempt's sign of life, at most every `every_s` (`heartbeat_seconds`).

    A database hiccup must not kill an hour-long encode, so errors other than Conflict are
    logged and the encode goes on (the sweeper only writes an attempt off after
    `stale_after_seconds` without any beat). Conflict means the attempt was written off: it
    propagates and stops the encode.
    """

    def __init__(self, store: JobStore, task: Task, call_id: str, every_s: float) -> None:
        self.store = store
        self.task = task
        self.call_id = call_id
        self.every_s = every_s
        self.last = time.monotonic()

    def beat(self, *, force: bool = False) -> None:
        """`force`: now, whenever the last one was (before the upload: is it still ours?)."""
        if not force and time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        t = self.task
        try:
            self.store.heartbeat(
                t.job_id, t.rendition, call_id=self.call_id, attempt=t.attempts, chunk=t.chunk
            )
        except Conflict:
            raise
        except Exception as exc:
            log.warning("heartbeat of %s of job %s not recorded: %r", t.name, t.job_id, exc)


# Errors of the environment, not of the code: the same call may well work a moment later.
_TRANSIENT = (OSError, psycopg2.Error, redis.RedisError, requests.RequestException)


def _failure(exc: BaseException, settings: Settings) -> tuple[str, bool]:
    """The recorded reason of a failed attempt, and whether trying again can help.

    A pipeline error says so itself (`retryable`, vtp.errors): a bad source or request is
    final, and so is ffmpeg failing on the input itself (invalid data); ffmpeg failing on its
    surroundings (the network, a signal) and storage errors may be passing; so are network
    and database errors. An exception of any other kind is a bug
    in the pipeline: recorded as what it is (type and message, so the job's error says it),
    and not retried, since the same input would hit it again.
    """
    if isinstance(exc, FfmpegTimeout):
        limit = settings.exec_timeout_seconds
        why = f"; the function's exec_timeout is {limit:g}s" if limit else ""
        return f"{exc.reason}{why}", True
    if isinstance(exc, VtpError):
        return exc.reason, exc.retryable  # ffmpeg: the input itself, or the machine around it
    if isinstance(exc, _TRANSIENT):
        return f"{type(exc).__name__}: {exc}", True
    log.error("transcode failed on an unexpected error", exc_info=exc)
    return f"internal error ({type(exc).__name__}: {exc}); not retried", False


T = TypeVar("T")


def _persist(write: Callable[[], T], within_s: float) -> T:
    """An attempt's final record, retried through a database outage: an hour of encoding
    must not be thrown away for a PostgreSQL restart. Errors that are not the connection's
    (Conflict: the attempt was superseded) propagate at once."""
    deadline = time.monotonic() + within_s
    delay = 0.5
    while True:
        try:
            return write()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("recording the outcome failed (%s); again in %.1fs", first, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _measured(
    encode: Callable[[Measurement | None], RenditionResult | ChunkResult],
    measurement: Measurement | None,
    cancel: threading.Event,
    spec: RenditionSpec,
    settings: Settings,
) -> tuple[RenditionResult | ChunkResult, dict[str, Any]]:
    """The encode, measuring itself, and what its result records of its quality. A
    measurement must never cost an encode: when the run that measures fails (neither
    stopped nor out of time), the encode runs again without it and records why it has no
    score; a failure that is the encode's own fails that run too, as it would have."""
    target, margin = spec.quality_target, settings.quality_margin
    if measurement is None:
        return encode(None), {}
    try:
        result = encode(measurement)
    except FfmpegTimeout:
        raise
    except (FfmpegError, ValueError) as exc:  # ValueError: a log folder no filter can name
        if cancel.is_set():
            raise
        reason = getattr(exc, "reason", None) or str(exc)
        log.warning("the encode that measures itself failed (%s); encoding without", reason)
        return encode(None), quality_record(
            None, None, target=target, margin=margin, error=f"not measured: {reason}"
        )
    try:
        own, shown = measurement.read()
    except (FfmpegError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        log.warning("quality of %s not measured: %s", spec.name, reason)
        return result, quality_record(None, None, target=target, margin=margin, error=reason)
    return result, quality_record(own, shown, target=target, margin=margin)
