"""`vtp`: upload a video to the pipeline, follow its job live, read job status.

    vtp upload FILE [--watch] [--key K]   put FILE into the uploads bucket (the same path as any
                                          other producer: the bucket notification starts the job)
    vtp watch JOB                         one progress bar per rendition until the job ends
    vtp status JOB [--json]               one job
    vtp jobs [--state S] [--limit N]      recent jobs

Settings come from flags, then the environment (VTP_*), then an env file: `--env-file`, or the
`.run/stack.env` that `make up` writes, found from the current directory upward.

`watch` listens to the ws-relay function: its WebSocket (VTP_WS_URL) when reachable, else
Server-Sent Events through the gateway (the OpenFaaS CE gateway strips WebSocket upgrades but
streams SSE), else polling the status function. It also polls status now and then and once at
the end, because the database, not the event stream, is the truth about a job.

The code is in layers so the parts can be tested alone: `JobProgress` turns events, snapshots
and job views into per-rendition state and `bar_rows` turns that into what a bar shows (both
pure); `SseParser` and `parse_ws_message` turn wire frames into messages (pure); the
transports and `Watcher` do the I/O; `main` is the command line.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import math
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from pydantic import BaseModel, SecretStr, ValidationError, field_validator
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from vtp.errors import InvalidRequest, NotFound, StorageError, UpstreamError, VtpError
from vtp.events import JOB_FIELD, ProgressEvent, stream_id_order
from vtp.settings import Settings
from vtp.storage import content_type_for

log = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({"succeeded", "failed", "dead"})
STATE_STYLES = {
    "queued": "grey62",
    "running": "bright_blue",
    "retrying": "yellow",
    "succeeded": "green",
    "failed": "red",
    "dead": "red",
}
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
WS_RETRIES = 4  # reopen attempts of a WebSocket that worked, before falling back to SSE
WS_STABLE_S = 30.0  # a WebSocket cut after this long was working: reopen it
ABNORMAL_CLOSE = frozenset({1002, 1006, 1011, 1015})


# --- settings ---------------------------------------------------------------------------------


class ClientConfig(BaseModel):
    """What the client needs to reach a stack; secrets stay SecretStr so they never print."""

    gateway_url: str = "http://127.0.0.1:8080"
    ws_url: str | None = None
    events_url: str | None = None
    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"
    uploads_bucket: str = "uploads"

    @field_validator("gateway_url", "s3_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("ws_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError(f"expected a ws(s) URL, got {value!r}")
        return value

    @property
    def status_url(self) -> str:
        return f"{self.gateway_url}/function/status"

    @property
    def sse_url(self) -> str:
        """SSE through the gateway: the route that works even where WebSockets do not."""
        return self.events_url or f"{self.gateway_url}/function/ws-relay/events"


_CONFIG_FIELDS = tuple(ClientConfig.model_fields)


def find_stack_env(start: Path) -> Path | None:
    """The nearest `.run/stack.env` at or above `start` (what `make up` writes)."""
    for folder in (start, *start.parents):
        candidate = folder / ".run" / "stack.env"
        if candidate.is_file():
            return candidate
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, values shell-quoted as `make up` writes them; comments ignored."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            words = shlex.split(value, comments=True)
        except ValueError as exc:
            raise InvalidRequest(f"{path}: cannot parse the value of {key.strip()}") from exc
        values[key.strip()] = " ".join(words)
    return values


def load_config(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    *,
    env_file: Path | None = None,
    cwd: Path | None = None,
) -> ClientConfig:
    """Flags beat VTP_* environment variables, which beat the env file."""
    path = env_file or find_stack_env(cwd or Path.cwd())
    if env_file is not None and not env_file.is_file():
        raise InvalidRequest(f"env file {env_file} does not exist")
    layers: list[Mapping[str, str]] = []
    if path is not None:
        log.debug("settings from %s", path)
        layers.append(read_env_file(path))
    layers.append(environ)
    values: dict[str, Any] = {}
    for layer in layers:
        for name in _CONFIG_FIELDS:
            value = layer.get(f"VTP_{name.upper()}")
            if value:
                values[name] = value
    values.update({k: v for k, v in flags.items() if v and k in _CONFIG_FIELDS})
    try:
        return ClientConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"bad settings: {problems}") from exc


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


def _order(stream_id: str | None) -> tuple[int, int]:
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

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")

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
        if event.id and _order(event.id) > _order(self.last_event_id):
            self.last_event_id = event.id
        if event.rendition is None or event.rendition == JOB_FIELD:
            if event.id and self.last_id and _order(event.id) <= _order(self.last_id):
                return False
            if self.finished and event.state not in ("succeeded", "failed"):
                return False
            self.last_id = event.id or self.last_id
            self.state = event.state
            self.error = event.error or self.error
            return True
        rend = self.rendition(event.rendition)
        if event.id and rend.last_id and _order(event.id) <= _order(rend.last_id):
            return False
        if rend.finished and event.state not in TERMINAL_STATES:
            return False
        rend.last_id = event.id or rend.last_id
        rend.state = event.state
        if event.state == "succeeded":
            rend.percent = 100.0
        elif event.percent > 0 or event.state not in ("retrying", "failed", "dead"):
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
        if state in ("succeeded", "failed") or not self.finished:
            rank = {"queued": 0, "running": 1}
            if state in ("succeeded", "failed") or rank.get(state, 0) >= rank.get(self.state, 0):
                self.state = state
        self.error = view.get("error") or self.error
        self.master_url = (view.get("urls") or {}).get("master") or self.master_url
        self.source_key = (view.get("source") or {}).get("key") or self.source_key
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
                fps=f"{fps:.0f} fps" if running and fps is not None else "",
                speed=f"{speed:.2f}x" if running and speed is not None else "",
                eta=f"ETA {format_eta(r.eta_seconds)}"
                if running and r.eta_seconds is not None
                else "",
                error=r.error,
            )
        )
    return rows


# --- wire formats (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    jobs: dict[str, Any]


@dataclass(frozen=True)
class Event:
    event: ProgressEvent


@dataclass(frozen=True)
class Tick:
    """Nothing arrived for a while (a ping, a receive timeout): time to check the clock."""


@dataclass(frozen=True)
class Opened:
    """A live transport is connected (its first message)."""

    transport: str


Message = Snapshot | Event | Tick | Opened


def _event(data: Any, fallback_id: str | None = None) -> Event | None:
    if not isinstance(data, dict):
        return None
    if fallback_id and not data.get("id"):
        data = {**data, "id": fallback_id}
    try:
        return Event(ProgressEvent.model_validate(data))
    except ValidationError:
        log.debug("ignoring a malformed event")
        return None


def parse_ws_message(text: str | bytes) -> Message | None:
    """One WebSocket text frame of the ws-relay protocol."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    if kind == "snapshot" and isinstance(data.get("jobs"), dict):
        return Snapshot(data["jobs"])
    if kind == "event":
        return _event(data.get("event"))
    if kind == "ping":
        return Tick()
    return None


