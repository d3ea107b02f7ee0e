"""What an operator does to a job once it exists: cancel it, redrive its dead letters,
delete it; and the retention sweep, which expires old jobs' outputs.

Each action is a transaction in the store (vtp.jobs) followed by what lives outside the
database: the Redis flag running transcodes watch, the outputs in the bucket, the job's
events and its callback.
"""

from __future__ import annotations

import logging
from typing import Any

from vtp import layout, logs, privacy
from vtp.errors import Conflict, NotFound, VtpError
from vtp.events import ProgressEvent
from vtp.jobs import Job
from vtp.pipeline.clients import Clients
from vtp.pipeline.dispatch import Dispatcher
from vtp.pipeline.fanin import FanIn

log = logging.getLogger(__name__)

CANCEL_REASON = "cancelled on request"


class Operations:
    def __init__(self, clients: Clients, dispatcher: Dispatcher, fanin: FanIn) -> None:
        self.clients = clients
        self.settings = clients.settings
        self.store = clients.store
        self.storage = clients.storage
        self.dispatcher = dispatcher
        self.fanin = fanin

    @logs.about_job
    def redrive(self, job_id: str) -> dict[str, Any]:
        """Queue a failed job's failed and dead renditions again with a fresh budget,
        keeping what succeeded, to be dispatched as slots free. Conflict for a job
        that is not failed, or has nothing to redrive."""
        before = self.store.get(self.store.resolve_id(job_id))
        broken = {r.name: r.error for r in before.renditions if r.state.terminal and r.error}
        job, tasks = self.store.redrive_job(before.id)
        # Out of their ends: the page and the CLI take these after a failed state.
        self.clients.publish(ProgressEvent.of_job(job, reopened=True))
        redriven = sorted({t.rendition for t in tasks})
        for name in redriven:
            self.clients.publish(ProgressEvent.of_rendition(job.rendition(name), reopened=True))
        for task in tasks:
            if task.start_s is not None:  # a chunk: its own segment of the bar
                self.clients.publish(ProgressEvent.of_chunk(task, reopened=True))
        self.dispatcher.pump()  # they wait for slots like any job's (vtp.jobs.scheduling)
        return {
            "job_id": str(job.id),
            "state": job.state.value,
            "redrives": job.redrives,
            "renditions": [{"name": n, "was": broken.get(n)} for n in redriven],
            "tasks_queued": len(tasks),
            "kept": [r.name for r in job.renditions if r.name not in redriven],
        }

    @logs.about_job
    def cancel(self, job_id: str, *, reason: str = CANCEL_REASON) -> dict[str, Any]:
        """Cancel a job that has not ended: its open tasks and the job end `cancelled` at
        once (queued calls are skipped when they arrive), running encodes stop within a
        second or two (the flag), what was written is removed, and the callback says so.
        Conflict for a job that has ended; NotFound for an unknown one."""
        job, tasks = self.store.cancel_job(self.store.resolve_id(job_id), reason)
        self.clients.flag_cancelled(job.id)
        self.clients.announce(job)
        removed = self._remove_outputs(job)
        self.fanin.fire_callback(job)
        self.dispatcher.pump()  # its slots are free for other jobs
        return {
            "job_id": str(job.id),
            "state": job.state.value,
            "tasks_cancelled": tasks,
            "outputs_removed": removed,
        }

    @logs.about_job
    def delete(self, job_id: str, *, source: bool = False) -> dict[str, Any]:
        """Delete an ended job: its outputs, then its rows (a failure removing the outputs
        keeps the rows, to try again with); with `source`, the source object too, if it is
        still the job's version and no other job at work reads it. Conflict for a job at
        work (cancel it first)."""
        job = self.store.get(self.store.resolve_id(job_id))
        if not job.state.terminal:
            raise Conflict(f"job {job.id} is {job.state.value}: cancel it first (vtp cancel)")
        if source:
            readers = self.store.source_in_use(job)
            if readers:
                raise Conflict(
                    f"the source of job {job.id} is read by job(s) at work: "
                    f"{', '.join(str(r) for r in readers)}; delete without the source"
                )
        removed = self._remove_job_outputs(job)
        self.store.delete_job(job.id)
        self.clients.forget_job(job.id)
        source_removed = False
        if source:
            source_removed = self._remove_source(job)
        return {
            "job_id": str(job.id),
            "deleted": True,
            "outputs_removed": removed,
            "source_removed": source_removed,
        }

    def expire_outputs(self) -> int:
        """The sweeper's retention pass: the outputs of jobs that ended more than
        `retention_days` ago removed, their rows marked; how many jobs."""
        days = self.settings.retention_days
        if days <= 0:
            return 0
        expired = 0
        for job in self.store.expired(days, limit=self.settings.retention_max_per_run):
            try:
                self._remove_job_outputs(job)
            except VtpError as exc:
                log.warning("outputs of job %s not expired: %s", job.id, exc.reason)
                continue
            self.store.mark_outputs_deleted(job.id)
            expired += 1
        if expired:
            log.info("retention: outputs of %d job(s) older than %g days removed", expired, days)
        return expired

    def _remove_source(self, job: Job) -> bool:
        """The job's source object, if it is still the job's version (a newer upload of the
        key is another job's, and stays)."""
        src = job.source
        try:
            now = self.storage.stat(src.bucket, src.key)
        except NotFound:
            return False
        if now.etag != src.normalized_etag:
            log.info("source of job %s not removed: s3://%s/%s is a newer version",
                     job.id, src.bucket, src.key)  # fmt: skip
            return False
        self.storage.remove_object(src.bucket, src.key)
        return True

    def _remove_job_outputs(self, job: Job) -> int:
        """Every object the job wrote to its outputs bucket (the private one for a private
        job: vtp.privacy); how many. StorageError when the storage refuses."""
        bucket = privacy.outputs_bucket(self.settings, job)
        return self.storage.remove_prefix(bucket, layout.job_prefix(job.id))

    def _remove_outputs(self, job: Job) -> int | None:
        """Everything a cancelled job wrote so far; None when the storage refused (said in
        the log: a running attempt that uploads after this removes its own folder)."""
        try:
            return self._remove_job_outputs(job)
        except VtpError as exc:
            log.warning("outputs of cancelled job %s not removed: %s", job.id, exc.reason)
            return None
