"""What the job store reads and writes: jobs, renditions, their tasks, the audit trail.

Plain frozen pydantic models built from rows; every state change goes through the store
(`vtp.jobs.store.JobStore`), never through these objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from vtp.errors import NotFound
from vtp.lifecycle import TaskState
from vtp.models import JobState, RenditionSpec, RenditionState, SourceInfo


class CallbackStatus(StrEnum):
    """Delivery of the job's callback. `none`: the job has no callback URL."""

    NONE = "none"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class SourceRef(BaseModel):
    """Which object a job transcodes. (bucket, key, etag) is the job's idempotency key."""

    model_config = ConfigDict(frozen=True)

    bucket: str = Field(min_length=1)
    key: str = Field(min_length=1)
    etag: str = Field(min_length=1)
    size: int | None = Field(default=None, ge=0)

    @property
    def normalized_etag(self) -> str:
        """S3 APIs quote ETags inconsistently (headers yes, MinIO events no); compare bare."""
        return self.etag.strip('"')


class Task(BaseModel):
    """One unit of work that one call runs (today a whole rendition, chunk 0; with
    segment-parallel encoding, one chunk of it): its attempts, lease and outcome.

    `rendition_state` is the state of the task's rendition after the transition that
    returned this task (derived in the same transaction); None when read on its own.
    """

    model_config = ConfigDict(frozen=True)

    job_id: UUID
    rendition: str
    chunk: int = 0
    function: str
    start_s: float | None = None  # the part of the source it encodes; None: all of it
    end_s: float | None = None
    state: TaskState
    attempts: int
    # Attempts made before the last redrive (they no longer count against the budget), and
    # how often it was redriven (migration 0011).
    budget_from: int = 0
    redrives: int = 0
    last_call_id: str | None = None
    # The X-Call-Id of the latest queued call, and refused calls in a row (migration 0003).
    dispatch_call_id: str | None = None
    refusals: int = 0
    # The last call the queue-worker reported the end of, and when (migration 0018).
    reported_call_id: str | None = None
    reported_at: datetime | None = None
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None
    attempt_started_at: datetime | None = None
    finished_at: datetime | None = None
    next_retry_at: datetime | None = None
    dispatched_at: datetime | None = None
    # A report that the running attempt's call died, not yet confirmed (migration 0005).
    death_reported_at: datetime | None = None
    death_report: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    # A second call racing a straggler's first (migration 0007, vtp.jobs.backups).
    backup_call_id: str | None = None
    backup_dispatched_at: datetime | None = None
    backup_started_at: datetime | None = None
    backup_heartbeat_at: datetime | None = None
    backups: int = 0
    rendition_state: RenditionState | None = None

    @property
    def name(self) -> str:
        """`rendition/chunk`, for logs and call descriptions."""
        return f"{self.rendition}/{self.chunk}"

    def is_backup(self, call_id: str | None) -> bool:
        """Whether `call_id` is this task's backup call (a straggler's second), not its first."""
        return call_id is not None and call_id == self.backup_call_id