class SseParser:
    """Incremental `text/event-stream` parser (the WHATWG rules the page's EventSource uses):
    fields `event`, `data` (joined by newlines), `id`; a blank line dispatches; comment lines
    (`: ping`) become ticks. Feed it text in chunks of any size."""

    def __init__(self) -> None:
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, chunk: str) -> list[Message]:
        self._buffer += chunk
        out: list[Message] = []
        while True:
            cut = min(
                (i for i in (self._buffer.find("\r"), self._buffer.find("\n")) if i >= 0),
                default=-1,
            )
            if cut < 0:
                break
            if self._buffer[cut] == "\r" and cut + 1 == len(self._buffer):
                break  # maybe half of a CRLF: wait for the next chunk
            line = self._buffer[:cut]
            step = 2 if self._buffer.startswith("\r\n", cut) else 1
            self._buffer = self._buffer[cut + step :]
            message = self._line(line)
            if message is not None:
                out.append(message)
        return out

    def _line(self, line: str) -> Message | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return Tick()
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value or None
        return None

    def _dispatch(self) -> Message | None:
        kind, data = self._event or "message", "\n".join(self._data)
        self._event, self._data = "", []
        if not data:
            return None
        try:
            payload = json.loads(data)
        except ValueError:
            return None
        if kind == "snapshot" and isinstance(payload, dict):
            jobs = payload.get("jobs")
            return Snapshot(jobs) if isinstance(jobs, dict) else None
        if kind in ("progress", "message"):
            return _event(payload, self.last_id)
        return None


