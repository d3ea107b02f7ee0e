"""Live progress events in Redis: what transcode publishes and ws-relay / status consume.

Wire format: one JSON object per event (`ProgressEvent`), e.g.

    {"id": "1732560000000-0", "job_id": "6f1c...", "rendition": "720p", "state": "running",
     "percent": 42.5, "fps": 61.0, "speed": 2.03, "eta_seconds": 11.3,
     "out_time_seconds": 25.5, "attempt": 1, "error": null, "ts": 1732560000.123}

`rendition` is null for job-level events (the finalizer announces the job's end that way).
`state` is a JobState value for job-level events and a RenditionState value otherwise.
`percent` never goes down within an attempt and is 100 only once the rendition succeeded.
While a rendition is running its reporter publishes at least once a second even when ffmpeg
is silent, so a client that hears nothing for several seconds may assume the worker is gone.

Where events live (names from `vtp.keys.RedisKeys`):

- stream `<prefix>:events` (XADD, MAXLEN ~ 100000): every event of every job, each with its
  stream id, which is the event's `id`. Fields: `job` (job id) and `data` (JSON without id).
- hash `<prefix>:job:<job id>:progress`: rendition name -> latest event JSON (with id); the
  job-level event is under "_job". Expires `progress_ttl_s` after the job's last event.
- channel `<prefix>:progress` (PUBLISH): the event JSON with its id, as it happens.

The three writes happen in one Lua script, so they are atomic and the published JSON already
carries the stream id (a MULTI could not feed XADD's id into the other two commands).

How a consumer (ws-relay) should follow a job without gaps or duplicates:

1. SUBSCRIBE to `EventBus.channel` first and buffer what arrives;
2. send the snapshot `EventBus.current(job_id)` (or, on a reconnect with a Last-Event-ID,
   the replay `EventBus.since(last_id, job_id)`);
3. then forward live events for the job, dropping any whose id is not after the last id sent
   (compare with `stream_id_order`). Ids increase across the whole stream.

If `since` is asked for an id older than the stream still holds (it is capped), the replay
starts at the oldest retained event; `current` still gives every rendition's latest state.
Redis Cluster is not supported: the script touches two keys that need not share a slot.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vtp.errors import InvalidRequest
from vtp.keys import RedisKeys
from vtp.models import JobState, RenditionState, TaskState

if TYPE_CHECKING:
    from vtp.jobs.models import Job, Rendition, Task

log = logging.getLogger(__name__)

JOB_FIELD = "_job"  # field of the job-level event in the per-job progress hash
STREAM_MAXLEN = 100_000
_STATES = {s.value for s in JobState} | {s.value for s in RenditionState}
_STREAM_ID = re.compile(r"^\d+(-\d+)?$")

# KEYS: stream, per-job hash. ARGV: maxlen, job id, event JSON without id (an object with
# at least one member), hash field, hash TTL seconds, channel.
_PUBLISH_LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'job', ARGV[2], 'data', ARGV[3])
local full = '{"id":"' .. id .. '",' .. string.sub(ARGV[3], 2)
redis.call('HSET', KEYS[2], ARGV[4], full)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], full)
return id
"""


def progress_field(rendition: str, chunk: int | None = None) -> str:
    """A rendition's field in a job's progress hash, or one chunk's (`360p#3`)."""
    return rendition if chunk is None else f"{rendition}#{chunk}"


