"""The `vtp` client's progress model (pure): `JobProgress` turns events, snapshots and job views
into per-rendition state, and `bar_rows` turns that into what a bar shows."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from vtp.events import JOB_FIELD, ProgressEvent, stream_id_order
from vtp.lifecycle import TERMINAL_JOB_STATES, TERMINAL_RENDITION_STATES, RenditionState
from vtp.options import PRIORITY_NAMES

log = logging.getLogger(__name__)

# From the lifecycle, never retyped: `retrying` is not an end, whatever error it shows.
TERMINAL_STATES = frozenset(s.value for s in TERMINAL_RENDITION_STATES)
JOB_TERMINAL_STATES = frozenset(s.value for s in TERMINAL_JOB_STATES)
# Failures that carry no percent of their own (reported by the sweeper or a callback).
_NO_PROGRESS = (TERMINAL_STATES - {RenditionState.SUCCEEDED.value}) | {
    RenditionState.RETRYING.value
}


# --- the event -> progress model (pure) --------------------------------------------------------


@dataclass
class RenditionProgress:
    name: str
    state: str = "queued"
    percent: float = 0.0
    fps: float | None = None
    speed: float | None = None
    eta_seconds: float | None = None
    error: str | None = None
    attempt: int | None = None
    width: int | None = None
    height: int | None = None
    avg_bitrate: int | None = None
    playlist_url: str | None = None
    last_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


def event_order(stream_id: str | None) -> tuple[int, int]:
    """A stream id as a sort key; no id sorts before every id."""
    return stream_id_order(stream_id) if stream_id else (-1, -1)


def _rung(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 1 << 30, name)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class JobProgress:
    """One job as events and job views describe it.

    Rules, shared with the web page: an event older than (or equal to) the last one applied to
    the same rendition is ignored, which makes replays and duplicates harmless after a
    snapshot; a terminal state is never left; a job view (the database) is the authority on
    terminal states and the only source of URLs and sizes.
    """

    job_id: str
    state: str = "queued"
    error: str | None = None
    master_url: str | None = None
    source_key: str | None = None
    renditions: dict[str, RenditionProgress] = field(default_factory=dict)
    last_id: str | None = None  # last job-level event applied
    last_event_id: str | None = None  # newest event id seen: where a reconnect resumes
    viewed: bool = False
    # The renditions the master playlist lists while the job runs (playable early).
    ready: list[str] = field(default_factory=list)
    # Its work waiting for a slot, as `queue_line` says it; None once nothing waits.
    waiting: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in JOB_TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def ordered(self) -> list[RenditionProgress]:
        return sorted(self.renditions.values(), key=lambda r: _rung(r.name))

    def rendition(self, name: str) -> RenditionProgress:
        if name not in self.renditions:
            self.renditions[name] = RenditionProgress(name)
        return self.renditions[name]

    def failure_reason(self) -> str | None:
        if self.succeeded:
            return None
        failed = [f"{r.name}: {r.error or r.state}" for r in self.ordered() if r.error]
        reason = self.error or "; ".join(failed)
        return reason or None

    def apply_event(self, event: ProgressEvent) -> bool:
        """Apply one event of this job; True when something changed."""
        if event.job_id != self.job_id:
            return False
        if event.id and event_order(event.id) > event_order(self.last_event_id):
            self.last_event_id = event.id
        if event.chunk is not None:
            return False  # one chunk's: the rendition's own event carries the aggregate
        if event.rendition is None or event.rendition == JOB_FIELD:
            if event.id and self.last_id and event_order(event.id) <= event_order(self.last_id):
                return False
            # An end is not left again, but for a redrive (`reopened`).
            if self.finished and event.state not in JOB_TERMINAL_STATES and not event.reopened:
                return False
            self.last_id = event.id or self.last_id
            self.state = event.state
            self.error = None if event.reopened else event.error or self.error
            if event.ready is not None:  # "rendition.ready"
                self.ready = list(event.ready)
            return True
        rend = self.rendition(event.rendition)
        if event.id and rend.last_id and event_order(event.id) <= event_order(rend.last_id):
            return False
        if rend.finished and event.state not in TERMINAL_STATES and not event.reopened:
            return False
        rend.last_id = event.id or rend.last_id
        rend.state = event.state
        if event.state == "succeeded":
            rend.percent = 100.0
        elif event.percent > 0 or event.state not in _NO_PROGRESS:
            # A failure reported by someone else (the sweeper, the callback) carries no
            # percent: keep how far the attempt got.
            rend.percent = event.percent
        rend.fps = event.fps
        rend.speed = event.speed
        rend.eta_seconds = 0.0 if event.state == "succeeded" else event.eta_seconds
        rend.error = event.error
        rend.attempt = event.attempt if event.attempt is not None else rend.attempt
        if self.state == "queued" and event.state == "running":
            self.state = "running"
        return True

    def apply_snapshot(self, jobs: Mapping[str, Any]) -> int:
        """A snapshot message's `jobs`; only this job's entries are used. Returns how many
        events changed something."""
        changed = 0
        fields = jobs.get(self.job_id)
        if not isinstance(fields, Mapping):
            return 0
        for name, raw in fields.items():
            if not isinstance(raw, Mapping):
                continue
            data = dict(raw)
            data.setdefault("job_id", self.job_id)
            data["rendition"] = None if name == JOB_FIELD else data.get("rendition") or name
            try:
                event = ProgressEvent.model_validate(data)
            except ValidationError:
                log.debug("ignoring a malformed snapshot entry %r", name)
                continue
            changed += self.apply_event(event)
        return changed

    def apply_view(self, view: Mapping[str, Any]) -> None:
        """A job view from the status function (Pipeline.describe_job)."""
        if str(view.get("id")) != self.job_id:
            return
        self.viewed = True
        state = str(view.get("state") or self.state)
        if state in JOB_TERMINAL_STATES or not self.finished:
            rank = {"queued": 0, "running": 1}
            if state in JOB_TERMINAL_STATES or rank.get(state, 0) >= rank.get(self.state, 0):
                self.state = state
        self.error = view.get("error") or self.error
        self.master_url = (view.get("urls") or {}).get("master") or self.master_url
        if isinstance(view.get("ready"), list) and len(view["ready"]) >= len(self.ready):
            self.ready = [str(name) for name in view["ready"]]
        self.source_key = (view.get("source") or {}).get("key") or self.source_key
        self.waiting = queue_line(view) if not self.finished else None
        for item in view.get("renditions") or []:
            rend = self.rendition(str(item["name"]))
            rend.width = item.get("width") or rend.width
            rend.height = item.get("height") or rend.height
            rend.avg_bitrate = item.get("avg_bitrate") or rend.avg_bitrate
            rend.playlist_url = (item.get("urls") or {}).get("playlist") or rend.playlist_url
            if item.get("attempts") and rend.attempt is None:
                rend.attempt = int(item["attempts"])
            live = item.get("progress")
            if isinstance(live, Mapping):
                data = {**live, "job_id": self.job_id, "rendition": rend.name}
                try:
                    self.apply_event(ProgressEvent.model_validate(data))
                except ValidationError:
                    log.debug("ignoring malformed progress in the view of %s", rend.name)
            row_state = str(item.get("state") or rend.state)
            if row_state in TERMINAL_STATES:
                rend.state = row_state
                rend.error = item.get("error") or rend.error
                if row_state == "succeeded":
                    rend.percent, rend.eta_seconds = 100.0, 0.0
            elif rend.last_id is None and not rend.finished:
                rend.state = row_state
                rend.error = item.get("error")


@dataclass(frozen=True)
class BarRow:
    """What one progress bar shows for one rendition."""

    name: str
    percent: float
    state: str
    fps: str
    speed: str
    eta: str
    error: str | None


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0, round(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def bar_rows(job: JobProgress) -> list[BarRow]:
    """Per-rendition bar contents, smallest rung first. Rates show only while running."""
    rows = []
    for r in job.ordered():
        running = r.state == "running"
        fps, speed = _finite(r.fps), _finite(r.speed)
        state = r.state + (f" (attempt {r.attempt})" if r.attempt and r.attempt > 1 else "")
        rows.append(
            BarRow(
                name=r.name,
                percent=100.0 if r.state == "succeeded" else max(0.0, min(100.0, r.percent)),
                state=state,
                # A sound track's encode reports 0 fps (it has no frames): none shown.
                fps=f"{fps:.0f} fps" if running and fps else "",
                speed=f"{speed:.2f}x" if running and speed is not None else "",
                eta=f"ETA {format_eta(r.eta_seconds)}"
                if running and r.eta_seconds is not None
                else "",
                error=r.error,
            )
        )
    return rows


def queue_line(view: Mapping[str, Any]) -> str | None:
    """ "waiting: 3 jobs ahead, starts in about 40 s" for a job whose work waits for a slot
    (vtp.jobs.scheduling), with its priority when not normal; None otherwise."""
    queue = view.get("queue")
    if not queue:
        return None
    priority = view.get("priority")
    named = PRIORITY_NAMES.get(int(priority or 50), str(priority))
    extra = f" (priority {named})" if named != "normal" else ""
    if queue.get("in_flight"):
        return f"{queue['in_flight']} running or queued, {queue.get('waiting', 0)} waiting{extra}"
    ahead = int(queue.get("ahead") or 0)
    text = f"waiting: {ahead} job{'s' if ahead != 1 else ''} ahead"
    if queue.get("start_in_s") is not None:
        text += f", starts in about {max(1, round(float(queue['start_in_s'])))} s"
    return text + extra