# --- transports (I/O) ---------------------------------------------------------------------------


class TransportError(Exception):
    """A live transport could not open (`opened` False) or ended; `code` is the WebSocket
    close code when there was one. Internal to the watcher, which falls back on it."""

    def __init__(self, message: str, *, opened: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.opened = opened
        self.code = code


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a network failure (requests' own messages run to paragraphs)."""
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.Timeout):
        return "cannot connect"
    if isinstance(exc, requests.Timeout | TimeoutError):
        return "timed out"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def with_query(url: str, **params: str | None) -> str:
    parts = urlsplit(url)
    query = "&".join(
        q for q in (parts.query, urlencode({k: v for k, v in params.items() if v})) if q
    )
    return urlunsplit(parts._replace(query=query))


def ws_messages(
    url: str, job_id: str, last_id: str | None, *, open_timeout: float = 5.0
) -> Generator[Message, None, None]:
    """Messages from the ws-relay WebSocket: Opened, then the server's; a Tick every second of
    silence. Raises TransportError when it cannot open or when the connection ends."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
    from websockets.sync.client import connect

    target = with_query(url, job=job_id, last_id=last_id)
    try:
        conn = connect(target, open_timeout=open_timeout, close_timeout=2, max_size=8 << 20)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise TransportError(f"WebSocket {url}: {describe_error(exc)}", opened=False) from exc
    with conn:
        yield Opened("websocket")
        while True:
            try:
                frame = conn.recv(timeout=1.0)
            except TimeoutError:
                yield Tick()
                continue
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                raise TransportError(f"WebSocket closed ({code})", opened=True, code=code) from exc
            message = parse_ws_message(frame)
            if message is not None:
                yield message


def sse_messages(
    session: requests.Session,
    url: str,
    job_id: str,
    last_id: str | None,
    *,
    read_timeout: float = 40.0,
) -> Generator[Message, None, None]:
    """Messages from the ws-relay's Server-Sent Events (the server pings every 15 s, so a read
    timeout of 40 s means the stream is dead). Raises TransportError."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    params = {"job": job_id} | ({"last_id": last_id} if last_id else {})
    try:
        resp = session.get(
            url, params=params, headers=headers, stream=True, timeout=(5.0, read_timeout)
        )
    except requests.RequestException as exc:
        raise TransportError(f"SSE {url}: {describe_error(exc)}", opened=False) from exc
    with resp:
        kind = resp.headers.get("Content-Type", "")
        if resp.status_code != 200 or not kind.startswith("text/event-stream"):
            raise TransportError(
                f"SSE {url}: HTTP {resp.status_code} {kind or 'no content type'}", opened=False
            )
        yield Opened("sse")
        parser = SseParser()
        # A character may be split between chunks: decode incrementally.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            # chunk_size=None: whatever arrives, as it arrives (events are small and sparse).
            for chunk in resp.iter_content(chunk_size=None, decode_unicode=False):
                yield from parser.feed(decoder.decode(chunk))
        except requests.RequestException as exc:
            raise TransportError(f"SSE stream ended: {describe_error(exc)}", opened=True) from exc
    raise TransportError("SSE stream ended", opened=True)


# --- the status function ----------------------------------------------------------------------