class ProgressEvent(BaseModel):
    """One progress or state-change event of a rendition (or of the job when rendition is None)."""

    model_config = ConfigDict(frozen=True)

    id: str | None = Field(default=None, description="Redis stream id, set by publish")
    job_id: str
    rendition: str | None = None
    state: str
    percent: float = Field(default=0.0, ge=0.0, le=100.0)
    fps: float | None = None
    speed: float | None = None
    eta_seconds: float | None = None
    out_time_seconds: float | None = None
    attempt: int | None = None
    error: str | None = None
    # A chunk's own progress (vtp.media.chunks): the number of the chunk and its share of the
    # rendition, in source seconds. Clients draw these as the segments of the rendition's
    # bar; the rendition's own event (no chunk) carries the aggregate.
    chunk: int | None = Field(default=None, ge=0)
    chunk_seconds: float | None = Field(default=None, gt=0)
    # Taken out of its end by an operator's redrive: clients, which never leave an end
    # otherwise (late or replayed events), take this one.
    reopened: bool = False
    # A job event that is not a transition: "rendition.ready" when the master playlist was
    # rewritten with more renditions (`ready`: all it lists) while the job runs.
    kind: str | None = None
    ready: list[str] | None = None
    ts: float = Field(default_factory=time.time, description="epoch seconds")

    @property
    def field(self) -> str:
        """Its field in the job's progress hash: the latest event of each rendition, of
        each chunk (`360p#3`), and of the job."""
        if self.rendition is None:
            return JOB_FIELD
        return progress_field(self.rendition, self.chunk)

    @classmethod
    def of_task(cls, task: Task) -> ProgressEvent:
        """The event a task's transition publishes, from the row the store returned: its
        rendition's new state, the attempt and reason (a failure carries no percent)."""
        state = task.rendition_state or RenditionState(task.state.value)
        return cls(
            job_id=str(task.job_id),
            rendition=task.rendition,
            state=state.value,
            percent=100.0 if state is RenditionState.SUCCEEDED else 0.0,
            attempt=task.attempts or None,
            error=task.error,
        )

    @classmethod
    def of_rendition(cls, rend: Rendition, *, reopened: bool = False) -> ProgressEvent:
        """The event of a rendition as it is (a job's start announces each one)."""
        return cls(
            job_id=str(rend.job_id),
            rendition=rend.name,
            state=rend.state.value,
            percent=100.0 if rend.state is RenditionState.SUCCEEDED else 0.0,
            attempt=rend.attempts or None,
            error=rend.error,
            reopened=reopened,
        )

    @classmethod
    def of_chunk(cls, task: Task, *, reopened: bool = False) -> ProgressEvent:
        """The event of one chunk as it is (a redrive announces each one it queued)."""
        return cls(
            job_id=str(task.job_id),
            rendition=task.rendition,
            chunk=task.chunk,
            chunk_seconds=(task.end_s - task.start_s)
            if task.start_s is not None and task.end_s is not None
            else None,
            state=task.state.value,
            percent=100.0 if task.state is TaskState.SUCCEEDED else 0.0,
            attempt=task.attempts or None,
            error=task.error,
            reopened=reopened,
        )

    @classmethod
    def of_job(cls, job: Job, *, reopened: bool = False) -> ProgressEvent:
        """The event a job's transition publishes."""
        return cls(
            job_id=str(job.id),
            state=job.state.value,
            percent=100.0 if job.state is JobState.SUCCEEDED else 0.0,
            error=job.error,
            reopened=reopened,
        )

    @field_validator("job_id", mode="before")
    @classmethod
    def _job_id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, UUID) else value

    @field_validator("state", mode="before")
    @classmethod
    def _known_state(cls, value: Any) -> Any:
        text = str(value)
        if text not in _STATES:
            raise ValueError(f"unknown state {text!r}")
        return text


