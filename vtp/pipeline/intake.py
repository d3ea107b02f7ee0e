"""Intake: an object (from a bucket event or a manual job) probed, planned and recorded as a
job, or recorded as refused with its reason."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from vtp import callbacks
from vtp.chunks import ChunkRange, estimated_cost, longest_first, plan_chunks
from vtp.errors import InvalidRequest, InvalidSource, NotFound, VtpError
from vtp.events import ProgressEvent
from vtp.jobs import Job, SourceRef, Task
from vtp.ladder import plan_ladder, with_separate_audio
from vtp.models import RenditionSpec, SourceInfo
from vtp.pipeline.clients import Clients
from vtp.pipeline.dispatch import Dispatcher
from vtp.pipeline.fanin import FanIn
from vtp.probe import probe_source
from vtp.storage import ListedObject
from vtp.tuning import TitlePlan, tune
from vtp.webhook import SourceObject, key_problem, storable_key

log = logging.getLogger(__name__)


class SubmitResult(BaseModel):
    job: Job
    created: bool


class Planned(BaseModel):
    """A source's plan: what probing found, the tuned ladder, its chunks, the decision."""

    source: SourceInfo
    specs: list[RenditionSpec]
    chunks: list[ChunkRange]
    title: TitlePlan

    def preview(self) -> dict[str, Any]:
        """The plan as a dry run answers it: per rendition the factor, the cap and what the
        samples predict; in all, the predicted size and encode time."""
        rows = []
        for spec in self.specs:
            est = spec.estimate
            rows.append(
                {
                    "name": spec.name,
                    "width": spec.width,
                    "height": spec.height,
                    "fps": spec.fps,
                    "audio_only": spec.audio_only,
                    "crf": None if spec.audio_only else spec.crf,
                    "preset": None if spec.audio_only else spec.preset,
                    "max_bitrate": None if spec.audio_only else spec.max_bitrate,
                    "audio_bitrate": spec.audio_bitrate,
                    "quality_target": None if spec.audio_only else spec.quality_target,
                    "predicted": est.model_dump(exclude={"probes"}) if est else None,
                    "probes": [list(p) for p in est.probes] if est else [],
                }
            )
        known = [s.estimate for s in self.specs if s.estimate and not s.audio_only]
        return {
            "dry_run": True,
            "source": self.source.model_dump(mode="json"),
            "renditions": rows,
            "chunks": len(self.chunks),
            "plan": self.title.summary(),
            "predicted": {
                # Video only, over every rendition the samples could predict.
                "size_bytes": sum(e.size_bytes for e in known),
                "encode_cpu_seconds": round(sum(e.encode_cpu_seconds for e in known), 1),
                "renditions_predicted": len(known),
            },
        }