class StatusClient:
    """The status function through the gateway: the database's view of jobs."""

    def __init__(self, config: ClientConfig, session: requests.Session | None = None) -> None:
        self.url = config.status_url
        self.session = session or requests.Session()

    def _get(self, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            resp = self.session.get(self.url, params=dict(params), timeout=15)
        except requests.RequestException as exc:
            raise UpstreamError(
                f"status function unreachable at {self.url}: {describe_error(exc)}"
            ) from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code == 404 and isinstance(body, dict) and "error" in body:
            raise NotFound(str(body["error"]))
        if resp.status_code != 200 or not isinstance(body, dict):
            detail = body.get("error") if isinstance(body, dict) else resp.text[:200]
            raise UpstreamError(f"status function answered HTTP {resp.status_code}: {detail}")
        return body

    def job(self, job_id: str) -> dict[str, Any]:
        return self._get({"id": job_id})

    def jobs(
        self,
        *,
        state: str | None = None,
        limit: int = 20,
        bucket: str | None = None,
        key: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {"limit": str(limit)}
        params |= {k: v for k, v in (("state", state), ("bucket", bucket), ("key", key)) if v}
        jobs = self._get(params).get("jobs", [])
        return [j for j in jobs if isinstance(j, dict)]

    def find_job(
        self, bucket: str, key: str, *, timeout: float = 60.0, every: float = 0.5
    ) -> dict[str, Any]:
        """The job of an uploaded object, once the bucket notification has created it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.jobs(bucket=bucket, key=key, limit=1)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise NotFound(f"no job for s3://{bucket}/{key} after {timeout:.0f} s")
            time.sleep(every)


# --- watching ---------------------------------------------------------------------------------


@dataclass
class WatchResult:
    job: JobProgress
    view: dict[str, Any]
    timed_out: bool
    transports: list[str]


class Watcher:
    """Follows one job to its end: WebSocket, else SSE, else polling; a status poll every
    `poll_every` seconds whatever the transport, and a last one for the final word."""

    def __init__(
        self,
        config: ClientConfig,
        job_id: str,
        *,
        status: StatusClient | None = None,
        on_change: Callable[[JobProgress], None] | None = None,
        on_transport: Callable[[str], None] | None = None,
        poll_every: float = 5.0,
        timeout: float = 3600.0,
    ) -> None:
        self.config = config
        self.status = status or StatusClient(config)
        self.session = self.status.session
        self.job = JobProgress(job_id)
        self.on_change = on_change or (lambda _job: None)
        self.on_transport = on_transport or (lambda _name: None)
        self.poll_every = poll_every
        self.timeout = timeout
        self.transports: list[str] = []  # the live transports that opened, in order
        self._view: dict[str, Any] = {}
        self._last_poll = -math.inf
        self._poll_failures = 0
        self._ws_ok = bool(config.ws_url)
        self._ws_worked = False  # a WebSocket opened at least once
        self._ws_opened_at = 0.0
        self._ws_retries = 0
        self._sse_failures = 0
        self._why = ""  # why the last transport failed, told when the next one opens
        self._announced = ""

    def run(self) -> WatchResult:
        deadline = time.monotonic() + self.timeout
        self.poll(strict=True)  # an unknown job or an unreachable gateway ends here
        while not self.job.finished and time.monotonic() < deadline:
            stream = self._open()
            if stream is None:
                self._announce("polling")
                self._sleep_polling(min(2.0 * self._sse_failures, 10.0), deadline)
                continue
            try:
                for message in stream:
                    self._apply(message)
                    if self.job.finished or time.monotonic() >= deadline:
                        break
                    if time.monotonic() - self._last_poll >= self.poll_every:
                        self.poll()
            except TransportError as exc:
                self._transport_failed(exc)
            finally:
                stream.close()
        self.poll()
        return WatchResult(self.job, self._view, not self.job.finished, self.transports)

    def poll(self, *, strict: bool = False) -> None:
        """Read the job view; failures are logged once per outage unless `strict`."""
        self._last_poll = time.monotonic()
        try:
            view = self.status.job(self.job.job_id)
        except UpstreamError as exc:
            if strict:
                raise
            self._poll_failures += 1
            level = logging.WARNING if self._poll_failures == 1 else logging.DEBUG
            log.log(level, "status poll failed: %s", exc.reason)
            return
        if self._poll_failures:
            log.info("status reachable again")
        self._poll_failures = 0
        self._view = view
        self.job.apply_view(view)
        self.on_change(self.job)

    def _apply(self, message: Message) -> None:
        changed = False
        if isinstance(message, Opened):
            self._announce(message.transport)
            if message.transport == "sse":
                self._sse_failures = 0
            else:
                self._ws_worked, self._ws_retries = True, 0
                self._ws_opened_at = time.monotonic()
        elif isinstance(message, Snapshot):
            changed = self.job.apply_snapshot(message.jobs) > 0
        elif isinstance(message, Event):
            changed = self.job.apply_event(message.event)
            if changed and message.event.rendition is None and self.job.finished:
                self.poll()  # the view carries the master URL and sizes
        if changed:
            self.on_change(self.job)

    def _open(self) -> Generator[Message, None, None] | None:
        last = self.job.last_event_id
        if self._ws_ok and self.config.ws_url:
            return ws_messages(self.config.ws_url, self.job.job_id, last)
        if self._sse_failures < 3:
            return sse_messages(self.session, self.config.sse_url, self.job.job_id, last)
        return None

    def _transport_failed(self, exc: TransportError) -> None:
        log.info("%s", exc)
        self._why = str(exc)
        if self._ws_ok and self.config.ws_url:
            # As on the page: a WebSocket that never opened, or is cut soon after opening,
            # gives way to SSE; one that worked is reopened (a server restart), a few times.
            lived = time.monotonic() - self._ws_opened_at
            if not exc.opened and self._ws_worked and self._ws_retries < WS_RETRIES:
                self._ws_retries += 1
                self._wait_polling(min(0.5 * 2**self._ws_retries, 8.0))
            elif not exc.opened or (exc.code in ABNORMAL_CLOSE and lived < WS_STABLE_S):
                self._ws_ok = False
            else:
                time.sleep(0.5)
        elif not exc.opened:
            self._sse_failures += 1
        if exc.opened:
            self._announced = ""  # say so when it (or another) opens again
            self.poll()  # catch up at once; the next transport resumes from the last id

    def _sleep_polling(self, seconds: float, deadline: float) -> None:
        """Polling only (no live transport): status every second for `seconds`, then the
        caller tries SSE once more."""
        self._wait_polling(min(max(seconds, 1.0), deadline - time.monotonic()))
        self._sse_failures = min(self._sse_failures, 2)

    def _wait_polling(self, seconds: float) -> None:
        """Wait without a live transport, keeping the bars current from status."""
        end = time.monotonic() + seconds
        while not self.job.finished and (left := end - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            self.poll()

    def _announce(self, name: str) -> None:
        if self._announced == name:
            return
        self._announced = name
        self.transports.append(name)
        self.on_transport(f"{name} ({self._why})" if self._why else name)


# --- rendering ----------------------------------------------------------------------------------


def _state_markup(state: str) -> str:
    base = state.split(" ", 1)[0]
    return f"[{STATE_STYLES.get(base, 'white')}]{escape(state)}[/]"


class BarsView:
    """Rich progress bars from a JobProgress; on a non-terminal stdout (CI logs, pipes) it also
    prints one line per state change, since bars are only drawn at the end there."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description:>7}"),
            BarColumn(bar_width=None),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[fps]:>7} {task.fields[speed]:>6} {task.fields[eta]:>10}"),
            TextColumn("{task.fields[state]}"),
            console=console,
            expand=True,
        )
        self.tasks: dict[str, TaskID] = {}
        self.states: dict[str, str] = {}
        self.lines = not console.is_terminal

    def __enter__(self) -> BarsView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, job: JobProgress) -> None:
        for row in bar_rows(job):
            if row.name not in self.tasks:
                self.tasks[row.name] = self.progress.add_task(
                    row.name, total=100, fps="", speed="", eta="", state=""
                )
            state = _state_markup(row.state)
            if row.error:
                state += f" [red]{escape(row.error)}[/]"
            self.progress.update(
                self.tasks[row.name],
                completed=row.percent,
                fps=row.fps,
                speed=row.speed,
                eta=row.eta,
                state=state,
            )
            if self.lines and self.states.get(row.name) != row.state:
                self.states[row.name] = row.state
                self.progress.console.print(f"{row.name}: {row.state}", highlight=False)


