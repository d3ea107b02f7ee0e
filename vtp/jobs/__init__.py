"""Jobs, renditions and tasks: their records (`models`) and the PostgreSQL store (`store`)."""

from vtp.jobs.models import (
    CallbackStatus,
    Job,
    Rendition,
    SourceRef,
    StateChange,
    Task,
    summarize_outcome,
)
from vtp.jobs.store import JobStore

__all__ = [
    "CallbackStatus",
    "Job",
    "JobStore",
    "Rendition",
    "SourceRef",
    "StateChange",
    "Task",
    "summarize_outcome",
]