class Intake:
    def __init__(self, clients: Clients, dispatcher: Dispatcher, fanin: FanIn) -> None:
        self.clients = clients
        self.settings = clients.settings
        self.store = clients.store
        self.storage = clients.storage
        self.dispatcher = dispatcher
        self.fanin = fanin

    def submit(
        self,
        src: SourceObject,
        *,
        renditions: list[str] | None = None,
        formats: list[str] | None = None,
        callback_url: str | None = None,
        manual: bool = False,
    ) -> SubmitResult:
        """Probe, plan and record a job for one object, then dispatch its renditions.

        The same object version (bucket, key, ETag) always maps to one job: a duplicate
        event returns the existing job and dispatches nothing. Sources come from the input
        buckets only (InvalidRequest otherwise). A key that cannot be processed is refused
        with InvalidRequest for a manual job (the caller is there to read why), and recorded
        as a failed job for a bucket event (nobody is, and the event must leave a trace).
        """
        self._require_input_bucket(src)
        problem = key_problem(src.key)
        if problem is not None:
            if manual:
                raise InvalidRequest(problem)
            return self._reject(
                SourceRef(
                    bucket=src.bucket,
                    key=storable_key(src.key),
                    etag=src.etag or "unknown",
                    size=src.size,
                ),
                f"{problem}: it cannot be processed",
                callback_url,
            )
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
        try:
            planned = self._plan(src, obj.size, renditions, formats)
        except InvalidSource as exc:
            return self._reject(ref, exc.reason, callback_url)
        job, created = self.store.create_job(
            ref,
            planned.source,
            planned.specs,
            formats=formats or ["hls"],
            callback_url=callback_url,
            chunks=planned.chunks,
            decision=planned.title.summary(),
        )
        if created:
            log.info(
                "job %s for s3://%s/%s: %s",
                job.id,
                src.bucket,
                src.key,
                ", ".join(f"{r.name} {r.spec.width}x{r.spec.height}" for r in job.renditions),
            )
            self.clients.publish_job(job)
            for rend in job.renditions:
                self.clients.publish(ProgressEvent.of_rendition(rend))
            for task in _costliest_first(job):
                self.dispatcher.dispatch(task)
        return SubmitResult(job=self.store.get(job.id), created=created)

    def preview(
        self,
        src: SourceObject,
        *,
        renditions: list[str] | None = None,
        formats: list[str] | None = None,
    ) -> Planned:
        """The plan a job for `src` would get, tuned from samples, without recording or
        encoding anything (a manual job's `"dry_run": true`). InvalidSource says why the
        source would be refused."""
        self._require_input_bucket(src)
        problem = key_problem(src.key)
        if problem is not None:
            raise InvalidRequest(problem)
        obj = self.storage.stat(src.bucket, src.key)
        return self._plan(src, obj.size, renditions, formats)

    def _require_input_bucket(self, src: SourceObject) -> None:
        """Sources come from the input buckets only: the outputs are public-read, so a job
        for another bucket's object would publish it."""
        buckets = self.settings.source_buckets
        if src.bucket not in buckets:
            raise InvalidRequest(
                f"bucket {src.bucket!r} is not an input bucket: sources come from "
                f"{', '.join(buckets)} (VTP_INPUT_BUCKETS)"
            )

    def _plan(
        self,
        src: SourceObject,
        size: int | None,
        renditions: list[str] | None,
        formats: list[str] | None,
    ) -> Planned:
        """Probe, plan the ladder, tune it per title from samples (vtp.tuning), and cut it
        into chunks where the job is to be encoded in parts."""
        s = self.settings
        url = self.storage.presigned_get(src.bucket, src.key, expires=600)
        info = probe_source(url, s, size_bytes=size)
        ladder = plan_ladder(info, s, renditions)
        if not ladder:
            raise InvalidSource(
                f"no rendition can be made from a {info.width}x{info.height} source"
            )
        # Sampling must leave split time to record the job within its own call.
        budget = min(s.quality_sample_timeout_seconds, s.work_deadline_seconds() / 2)
        # Rungs a user asked for by name are kept even when the samples say they add little.
        title = tune(url, info, ladder, s, prune=renditions is None, timeout=budget)
        chunks = (
            plan_chunks(
                info.duration,
                segment_s=s.segment_seconds,
                chunk_s=s.chunk_seconds,
                threshold_s=s.chunk_threshold_seconds,
            )
            # The progressive MP4 is one file from one encoder: such a job is encoded whole.
            if s.chunked_encoding and "mp4" not in (formats or [])
            else []
        )
        specs = with_separate_audio(title.specs) if chunks else list(title.specs)
        return Planned(source=info, specs=specs, chunks=chunks, title=title)

    def _reject(self, ref: SourceRef, reason: str, callback_url: str | None) -> SubmitResult:
        """Record a source that cannot be processed as a failed job with its reason."""
        job, created = self.store.record_rejected(ref, reason, callback_url=callback_url)
        if created:
            log.warning("rejected s3://%s/%s: %s", ref.bucket, ref.key, reason)
            self.clients.publish_job(job)
            self.fanin.fire_callback(job)
        return SubmitResult(job=self.store.get(job.id), created=created)

    # --- reconciliation -------------------------------------------------------------------
    def reconcile(self) -> dict[str, int]:
        """Submit the objects of the input buckets that no job knows: their event was lost
        (split down or failing when MinIO sent it without a queue dir, the async route's one
        call lost). Objects younger than the grace period still have their event coming;
        older than the window they are history, not lost work."""
        s = self.settings
        now = datetime.now(UTC)
        listed = submitted = 0
        suffixes = tuple(x.lower() for x in s.video_suffixes)
        for bucket in s.source_buckets:
            batch: list[ListedObject] = []
            for obj in self.storage.list_objects(bucket):
                listed += 1
                age = (now - obj.last_modified).total_seconds()
                if obj.key.lower().endswith(suffixes) and (
                    s.reconcile_grace_seconds <= age <= s.reconcile_window_seconds
                ):
                    batch.append(obj)
                if len(batch) >= 500:
                    submitted += self._reconcile(bucket, batch, s.reconcile_max_per_run - submitted)
                    batch = []
                if submitted >= s.reconcile_max_per_run:
                    break
            submitted += self._reconcile(bucket, batch, s.reconcile_max_per_run - submitted)
        if submitted:
            log.warning("reconciled %d object(s) that had no job", submitted)
        return {"listed": listed, "submitted": submitted}

    def _reconcile(self, bucket: str, objects: list[ListedObject], room: int) -> int:
        known = self.store.known_versions(bucket, [(storable_key(o.key), o.etag) for o in objects])
        submitted = 0
        for obj in objects:
            if submitted >= room:
                break
            if (storable_key(obj.key), obj.etag) in known:
                continue
            log.warning("s3://%s/%s (ETag %s) has no job: submitting it", bucket, obj.key, obj.etag)
            try:
                self.submit(SourceObject(bucket=bucket, key=obj.key, etag=obj.etag, size=obj.size))
            except NotFound:
                continue  # deleted meanwhile
            except VtpError as exc:
                log.error("reconciling s3://%s/%s failed: %s", bucket, obj.key, exc.reason)
                continue
            submitted += 1
        return submitted


def _costliest_first(job: Job) -> list[Task]:
    """The job's tasks in dispatch order (vtp.chunks.longest_first)."""
    assert job.source_info is not None
    whole = job.source_info.duration
    return longest_first(
        [
            (
                estimated_cost(
                    (t.end_s - t.start_s) if t.start_s is not None and t.end_s is not None
                    else whole,
                    width=r.spec.width, height=r.spec.height, audio_only=r.spec.audio_only,
                ),
                t,
            )
            for r in job.renditions
            for t in r.tasks
        ]
    )  # fmt: skip