def _fmt_bitrate(bps: Any) -> str:
    return f"{bps / 1000:.0f} kb/s" if isinstance(bps, int | float) and bps else "-"


def renditions_table(view: Mapping[str, Any], title: str | None = None) -> Table:
    """One row per rendition; URLs are printed apart (`print_urls`) so they stay whole."""
    table = Table(title=title, title_justify="left")
    for col in ("rendition", "size", "state", "progress", "bitrate", "attempts"):
        table.add_column(col, overflow="fold")
    for r in view.get("renditions") or []:
        live = r.get("progress") or {}
        pct = 100.0 if r.get("state") == "succeeded" else float(live.get("percent") or 0)
        state = str(r.get("state"))
        if r.get("error"):
            state += f" ({r['error']})"
        table.add_row(
            str(r.get("name")),
            f"{r.get('width')}x{r.get('height')}",
            _state_markup(state),
            f"{pct:.1f}%",
            _fmt_bitrate(r.get("avg_bitrate")),
            str(r.get("attempts") or "-"),
        )
    return table


def print_urls(console: Console, view: Mapping[str, Any]) -> None:
    """Output URLs one per line, never wrapped, so that they can be copied."""
    urls = view.get("urls") or {}
    rows = [("master playlist", urls.get("master")), ("poster", urls.get("poster"))]
    for r in view.get("renditions") or []:
        for kind in ("playlist", "mp4"):
            rows.append((f"{r.get('name')} {kind}", (r.get("urls") or {}).get(kind)))
    for label, url in rows:
        if url:
            console.print(f"{label + ':':<17}{url}", soft_wrap=True, highlight=False)


