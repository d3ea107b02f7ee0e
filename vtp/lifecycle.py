"""The lifecycle of jobs, renditions and tasks, in one place and without I/O: the states, the
transitions allowed between them, how a rendition's state follows from its tasks', and how
often a unit of work is tried again.

The store executes transitions (guarded UPDATEs, each recorded in `state_changes`) and checks
every one against the tables here before it commits; the CLI and the progress page take their
notion of "finished" and "retrying" from the same enums (the page from `lifecycle.js`, which
`python -m vtp.lifecycle js` writes and a test keeps in step), never from retyped strings.

A *task* is one unit of work that one call runs: today a whole rendition, with segment-parallel
encoding one chunk of it. Attempts, leases, heartbeats, call ids and results belong to tasks;
a rendition's state is derived from its tasks' (`rendition_state`), in the same transaction.

Task life: queued -> running -> succeeded | failed (permanent) | retrying (back-off) ->
queued (dispatched again) -> running ... -> dead (budget spent). `queued` is both waiting
for a slot (no call yet: vtp.jobs.scheduling decides who goes next) and a call in the
platform's queue (`dispatch_call_id` set); a retry past its back-off waits for a slot too.
A call that never reached the handler is a refusal: queued -> retrying, or dead once
`max_refusals` in a row. A rendition of one task goes the same way; one of several is
running from the first start of any of its tasks until all have ended, failed (or dead)
once one of them failed (or died).

Job life: queued -> running -> succeeded | failed; a source that cannot be processed is
recorded failed at once; a job whose renditions all died before one ran goes queued ->
failed. A job's own trail also carries notes (finalization claimed), recorded as a state
to itself.

Redriven (`vtp redrive`, split's redrive route): a failed job goes back to queued, with its
failed and dead renditions and tasks, each with a fresh budget. It is the one way out of an
end, an operator's act rather than a move of the work, so it has a table of its own
(`REDRIVABLE`, `check_redrive`) and the transition tables keep "an end leads nowhere".

Cancelled (`vtp cancel`, split's cancel route): a job not ended yet, and every task and
rendition of it not ended yet, go to `cancelled` at once, in one transaction; what had
succeeded keeps its state. `cancelled` is an end, like `failed`, but nobody's fault: it is
also how a task ends that was stopped because another rendition of its job failed or died
(`vtp.jobs.cancellation`), its error naming that rendition; the job then ends `failed`.

Retry policy: how often, and how far apart, a unit of work is tried again.
Kept apart from the store so that the numbers are validated once, where they are built (from
settings or by a test), instead of being found wrong in the middle of a transition.

Two budgets, because two different things go wrong:

* an *attempt* is a call that reached the handler and ran (and crashed, timed out or failed
  cleanly): it costs real work, so there are few (`max_attempts`);
* a *refusal* is a call that never reached the handler: the function was down, restarting,
  busy (429) or unknown to the provider (500 "Can't reach service for"). Nothing ran, so a
  refusal spends no attempt, but a function that stays down must not be called forever:
  refusals have their own, larger budget (`max_refusals`), with the same back-off.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vtp.errors import InvalidTransition


class JobState(StrEnum):
    """Life of a job. `succeeded`, `failed` and `cancelled` are terminal."""

    QUEUED = "queued"  # accepted, renditions invoked, none running yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped on request before it ended

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


class RenditionState(StrEnum):
    """Life of one rendition. `succeeded`, `failed` and `dead` are terminal.

    `failed` is a permanent failure (bad input); `dead` means retries were exhausted and the
    task was dead-lettered with its reason; `retrying` waits for its back-off and is not an
    end, whatever error it shows; `cancelled`: its job was cancelled before it ended.
    """

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RENDITION_STATES


class TaskState(StrEnum):
    """Life of one task (a unit of work one call runs). The same words as a rendition's:
    `succeeded`, `failed` (permanent), `dead` (budget spent) and `cancelled` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_TASK_STATES


TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
TERMINAL_RENDITION_STATES = frozenset(
    {RenditionState.SUCCEEDED, RenditionState.FAILED, RenditionState.DEAD,
     RenditionState.CANCELLED}
)  # fmt: skip
TERMINAL_TASK_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, TaskState.CANCELLED}
)

_R = RenditionState
# from -> the states it may go to; None is "not there yet" (the row is being created).
RENDITION_TRANSITIONS: Mapping[RenditionState | None, frozenset[RenditionState]] = {
    None: frozenset({_R.QUEUED}),
    # -> cancelled before running: its job cancelled, or doomed by another rendition. Never
    # -> failed: only an attempt that ran fails, and its rendition was running by then.
    _R.QUEUED: frozenset({_R.RUNNING, _R.RETRYING, _R.DEAD, _R.CANCELLED}),
    # -> dead: of several tasks, one waits for its retry while another's call is refused for
    # the last time.
    _R.RETRYING: frozenset({_R.QUEUED, _R.RUNNING, _R.DEAD, _R.CANCELLED}),
    _R.RUNNING: frozenset({_R.SUCCEEDED, _R.FAILED, _R.RETRYING, _R.DEAD, _R.CANCELLED}),
    _R.SUCCEEDED: frozenset(),
    _R.FAILED: frozenset(),
    _R.DEAD: frozenset(),
    _R.CANCELLED: frozenset(),
}
_T = TaskState
TASK_TRANSITIONS: Mapping[TaskState | None, frozenset[TaskState]] = {
    None: frozenset({_T.QUEUED}),
    # -> cancelled without running: its job cancelled, or doomed by a failed sibling; only
    # a running attempt fails.
    _T.QUEUED: frozenset({_T.RUNNING, _T.RETRYING, _T.DEAD, _T.CANCELLED}),
    _T.RETRYING: frozenset({_T.QUEUED, _T.RUNNING, _T.CANCELLED}),
    # -> running: a backup call for a straggler dispatched, begun, dropped or taking over.
    _T.RUNNING: frozenset(
        {_T.RUNNING, _T.SUCCEEDED, _T.FAILED, _T.RETRYING, _T.DEAD, _T.CANCELLED}
    ),
    _T.SUCCEEDED: frozenset(),
    _T.FAILED: frozenset(),
    _T.DEAD: frozenset(),
    _T.CANCELLED: frozenset(),
}
_J = JobState
JOB_TRANSITIONS: Mapping[JobState | None, frozenset[JobState]] = {
    None: frozenset({_J.QUEUED, _J.FAILED}),
    _J.QUEUED: frozenset({_J.QUEUED, _J.RUNNING, _J.FAILED, _J.CANCELLED}),
    _J.RUNNING: frozenset({_J.RUNNING, _J.SUCCEEDED, _J.FAILED, _J.CANCELLED}),
    _J.SUCCEEDED: frozenset(),
    _J.FAILED: frozenset(),
    _J.CANCELLED: frozenset(),
}


# What an operator's redrive may reopen, back to queued: a failed job, and of it the
# renditions and tasks that failed, died or were cancelled because of those (what
# succeeded is kept; a job cancelled on request is not redriven at all).
REDRIVABLE: Mapping[str, frozenset[str]] = {
    "job": frozenset({JobState.FAILED.value}),
    "rendition": frozenset(
        {RenditionState.FAILED.value, RenditionState.DEAD.value, RenditionState.CANCELLED.value}
    ),
    "task": frozenset({TaskState.FAILED.value, TaskState.DEAD.value, TaskState.CANCELLED.value}),
}


def check_redrive(kind: str, old: str) -> None:
    """InvalidTransition unless a redrive may take a `kind` in state `old` back to queued."""
    if old not in REDRIVABLE[kind]:
        raise InvalidTransition(f"a redrive cannot reopen a {kind} that is {old}")


