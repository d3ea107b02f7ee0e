"""Intake: an object (from a bucket event or a manual job) probed, planned and recorded as a
job, or recorded as refused with its reason."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from vtp import callbacks
from vtp.errors import InvalidSource
from vtp.events import ProgressEvent
from vtp.jobs import Job, SourceRef
from vtp.ladder import plan_ladder
from vtp.pipeline.transcode import Transcode
from vtp.probe import probe_source
from vtp.webhook import SourceObject

log = logging.getLogger(__name__)


class SubmitResult(BaseModel):
    job: Job
    created: bool


class Intake(Transcode):
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