def _when(value: Any) -> str:
    return str(value or "").replace("T", " ")[:19]


def print_job(console: Console, view: Mapping[str, Any]) -> None:
    source = view.get("source") or {}
    console.print(f"job [bold]{view.get('id')}[/]  {_state_markup(str(view.get('state')))}")
    if source:
        where = f"s3://{source.get('bucket')}/{escape(str(source.get('key')))}"
        console.print(f"{'source:':<17}{where}", soft_wrap=True)
    for label, key in (("created", "created_at"), ("finished", "finished_at")):
        if view.get(key):
            console.print(f"{label + ':':<17}{_when(view[key])}")
    if view.get("error"):
        console.print(f"[red]{'error:':<17}[/]{escape(str(view['error']))}")
    console.print(renditions_table(view))
    print_urls(console, view)


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    """Compact enough for 80 columns: the id stays whole (it is for copying), the source key
    goes under it, renditions are counted as done/total."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("job / source", overflow="fold", min_width=36)
    table.add_column("state", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("done", no_wrap=True, justify="right")
    for j in jobs:
        rends = j.get("renditions") or []
        done = sum(1 for r in rends if r.get("state") in TERMINAL_STATES)
        key = escape(str((j.get("source") or {}).get("key", "")))
        table.add_row(
            f"{j.get('id')}\n[dim]{key}[/]",
            _state_markup(str(j.get("state"))),
            _when(j.get("created_at")),
            f"{done}/{len(rends)}",
        )
    return table


# --- commands -------------------------------------------------------------------------------------


def _video_suffixes() -> list[str]:
    default: list[str] = Settings.model_fields["video_suffixes"].get_default(
        call_default_factory=True
    )
    return default


def default_key(path: Path) -> str:
    """`cli/<random>/<file name>`: unique, and the file name stays readable in job lists."""
    return f"cli/{uuid.uuid4().hex[:12]}/{path.name}"


def upload_file(config: ClientConfig, path: Path, key: str) -> None:
    """Put the file into the uploads bucket with the minio SDK; its notification starts the
    job exactly as for any other producer."""
    from minio import Minio

    parts = urlsplit(config.s3_endpoint)
    client = Minio(
        parts.netloc,
        access_key=config.s3_access_key.get_secret_value(),
        secret_key=config.s3_secret_key.get_secret_value(),
        secure=parts.scheme == "https",
        region=config.s3_region,
    )
    try:
        client.fput_object(
            config.uploads_bucket, key, str(path), content_type=content_type_for(path.name)
        )
    except Exception as exc:  # S3Error, urllib3 connection errors
        raise StorageError(f"cannot upload to s3://{config.uploads_bucket}/{key}: {exc}") from exc


def watch_job(
    config: ClientConfig, job_id: str, console: Console, *, timeout: float, status: StatusClient
) -> int:
    with BarsView(console) as bars:
        watcher = Watcher(
            config,
            job_id,
            status=status,
            on_change=bars.update,
            on_transport=lambda name: bars.progress.console.print(f"[dim]live updates: {name}[/]"),
            timeout=timeout,
        )
        result = watcher.run()
        bars.update(result.job)
    view = result.view
    console.print(renditions_table(view, title=f"job {job_id}: {view.get('state')}"))
    if result.timed_out:
        console.print(f"[yellow]job {job_id} is still {result.job.state} after {timeout:.0f} s[/]")
        return EXIT_ERROR
    if not result.job.succeeded:
        reason = result.job.failure_reason() or "no reason recorded"
        console.print(f"[red]job failed:[/] {escape(reason)}")
        return EXIT_FAILED
    print_urls(console, view)
    return EXIT_OK


def cmd_upload(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise InvalidRequest(f"{path} is not a file")
    key = args.key or default_key(path)
    if not key.lower().endswith(tuple(_video_suffixes())):
        console.print(f"[yellow]warning: {escape(key)} has no video suffix; no job may start[/]")
    upload_file(config, path, key)
    console.print(f"uploaded [bold]s3://{config.uploads_bucket}/{escape(key)}[/]")
    status = StatusClient(config)
    job = status.find_job(config.uploads_bucket, key, timeout=args.find_timeout)
    console.print(f"job [bold]{job['id']}[/] ({job['state']})")
    if not args.watch:
        return EXIT_OK
    return watch_job(config, str(job["id"]), console, timeout=args.timeout, status=status)


def cmd_watch(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    status = StatusClient(config)
    return watch_job(config, args.job, console, timeout=args.timeout, status=status)


def cmd_status(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    view = StatusClient(config).job(args.job)
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
    else:
        print_job(console, view)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    jobs = StatusClient(config).jobs(state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps({"jobs": jobs}, indent=2, sort_keys=True))
    elif not jobs:
        console.print("no jobs")
    else:
        console.print(jobs_table(jobs))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    # Shared flags are accepted before or after the command; SUPPRESS keeps a subcommand's
    # absent flag from overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (flags > VTP_* environment > env file)")
    group.add_argument("--env-file", type=Path, default=argparse.SUPPRESS,
                       help="settings file (default: .run/stack.env from here upward)")  # fmt: skip
    group.add_argument("--gateway-url", default=argparse.SUPPRESS, help="VTP_GATEWAY_URL")
    group.add_argument("--ws-url", default=argparse.SUPPRESS, help="VTP_WS_URL (ws-relay /ws)")
    group.add_argument("--events-url", default=argparse.SUPPRESS,
                       help="SSE URL (default <gateway>/function/ws-relay/events)")  # fmt: skip
    group.add_argument("--s3-endpoint", default=argparse.SUPPRESS, help="VTP_S3_ENDPOINT")
    group.add_argument("--uploads-bucket", default=argparse.SUPPRESS, help="VTP_UPLOADS_BUCKET")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="vtp",
        description="Upload videos to the transcoding pipeline and follow their jobs.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("upload", parents=[common], help="upload a file to the uploads bucket")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--key", help="object key (default cli/<random>/<file name>)")
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p.add_argument("--find-timeout", type=float, default=60.0,
                   help="seconds to wait for the job to appear (default 60)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600.0, help="watch at most this long")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("watch", parents=[common], help="follow a job live until it ends")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--timeout", type=float, default=3600.0, help="watch at most this long")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", parents=[common], help="show one job")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--json", action="store_true", help="print the job view as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("jobs", parents=[common], help="list recent jobs")
    p.add_argument("--state", choices=["queued", "running", "succeeded", "failed"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", 0) or 0
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    console = Console(highlight=False)
    flags = {
        name: getattr(args, name, None)
        for name in ("gateway_url", "ws_url", "events_url", "s3_endpoint", "uploads_bucket")
    }
    try:
        config = load_config(flags, os.environ, env_file=getattr(args, "env_file", None))
        code: int = args.func(args, config, console)
    except VtpError as exc:
        Console(stderr=True).print(f"[red]vtp {args.command}:[/] {escape(exc.reason)}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