def stream_id_order(stream_id: str) -> tuple[int, int]:
    """Sort key for stream ids ("ms-seq"): `a` is newer than `b` iff order(a) > order(b)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EventBus:
    """Publishes and reads progress events. Works with or without decode_responses."""

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str,
        *,
        progress_ttl_s: int = 7 * 24 * 3600,
        maxlen: int = STREAM_MAXLEN,
    ) -> None:
        self.redis = redis_client
        self.keys = RedisKeys(prefix)
        self.progress_ttl_s = progress_ttl_s
        self.maxlen = maxlen
        self._script = redis_client.register_script(_PUBLISH_LUA)

    @property
    def channel(self) -> str:
        """The pub/sub channel carrying every event as JSON (with its id)."""
        return self.keys.progress_channel

    def publish(self, event: ProgressEvent) -> ProgressEvent:
        """Append, remember as latest and broadcast `event` atomically; return it with its id."""
        data = event.model_dump_json(exclude={"id"})
        stream_id = self._script(
            keys=[self.keys.events_stream, self.keys.job_progress(event.job_id)],
            args=[
                self.maxlen,
                event.job_id,
                data,
                event.field,
                self.progress_ttl_s,
                self.channel,
            ],
        )
        return event.model_copy(update={"id": _text(stream_id)})

    def current(self, job_id: UUID | str) -> dict[str, ProgressEvent]:
        """Latest event per rendition of a job (job-level under "_job"), for late joiners."""
        raw = cast(dict[Any, Any], self.redis.hgetall(self.keys.job_progress(job_id)))
        return {
            _text(field): ProgressEvent.model_validate_json(_text(value))
            for field, value in raw.items()
        }

    def since(
        self, last_id: str, job_id: UUID | str | None = None, limit: int = 1000
    ) -> list[ProgressEvent]:
        """Events after `last_id` ("0" for everything retained), oldest first, at most `limit`;
        only the given job's when `job_id` is set. Raises InvalidRequest for a malformed id."""
        if not _STREAM_ID.match(last_id):
            raise InvalidRequest(f"not a stream id: {last_id!r}")
        want = str(job_id) if job_id is not None else None
        limit = max(1, limit)
        batch = max(100, min(limit, 1000)) if want is None else 1000
        found: list[ProgressEvent] = []
        start = f"({last_id}"
        while len(found) < limit:
            entries = cast(
                list[tuple[Any, dict[Any, Any]]],
                self.redis.xrange(self.keys.events_stream, min=start, max="+", count=batch),
            )
            if not entries:
                break
            for entry_id, fields in entries:
                fields = {_text(k): _text(v) for k, v in fields.items()}
                if want is not None and fields.get("job") != want:
                    continue
                event = ProgressEvent.model_validate_json(fields["data"])
                found.append(event.model_copy(update={"id": _text(entry_id)}))
                if len(found) >= limit:
                    break
            if len(entries) < batch:
                break
            start = f"({_text(entries[-1][0])}"
        return found

    @staticmethod
    def parse(message: str | bytes) -> ProgressEvent:
        """An event from a pub/sub message payload."""
        return ProgressEvent.model_validate_json(message)