def check_rendition(old: str | None, new: str) -> RenditionState:
    """`new` if a rendition may go there from `old`; InvalidTransition otherwise."""
    to = RenditionState(new)
    if to not in RENDITION_TRANSITIONS[RenditionState(old) if old is not None else None]:
        raise InvalidTransition(f"rendition {old or '(new)'} -> {new} is not a transition")
    return to


def check_task(old: str | None, new: str) -> TaskState:
    """`new` if a task may go there from `old`; InvalidTransition otherwise."""
    to = TaskState(new)
    if to not in TASK_TRANSITIONS[TaskState(old) if old is not None else None]:
        raise InvalidTransition(f"task {old or '(new)'} -> {new} is not a transition")
    return to


def rendition_state(tasks: Collection[TaskState]) -> RenditionState:
    """A rendition's state from its tasks' states.

    One task: the same state. Several: failed (or dead) as soon as one of them failed (or
    died): the rendition cannot be complete; succeeded when all did; running from the
    moment any one started until then (a chunk waiting for its retry does not make a
    half-encoded rendition "queued"); retrying or queued only while none has run yet.
    """
    if not tasks:
        raise ValueError("a rendition has at least one task")
    states = set(tasks)
    if len(tasks) == 1:
        return RenditionState(next(iter(states)).value)
    if TaskState.FAILED in states:
        return RenditionState.FAILED
    if TaskState.DEAD in states:
        return RenditionState.DEAD
    if TaskState.CANCELLED in states:
        return RenditionState.CANCELLED
    if states == {TaskState.SUCCEEDED}:
        return RenditionState.SUCCEEDED
    if states & {TaskState.RUNNING, TaskState.SUCCEEDED}:
        return RenditionState.RUNNING
    if TaskState.RETRYING in states:
        return RenditionState.RETRYING
    return RenditionState.QUEUED


def check_job(old: str | None, new: str) -> JobState:
    """`new` if a job may go there from `old`; InvalidTransition otherwise."""
    to = JobState(new)
    if to not in JOB_TRANSITIONS[JobState(old) if old is not None else None]:
        raise InvalidTransition(f"job {old or '(new)'} -> {new} is not a transition")
    return to


def for_clients() -> dict[str, object]:
    """What clients need to know of the lifecycle: the states, which end, which wait."""
    return {
        "job": {"states": [s.value for s in JobState],
                "terminal": sorted(s.value for s in TERMINAL_JOB_STATES)},
        "rendition": {
            "states": [s.value for s in RenditionState],
            "terminal": sorted(s.value for s in TERMINAL_RENDITION_STATES),
            "retrying": [RenditionState.RETRYING.value],
        },
    }  # fmt: skip


def page_script() -> str:
    """functions/ws-relay/static/lifecycle.js: the same, for the progress page."""
    body = json.dumps(for_clients(), indent=2, sort_keys=True)
    return (
        "// Generated by `python -m vtp.lifecycle js` from vtp/lifecycle.py: do not edit.\n"
        f"window.VTP_LIFECYCLE = Object.freeze({body});\n"
    )


class RetryPolicy(BaseModel):
    """Exponential back-off with a cap: `base_s * 2**(n-1)`, at most `max_s`, for the n-th
    failure in a row."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=3, ge=1, description="runs before a unit is dead")
    max_refusals: int = Field(
        default=8, ge=1, description="refused calls in a row before a unit is dead"
    )
    base_s: float = Field(default=10.0, gt=0)
    max_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _cap_above_base(self) -> RetryPolicy:
        if self.max_s < self.base_s:
            raise ValueError(f"retry cap ({self.max_s:g}s) is below its base ({self.base_s:g}s)")
        return self

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1 for the first)."""
        exponent = min(max(failures - 1, 0), 30)  # 2**30 times the base is past any cap
        return float(min(self.base_s * 2**exponent, self.max_s))


if __name__ == "__main__":
    if sys.argv[1:] != ["js"]:
        raise SystemExit(
            "usage: python -m vtp.lifecycle js > functions/ws-relay/static/lifecycle.js"
        )
    sys.stdout.write(page_script())