class Rendition(BaseModel):
    """One rung of the ladder: its plan, its state (derived from its tasks') and output."""

    model_config = ConfigDict(frozen=True)

    job_id: UUID
    name: str
    function: str
    spec: RenditionSpec
    state: RenditionState
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output_prefix: str | None = None
    size_bytes: int | None = None
    avg_bitrate: int | None = None
    peak_bitrate: int | None = None
    # Measured against the source after encoding (migration 0008, vtp.media.quality).
    quality_metric: str | None = None
    quality_score: float | None = None
    quality_worst: float | None = None
    quality_flagged: bool | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    tasks: list[Task] = Field(default_factory=list)

    def task(self, chunk: int = 0) -> Task:
        for t in self.tasks:
            if t.chunk == chunk:
                return t
        raise NotFound(f"rendition {self.name} of job {self.job_id} has no task {chunk}")

    @property
    def attempts(self) -> int:
        """Attempts of its most-tried task (its only one, encoded whole)."""
        return max((t.attempts for t in self.tasks), default=0)

    @property
    def refusals(self) -> int:
        """Refused calls in a row of its most-refused task."""
        return max((t.refusals for t in self.tasks), default=0)


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    source: SourceRef
    # With the source version, the job's identity (vtp.options.JobOptions.identity).
    options_key: str
    # The options as asked and where they came from; None for jobs from before 0009.
    options: dict[str, Any] | None = None
    redrives: int = 0  # how often an operator queued its failures again (migration 0011)
    priority: int = 50  # its share against other jobs' (vtp.jobs.scheduling; migration 0017)
    outputs_deleted_at: datetime | None = None  # removed by retention (migration 0012)
    # The renditions the master playlist lists so far (migration 0013): playable early.
    ready: list[str] = Field(default_factory=list)
    # Job-level files beside the master (vtp.layout): "dash", "storyboard", "subtitles".
    outputs: dict[str, Any] = Field(default_factory=dict)
    source_info: SourceInfo | None = None
    state: JobState
    formats: list[str]
    error: str | None = None
    master_playlist: str | None = None
    callback_url: str | None = None
    callback_status: CallbackStatus
    callback_attempts: int
    callback_last_error: str | None = None
    callback_at: datetime | None = None
    callback_next_at: datetime | None = None  # when a pending callback is tried again
    finalize_claimed_by: str | None = None
    finalize_claimed_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # How the ladder was decided (vtp.media.tuning.TitlePlan.summary); None for older jobs.
    plan: dict[str, Any] | None = None
    renditions: list[Rendition] = Field(default_factory=list)

    def rendition(self, name: str) -> Rendition:
        for r in self.renditions:
            if r.name == name:
                return r
        raise NotFound(f"job {self.id} has no rendition {name!r}")

    @property
    def private(self) -> bool:
        """Whether its outputs are private (vtp.privacy): settled when it was recorded, and
        kept with its options; jobs from before private outputs are public."""
        return bool((self.options or {}).get("private"))


class StateChange(BaseModel):
    """One row of the audit trail."""

    model_config = ConfigDict(frozen=True)

    id: int
    job_id: UUID
    rendition: str | None
    chunk: int | None = None  # the task's, for a task's transition
    from_state: str | None
    to_state: str
    attempt: int | None
    call_id: str | None
    detail: str | None
    at: datetime


def summarize_outcome(renditions: Sequence[Rendition]) -> tuple[JobState, str | None]:
    """The job's final state and reason from its (terminal) renditions.

    The reason names every rendition that did not succeed, so a client reading the job (or
    its callback) learns which rung broke and why without digging through logs.
    """
    problems: list[str] = []
    cancelled: list[str] = []
    for r in renditions:
        if r.state is RenditionState.SUCCEEDED:
            continue
        if not r.state.terminal:
            raise ValueError(f"rendition {r.name} is still {r.state}")
        if r.state is RenditionState.CANCELLED:
            # Stopped because another failed (vtp.jobs.cancellation): its error says which.
            why = (r.error or "").removeprefix("cancelled: ")
            cancelled.append(f"rendition {r.name} cancelled" + (f": {why}" if why else ""))
            continue
        if r.state is not RenditionState.DEAD:
            how = "failed"
        elif r.attempts:
            how = f"dead after {r.attempts} attempt{'s' if r.attempts != 1 else ''}"
        else:
            how = "dead, never started"  # every call refused: the error says why

        problems.append(f"rendition {r.name} {how}: {r.error}")
    # The cause first: renditions cancelled because another failed come after the one
    # that did.
    problems += cancelled
    if not renditions:
        return JobState.FAILED, "job has no renditions"
    if problems:
        return JobState.FAILED, "; ".join(problems)
    return JobState.SUCCEEDED, None