class ProgressReporter:
    """Turns ffmpeg progress samples of one rendition attempt into rate-limited events.

    `sample()` only records (it never touches Redis, so the loop reading ffmpeg's output can
    never stall on the network); a daemon thread publishes the latest sample at most every
    `min_interval_s` (~4/s), and re-publishes it every `keepalive_s` while the rendition is
    running even when ffmpeg says nothing (long GOPs, slow seeks), which is what tells
    clients the worker is alive. `state()` publishes each state change at once, in order with
    the samples. Redis errors are logged and swallowed: progress is a view, PostgreSQL holds
    the truth, and a Redis outage must not fail a transcode.
    """

    def __init__(
        self,
        bus: EventBus,
        job_id: UUID | str,
        rendition: str,
        attempt: int,
        duration_s: float,
        *,
        min_interval_s: float = 0.25,
        keepalive_s: float = 0.75,
        clock: Callable[[], float] = time.monotonic,
        chunk: int | None = None,
        chunk_lengths: Sequence[float] = (),
    ) -> None:
        """`chunk`, `chunk_lengths`: this reporter is one chunk's (vtp.media.chunks), of a rendition
        whose chunks last `chunk_lengths` seconds each. It publishes its own progress as the
        chunk's event, then the rendition's, aggregated over the latest event of every
        chunk: percent weighted by length, fps and speed summed over the chunks running, and
        the ETA of the work left at that speed."""
        if chunk is not None and not 0 <= chunk < len(chunk_lengths):
            raise ValueError(f"chunk {chunk} is not one of {len(chunk_lengths)}")
        self.chunk = chunk
        self.chunk_lengths = list(chunk_lengths)
        self._rendition_state: RenditionState | None = None
        self.bus = bus
        self.job_id = str(job_id)
        self.rendition = rendition
        self.attempt = attempt
        self.duration_s = duration_s
        self.min_interval_s = min_interval_s
        self.keepalive_s = keepalive_s
        self._clock = clock
        self._cond = threading.Condition()
        self._publish_lock = threading.Lock()  # publish order == snapshot order
        self._state = RenditionState.QUEUED
        self._percent = 0.0
        self._out_time: float | None = None
        self._fps: float | None = None
        self._speed: float | None = None
        self._eta: float | None = None
        self._error: str | None = None
        self._dirty = False
        self._last_publish = -math.inf
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._ffmpeg: dict[str, str] = {}
        self.published = 0
        self.last_event: ProgressEvent | None = None

    # --- input ---------------------------------------------------------------------------

    def sample(
        self, out_time_s: float | None, fps: float | None = None, speed: float | None = None
    ) -> None:
        """Record one ffmpeg progress sample (media seconds written, frames/s, realtime x)."""
        with self._cond:
            if out_time_s is not None and math.isfinite(out_time_s) and out_time_s >= 0:
                self._out_time = max(self._out_time or 0.0, out_time_s)
                if self.duration_s > 0:
                    # 100 is kept for "succeeded": the muxer and upload still follow the
                    # last frame.
                    percent = min(99.9, 100.0 * self._out_time / self.duration_s)
                    self._percent = max(self._percent, percent)
            if fps is not None and math.isfinite(fps) and fps >= 0:
                self._fps = fps
            if speed is not None and math.isfinite(speed) and speed > 0:
                self._speed = speed
            if self._speed and self._out_time is not None:
                remaining = max(0.0, self.duration_s - self._out_time)
                self._eta = remaining / self._speed
            self._dirty = True
            self._cond.notify_all()

    def feed(self, line: str) -> None:
        """Feed one line of `ffmpeg -progress pipe:1` output (key=value; a block ends with
        `progress=continue|end`, which turns the block into a sample)."""
        key, sep, value = line.strip().partition("=")
        if not sep:
            return
        if key != "progress":
            self._ffmpeg[key] = value.strip()
            return
        block, self._ffmpeg = self._ffmpeg, {}
        self.sample(_ffmpeg_out_time(block), _number(block.get("fps")), _speed(block))

    def state(
        self,
        state: RenditionState | str,
        *,
        error: str | None = None,
        rendition: RenditionState | str | None = None,
    ) -> None:
        """Publish a state change now. `running` starts the keep-alive thread; a terminal
        state stops it (succeeded also sets percent to 100 and ETA to 0). A chunk's reporter
        is given its task's state, and its rendition's as `rendition`."""
        new = RenditionState(state)
        with self._publish_lock:
            with self._cond:
                self._state = new
                self._error = error
                if rendition is not None:
                    self._rendition_state = RenditionState(rendition)
                if new is RenditionState.SUCCEEDED:
                    self._percent = 100.0
                    self._eta = 0.0
                    if self._out_time is None or self._out_time < self.duration_s:
                        self._out_time = self.duration_s
                event = self._snapshot()
                self._cond.notify_all()
            self._send(event)
        if new is RenditionState.RUNNING:
            self._ensure_thread()
        elif new.terminal:
            self.close()

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the keep-alive thread (idempotent). Does not publish anything."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def percent(self) -> float:
        with self._cond:
            return self._percent

    # --- internals ------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(
                target=self._loop,
                name=f"progress-{self.rendition}",
                daemon=True,
            )
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped or self._state is not RenditionState.RUNNING:
                    return
                wait = self._wait_time()
                if wait > 0:
                    self._cond.wait(timeout=max(0.01, wait))
                    continue
            with self._publish_lock:
                with self._cond:
                    # Re-check: state() may have published (or ended the run) in between.
                    if self._stopped or self._state is not RenditionState.RUNNING:
                        return
                    if self._wait_time() > 0:
                        continue
                    event = self._snapshot()
                # Only the publish lock is held here, so sample() never waits on Redis.
                self._send(event)

    def _wait_time(self) -> float:
        """Seconds until the next publish is due (<= 0: now); caller holds `_cond`."""
        since = self._clock() - self._last_publish
        wait = self.keepalive_s - since
        if self._dirty:
            wait = min(wait, self.min_interval_s - since)
        return wait

    def _snapshot(self) -> ProgressEvent:
        """Build the event from the current values; caller holds `_cond`."""
        self._dirty = False
        self._last_publish = self._clock()
        return ProgressEvent(
            job_id=self.job_id,
            rendition=self.rendition,
            state=self._state.value,
            percent=round(self._percent, 2),
            fps=self._fps,
            speed=self._speed,
            eta_seconds=round(self._eta, 2) if self._eta is not None else None,
            out_time_seconds=round(self._out_time, 3) if self._out_time is not None else None,
            attempt=self.attempt,
            error=self._error,
            chunk=self.chunk,
            chunk_seconds=self.chunk_lengths[self.chunk] if self.chunk is not None else None,
        )

    def _send(self, event: ProgressEvent) -> None:
        try:
            self.last_event = self.bus.publish(event)
            self.published += 1
            if self.chunk is not None:
                self.bus.publish(self._aggregate(event))
        except redis.RedisError as exc:
            log.warning("could not publish progress of %s/%s: %s", self.job_id, self.rendition, exc)

    def _aggregate(self, own: ProgressEvent) -> ProgressEvent:
        """The rendition's event from the latest event of each of its chunks (this one's
        being `own`); chunks not heard from count as not started."""
        current = self.bus.current(self.job_id)
        latest = {
            e.chunk: e
            for e in current.values()
            if e.rendition == self.rendition and e.chunk is not None
        } | {own.chunk: own}
        total = sum(self.chunk_lengths) or 1.0
        done = left = fps = speed = 0.0
        for i, length in enumerate(self.chunk_lengths):
            e = latest.get(i)
            share = 100.0 if e is not None and e.state == RenditionState.SUCCEEDED else (
                e.percent if e is not None else 0.0)  # fmt: skip
            done += length * share / 100
            left += length * (1 - share / 100)
            if e is not None and e.state == RenditionState.RUNNING:
                fps += e.fps or 0.0
                speed += e.speed or 0.0
        state = self._rendition_state or RenditionState.RUNNING
        percent = 100.0 if state is RenditionState.SUCCEEDED else min(99.9, 100 * done / total)
        return ProgressEvent(
            job_id=self.job_id,
            rendition=self.rendition,
            state=state.value,
            percent=round(percent, 2),
            fps=round(fps, 2) if fps else None,
            speed=round(speed, 3) if speed else None,
            eta_seconds=round(left / speed, 2) if speed else None,
            attempt=self.attempt,
            error=own.error if state.terminal and state is not RenditionState.SUCCEEDED else None,
        )


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:  # "N/A"
        return None
    return number if math.isfinite(number) else None


def _speed(block: dict[str, str]) -> float | None:
    return _number(block.get("speed", "").strip().removesuffix("x") or None)


def _ffmpeg_out_time(block: dict[str, str]) -> float | None:
    """Media seconds written. ffmpeg prints out_time_us, out_time_ms (also microseconds, a
    long-standing ffmpeg quirk) and out_time as HH:MM:SS.micro; any may be N/A early on."""
    for key in ("out_time_us", "out_time_ms"):
        micro = _number(block.get(key))
        if micro is not None:
            return micro / 1_000_000
    text = block.get("out_time", "")
    if text.startswith("-"):  # before the first output timestamp
        return None
    parts = text.split(":")
    if len(parts) == 3:
        try:
            hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
        except ValueError:
            return None
        return hours * 3600 + minutes * 60 + seconds
    return None
