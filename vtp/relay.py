"""ws-relay's core: live progress events fanned out to WebSocket and Server-Sent Events clients.

The wire protocol (routes, frames, resume rules) is the ws-relay contract; in short: a client
follows one job or every job, receives a snapshot of the current state first, then every event
in stream-id order, pings in silences, and may resume after a disconnect with the last id it
saw (`?last_id=` or `Last-Event-ID`) without a gap or a duplicate.

How it stays cheap and correct with hundreds of clients per process:

* ONE Redis pub/sub subscription per process (`Hub`), fanned out in the event loop to every
  client. An event is parsed once and its WebSocket / SSE frames are built once, then shared.
* Each client has a bounded outbox (`Outbox`, 1000 events by default). The hub only ever
  appends (never awaits a client), so a slow client cannot delay anyone else: when its outbox
  is full it is cut off (WebSocket close 1013, or the SSE stream ends) and resumes later with
  its last id, from the Redis stream. A send that blocks longer than `send_timeout_s` cuts
  the client off too. No thread per connection; two small tasks each.
* Gap-free joins follow vtp.events: the client is registered with the hub (subscribed) BEFORE
  its snapshot or replay is read, and afterwards only events with an id after the last one it
  was given are sent. For one job the snapshot is `EventBus.current` (one HGETALL, atomic; its
  newest id is the watermark). For every job, the recent job ids come from a scan of the
  stream's tail, then a short Lua script adds the jobs of events published since the scan and
  reads all their hashes at one instant, so the snapshot and its watermark (the stream's last
  id) agree exactly.
* If the subscription breaks, events may have been missed: every client is cut off with 1013
  (they resume from the stream) rather than silently given a gap.

The JSON API (`/api/...`) reads PostgreSQL through `Pipeline`, built lazily per process; its
calls are blocking and run in the threadpool, as do the blocking Redis reads of snapshots and
replays (short, one-off calls; the long-lived work is all in the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, cast

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from vtp.errors import Forbidden, InvalidRequest
from vtp.events import EventBus, ProgressEvent, stream_id_order
from vtp.http import error_response
from vtp.models import JobState
from vtp.pipeline import Pipeline
from vtp.settings import Settings
from vtp.storage import Storage, content_type_for

log = logging.getLogger(__name__)

Order = tuple[int, int]  # a stream id as a sort key (see vtp.events.stream_id_order)
ZERO: Order = (0, 0)
ALL = "all"
_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
_MIME = re.compile(r"^[A-Za-z0-9][\w.+-]{0,63}/[A-Za-z0-9][\w.+-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
REPLAY_PAGE = 500
SSE_RETRY_MS = 2000


class RelayOptions(BaseSettings):
    """Tunables of the relay (environment `RELAY_<NAME>`); the defaults suit production."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    queue_size: int = Field(default=1000, ge=1)
    ping_interval_s: float = Field(default=15.0, gt=0)
    # A single send blocked this long means the client stopped reading: cut it off.
    send_timeout_s: float = Field(default=10.0, gt=0)
    # How long a close frame / the end of an SSE stream may wait for a congested socket.
    close_timeout_s: float = Field(default=30.0, gt=0)
    # How long a new client waits for the Redis subscription (at start, after a reconnect).
    ready_timeout_s: float = Field(default=5.0, gt=0)
    all_max_jobs: int = Field(default=50, ge=1)
    all_window_s: float = Field(default=3600.0, gt=0)
    # At most this many stream entries are scanned to find the recent jobs of an "all" view.
    all_max_scan: int = Field(default=20_000, ge=1)
    # The page's upload form hands out presigned PUT URLs to whoever reaches the function;
    # turn it off where the function is reachable by people who should not upload.
    uploads_enabled: bool = True


# --- small pieces ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Close:
    """Why a client's stream ends, and the WebSocket close code that says so (None: no close
    frame is sent because the client is already gone)."""

    code: int | None
    reason: str


DISCONNECTED = Close(None, "client went away")
OVERFLOW = Close(1013, "too slow: reconnect with last_id")
SEND_TIMEOUT = Close(1013, "too slow: reconnect with last_id")
FEED_LOST = Close(1013, "event feed interrupted: reconnect with last_id")
NOT_READY = Close(1013, "event feed not ready: try again")
SHUTDOWN = Close(1012, "server restarting: reconnect with last_id")
ERROR = Close(1011, "internal error")
BAD_REQUEST = 1008  # WebSocket close code for invalid parameters (policy violation)


def parse_follow(value: str | None) -> str | None:
    """The job a client follows: a canonical job id, or None for every job ("all" / empty)."""
    if value is None or value.strip() in ("", ALL):
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError as exc:
        raise InvalidRequest(f"job must be a job id or {ALL!r}, got {value[:80]!r}") from exc


def parse_last_id(value: str | None) -> str | None:
    """A resume point: a stream id ("1732560000000-3" or "1732560000000"), or None."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not _STREAM_ID.match(value):
        raise InvalidRequest(f"last_id is not a stream id: {value[:80]!r}")
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(fields: dict[Any, Any], name: str) -> str | None:
    value = fields.get(name, fields.get(name.encode()))
    return None if value is None else _text(value)


class Item:
    """One event as it travels: parsed once, its frames built once and shared by every client."""

    __slots__ = ("_sse", "_ws", "id", "job", "order", "raw")

    def __init__(self, event_id: str, job: str, raw: str) -> None:
        self.id = event_id
        self.job = job
        self.raw = raw  # the ProgressEvent JSON, with its id
        self.order: Order = stream_id_order(event_id)
        self._ws: str | None = None
        self._sse: str | None = None

    @classmethod
    def from_message(cls, data: str | bytes) -> Item:
        """From a pub/sub payload (the JSON vtp.events publishes). Raises ValueError."""
        raw = _text(data)
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        event_id, job = obj.get("id"), obj.get("job_id")
        if not isinstance(event_id, str) or not isinstance(job, str):
            raise ValueError("event without id or job_id")
        return cls(event_id, job, raw)

    @classmethod
    def from_event(cls, event: ProgressEvent) -> Item:
        assert event.id is not None
        return cls(event.id, event.job_id, event.model_dump_json())

    @property
    def ws_frame(self) -> str:
        if self._ws is None:
            self._ws = '{"type":"event","event":' + self.raw + "}"
        return self._ws

    @property
    def sse_frame(self) -> str:
        if self._sse is None:
            self._sse = f"id: {self.id}\nevent: progress\ndata: {self.raw}\n\n"
        return self._sse


class Outbox:
    """A client's bounded buffer of pending events. `put` never blocks: it refuses when full."""

    __slots__ = ("_items", "_wakeup", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Item] = deque()
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> bool:
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        self._wakeup.set()
        return True

    def take(self) -> list[Item]:
        """Everything pending, oldest first."""
        items = list(self._items)
        self._items.clear()
        return items

    def wake(self) -> None:
        self._wakeup.set()

    async def wait(self, timeout: float) -> None:
        """Until something is pending or `wake()` is called; TimeoutError after `timeout`."""
        if self._items:
            return
        self._wakeup.clear()
        async with asyncio.timeout(timeout):
            await self._wakeup.wait()


class Client:
    """One connected WebSocket or SSE client, as the hub and its session see it."""

    __slots__ = ("close", "follow", "follow_requests", "kind", "last_order", "outbox", "sender")

    def __init__(self, follow: str | None, queue_size: int, kind: str) -> None:
        self.follow = follow  # None: every job
        self.kind = kind
        self.outbox = Outbox(queue_size)
        self.close: Close | None = None
        self.follow_requests: deque[str | None] = deque(maxlen=8)
        self.last_order: Order = ZERO
        self.sender: asyncio.Task[None] | None = None

    def wants(self, item: Item) -> bool:
        return self.follow is None or item.job == self.follow

    def end(self, close: Close, *, interrupt: bool = False) -> None:
        """Ask the session to end (the first reason wins). `interrupt` also cancels a send
        in progress, which is what unblocks a client that stopped reading."""
        if self.close is None:
            self.close = close
        self.outbox.wake()
        if interrupt and self.sender is not None and not self.sender.done():
            self.sender.cancel()

    def request_follow(self, follow: str | None) -> None:
        self.follow_requests.append(follow)
        self.outbox.wake()


# --- snapshots ---------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Current state of the followed job(s), and the stream position it describes."""

    jobs: dict[str, dict[str, Any]]
    watermark: Order

    def jobs_json(self) -> str:
        return json.dumps(self.jobs, separators=(",", ":"), ensure_ascii=False)


def _events_json(raw: dict[Any, Any]) -> tuple[dict[str, Any], Order]:
    out: dict[str, Any] = {}
    newest = ZERO
    for key, value in raw.items():
        try:
            event = ProgressEvent.model_validate_json(_text(value))
        except ValidationError:
            log.warning("skipping a malformed progress entry %r", _text(key))
            continue
        out[_text(key)] = event.model_dump(mode="json")
        if event.id:
            newest = max(newest, stream_id_order(event.id))
    return out, newest


def job_snapshot(bus: EventBus, job_id: str) -> Snapshot:
    """One job: `EventBus.current`, a single HGETALL, so it is atomic; every event of the job
    up to its newest id is reflected in it, and no later one."""
    current = bus.current(job_id)
    newest = max((stream_id_order(e.id) for e in current.values() if e.id), default=ZERO)
    events = {k: e.model_dump(mode="json") for k, e in current.items()}
    return Snapshot(jobs={job_id: events}, watermark=newest)


# KEYS: the events stream. ARGV: the stream id the caller's scan started from, the most jobs
# wanted, the job hash key's text before and after the job id, then the scanned job ids, newest
# first. Picks up the jobs of events added since the scan (newest first, ahead of the scanned
# ones) and reads their hashes, all at one instant. Returns {last stream id, 1 if more events
# are pending than one call reads, job id, HGETALL, job id, HGETALL, ...}.
# The hash keys are derived here, not passed in KEYS: fine outside Redis Cluster, which
# vtp.events does not support either.
_SNAPSHOT_LUA = """
local newer = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', 10000)
local last, jobs, seen = ARGV[1], {}, {}
for i = #newer, 1, -1 do
  local fields = newer[i][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'job' and not seen[fields[j + 1]] then
      seen[fields[j + 1]] = true
      table.insert(jobs, fields[j + 1])
    end
  end
end
if #newer > 0 then last = newer[#newer][1] end
for i = 5, #ARGV do
  if not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    table.insert(jobs, ARGV[i])
  end
end
local out = {last, #newer == 10000 and 1 or 0}
for i = 1, math.min(#jobs, tonumber(ARGV[2])) do
  table.insert(out, jobs[i])
  table.insert(out, redis.call('HGETALL', ARGV[3] .. jobs[i] .. ARGV[4]))
end
return out
"""


def all_snapshot(
    bus: EventBus,
    *,
    max_jobs: int = 50,
    window_s: float = 3600.0,
    max_scan: int = 20_000,
) -> Snapshot:
    """Every job with events in the last `window_s` (newest first, at most `max_jobs`), found in
    the stream's tail (at most `max_scan` entries), with the current state of each.

    The scan is long and not atomic, so it only proposes job ids; a short Lua script then adds
    the jobs of events published since the scan and reads every hash, atomically. The snapshot
    is thereby the exact state as of the stream's last id, which is the watermark.
    """
    r = bus.redis
    stream = bus.keys.events_stream
    seconds, micros = cast(tuple[int, int], r.time())
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    oldest = f"{max(0, now_ms - int(window_s * 1000))}-0"
    last = cast(list[tuple[Any, Any]], r.xrevrange(stream, "+", "-", count=1))
    tail = _text(last[0][0]) if last else "0-0"

    jobs: list[str] = []
    seen: set[str] = set()
    scanned = 0
    upper = tail
    while last and len(jobs) < max_jobs and scanned < max_scan:
        count = min(1000, max_scan - scanned)
        page = cast(
            list[tuple[Any, dict[Any, Any]]],
            r.xrevrange(stream, upper, oldest, count=count),
        )
        for _, fields in page:
            job = _field(fields, "job")
            if job and job not in seen:
                seen.add(job)
                jobs.append(job)
        scanned += len(page)
        if len(page) < count:
            break
        upper = f"({_text(page[-1][0])}"

    key_head, key_tail = bus.keys.job_progress("\0").split("\0")
    script = r.register_script(_SNAPSHOT_LUA)
    while True:
        reply = cast(
            list[Any],
            script(keys=[stream], args=[tail, max_jobs, key_head, key_tail, *jobs[:max_jobs]]),
        )
        tail, more = _text(reply[0]), int(reply[1])
        pairs = [(_text(reply[i]), reply[i + 1]) for i in range(2, len(reply), 2)]
        if not more:
            break
        # More new events than one call reads (a long scan on a busy stream): carry on from
        # where this call stopped, with its jobs in front.
        jobs = [job for job, _ in pairs]
    snapshot: dict[str, dict[str, Any]] = {}
    for job, flat in pairs:
        raw = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
        events, _ = _events_json(raw)
        if events:
            snapshot[job] = events
    return Snapshot(jobs=snapshot, watermark=stream_id_order(tail))


# --- the hub: one subscription, many clients ---------------------------------------------------


class Hub:
    """The process's single Redis subscription, and who gets which event."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self._by_job: dict[str, set[Client]] = {}
        self._all: set[Client] = set()
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.events_received = 0
        self.overflows = 0
        self.subscriptions = 0  # how many times the subscription was (re)made

    # --- clients ----------------------------------------------------------------------------
    @property
    def clients(self) -> list[Client]:
        return [*self._all, *(c for group in self._by_job.values() for c in group)]

    def add(self, client: Client) -> None:
        if client.follow is None:
            self._all.add(client)
        else:
            self._by_job.setdefault(client.follow, set()).add(client)

    def remove(self, client: Client) -> None:
        if client.follow is None:
            self._all.discard(client)
            return
        group = self._by_job.get(client.follow)
        if group is not None:
            group.discard(client)
            if not group:
                del self._by_job[client.follow]

    def move(self, client: Client, follow: str | None) -> None:
        self.remove(client)
        client.follow = follow
        self.add(client)

    def dispatch(self, item: Item) -> None:
        """Hand one event to every client that wants it. Never awaits: a full outbox gets its
        client cut off instead of holding up the others."""
        self.events_received += 1
        group = self._by_job.get(item.job)
        if group:
            for client in group:
                self._offer(client, item)
        for client in self._all:
            self._offer(client, item)

    def _offer(self, client: Client, item: Item) -> None:
        if client.close is not None:
            return
        if not client.outbox.put(item):
            self.overflows += 1
            log.info("%s client cut off: %d events pending", client.kind, len(client.outbox))
            client.end(OVERFLOW, interrupt=True)

    def end_all(self, close: Close) -> None:
        for client in self.clients:
            client.end(close, interrupt=True)

    # --- the subscription ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready is not None and self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        if self._ready is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def start(self) -> None:
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="relay-hub")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        assert self._ready is not None
        delay = 0.5
        while True:
            # No retries inside redis-py: it would reconnect and resubscribe silently, and the
            # events published meanwhile would be a gap nobody knows about.
            conn = aioredis.Redis.from_url(
                self.redis_url,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=5,
                socket_keepalive=True,
                health_check_interval=10,
            )
            pubsub = conn.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind == "message":
                        self._on_message(message["data"])
                    elif kind == "subscribe":
                        if self._ready.is_set():
                            raise ConnectionError("subscription was remade: events may be lost")
                        self.subscriptions += 1
                        self._ready.set()
                        delay = 0.5
                        log.info("subscribed to %s", self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("progress subscription lost (%s); retrying in %.1fs", exc, delay)
            finally:
                if self._ready.is_set():
                    self._ready.clear()
                    self.end_all(FEED_LOST)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await conn.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_message(self, data: Any) -> None:
        try:
            item = Item.from_message(data)
        except ValueError as exc:
            log.warning("ignoring a malformed progress message: %s", exc)
            return
        self.dispatch(item)


# --- transports ---------------------------------------------------------------------------------


class _Channel(Protocol):
    async def send_snapshot(self, jobs_json: str) -> None: ...
    async def send_items(self, items: list[Item]) -> None: ...
    async def send_ping(self) -> None: ...
    async def listen(self, client: Client) -> None: ...
    async def finish(self, close: Close, timeout: float) -> None: ...


class _Stop(Exception):
    """Ends a session's pump; the reason is on the client."""


class _WebSocketChannel:
    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket

    async def send_snapshot(self, jobs_json: str) -> None:
        await self.ws.send_text('{"type":"snapshot","jobs":' + jobs_json + "}")

    async def send_items(self, items: list[Item]) -> None:
        for item in items:
            await self.ws.send_text(item.ws_frame)

    async def send_ping(self) -> None:
        await self.ws.send_text('{"type":"ping"}')

    async def listen(self, client: Client) -> None:
        """Client -> server: `{"type": "follow", "job": "<id>|all"}`; anything else is ignored."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                client.end(DISCONNECTED)
                return
            text = message.get("text")
            if text is None:
                continue
            try:
                body = json.loads(text)
                if isinstance(body, dict) and body.get("type") == "follow":
                    job = body.get("job")
                    client.request_follow(parse_follow(job if isinstance(job, str) else None))
            except (ValueError, InvalidRequest) as exc:
                log.debug("ignoring a client message: %s", exc)

    async def finish(self, close: Close, timeout: float) -> None:
        if close.code is None or self.ws.client_state is not WebSocketState.CONNECTED:
            return
        if self.ws.application_state is not WebSocketState.CONNECTED:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.ws.close(close.code, close.reason)


class _SSEChannel:
    HEADERS = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),  # tells nginx-style proxies not to buffer the stream
    ]

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.disconnected = False

    async def start(self) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": self.HEADERS})
        await self._write(f"retry: {SSE_RETRY_MS}\n\n")

    async def _write(self, text: str) -> None:
        await self._send({"type": "http.response.body", "body": text.encode(), "more_body": True})

    async def send_snapshot(self, jobs_json: str) -> None:
        await self._write('event: snapshot\ndata: {"jobs":' + jobs_json + "}\n\n")

    async def send_items(self, items: list[Item]) -> None:
        await self._write("".join(item.sse_frame for item in items))

    async def send_ping(self) -> None:
        await self._write(": ping\n\n")

    async def listen(self, client: Client) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                client.end(DISCONNECTED)
                return

    async def finish(self, close: Close, timeout: float) -> None:
        if self.disconnected or close.code is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self._send(
                    {
                        "type": "http.response.body",
                        "body": f": closing: {close.reason}\n\n".encode(),
                        "more_body": False,
                    }
                )


# --- the relay ----------------------------------------------------------------------------------


class Relay:
    """Sessions of WebSocket and SSE clients over one `Hub`."""

    def __init__(self, redis_url: str, prefix: str, options: RelayOptions | None = None) -> None:
        self.options = options or RelayOptions()
        # Blocking client for snapshots and replays, used from the threadpool.
        sync = redis.Redis.from_url(
            redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
        self.bus = EventBus(sync, prefix)
        self.hub = Hub(redis_url, self.bus.channel)
        self.closing = False
        self.sessions = 0

    @classmethod
    def from_settings(cls, settings: Settings, options: RelayOptions | None = None) -> Relay:
        return cls(settings.redis_url.get_secret_value(), settings.redis_prefix, options)

    async def start(self) -> None:
        self.hub.start()

    async def stop(self) -> None:
        self.shutdown_streams()
        await self.hub.stop()
        with contextlib.suppress(Exception):
            self.bus.redis.close()

    def shutdown_streams(self) -> None:
        """Called when the process is asked to stop: every stream ends now (WebSockets with
        1012), so clients reconnect elsewhere instead of holding the shutdown up."""
        self.closing = True
        self.hub.end_all(SHUTDOWN)

    def stats(self) -> dict[str, Any]:
        clients = self.hub.clients
        return {
            "pid": os.getpid(),
            "subscribed": self.hub.ready,
            "clients": len(clients),
            "websocket_clients": sum(1 for c in clients if c.kind == "ws"),
            "sse_clients": sum(1 for c in clients if c.kind == "sse"),
            "following_all": sum(1 for c in clients if c.follow is None),
            "events_received": self.hub.events_received,
            "overflow_disconnects": self.hub.overflows,
            "sessions_served": self.sessions,
        }

    # --- reading state (blocking; run in the threadpool) --------------------------------------
    def read_snapshot(self, follow: str | None) -> Snapshot:
        if follow is not None:
            return job_snapshot(self.bus, follow)
        o = self.options
        return all_snapshot(
            self.bus, max_jobs=o.all_max_jobs, window_s=o.all_window_s, max_scan=o.all_max_scan
        )

    def read_replay(self, after: str, follow: str | None) -> list[Item]:
        return [Item.from_event(e) for e in self.bus.since(after, follow, REPLAY_PAGE)]

    # --- one session -------------------------------------------------------------------------
    async def _send(self, client: Client, sending: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self.options.send_timeout_s):
                await sending
        except TimeoutError:
            client.end(SEND_TIMEOUT)
            raise _Stop from None
        except (WebSocketDisconnect, OSError, RuntimeError):
            # OSError: uvicorn's ClientDisconnected; RuntimeError: sending after a close.
            client.end(DISCONNECTED)
            raise _Stop from None

    async def _prime(self, client: Client, channel: _Channel, last_id: str | None) -> None:
        """Snapshot first, then (when resuming) the replay after `last_id`, page by page."""
        snapshot = await run_in_threadpool(self.read_snapshot, client.follow)
        await self._send(client, channel.send_snapshot(snapshot.jobs_json()))
        if last_id is None:
            client.last_order = snapshot.watermark
            return
        last = stream_id_order(last_id)
        cursor = last_id
        while True:
            page = await run_in_threadpool(self.read_replay, cursor, client.follow)
            fresh = [item for item in page if item.order > last]
            if fresh:
                await self._send(client, channel.send_items(fresh))
                last = fresh[-1].order
            if len(page) < REPLAY_PAGE:
                break
            cursor = page[-1].id
        client.last_order = last

    async def _switch(self, client: Client, channel: _Channel, follow: str | None) -> None:
        """A WebSocket client follows another job (or all): a new snapshot, then its events.
        The hub is told first, so nothing published after the snapshot read is missed."""
        self.hub.move(client, follow)
        snapshot = await run_in_threadpool(self.read_snapshot, follow)
        await self._send(client, channel.send_snapshot(snapshot.jobs_json()))
        client.last_order = max(client.last_order, snapshot.watermark)

    async def _pump(self, client: Client, channel: _Channel, last_id: str | None) -> None:
        try:
            await self._prime(client, channel, last_id)
            while client.close is None:
                if client.follow_requests:
                    await self._switch(client, channel, client.follow_requests.popleft())
                    continue
                items = client.outbox.take()
                if not items:
                    try:
                        await client.outbox.wait(self.options.ping_interval_s)
                    except TimeoutError:
                        await self._send(client, channel.send_ping())
                    continue
                batch: list[Item] = []
                last = client.last_order
                for item in items:
                    # Dedupe against the snapshot / replay already sent, and drop what was
                    # queued for a job the client no longer follows.
                    if item.order > last and client.wants(item):
                        batch.append(item)
                        last = item.order
                if batch:
                    client.last_order = last
                    await self._send(client, channel.send_items(batch))
        except _Stop:
            return
        except redis.RedisError as exc:
            log.warning("could not read progress from Redis: %s", exc)
            client.end(FEED_LOST)

    async def _serve(self, client: Client, channel: _Channel, last_id: str | None) -> Close:
        """Run a session until it ends; returns why it ended."""
        self.sessions += 1
        self.hub.add(client)  # subscribed before anything is read: see the module docstring
        sender = asyncio.create_task(self._pump(client, channel, last_id))
        client.sender = sender
        listener = asyncio.create_task(channel.listen(client))
        try:
            await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.remove(client)
            sender.cancel()
            listener.cancel()
            results = await asyncio.gather(sender, listener, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("%s session failed", client.kind, exc_info=result)
                client.end(ERROR)
        return client.close or DISCONNECTED

    # --- endpoints ---------------------------------------------------------------------------
    async def websocket_endpoint(self, websocket: WebSocket) -> None:
        try:
            follow = parse_follow(websocket.query_params.get("job"))
            last_id = parse_last_id(websocket.query_params.get("last_id"))
        except InvalidRequest as exc:
            await websocket.accept()
            await websocket.close(BAD_REQUEST, exc.reason[:120])
            return
        ready = not self.closing and await self.hub.wait_ready(self.options.ready_timeout_s)
        await websocket.accept()
        if not ready:
            close = SHUTDOWN if self.closing else NOT_READY
            await _WebSocketChannel(websocket).finish(close, self.options.close_timeout_s)
            return
        client = Client(follow, self.options.queue_size, "ws")
        channel = _WebSocketChannel(websocket)
        close = await self._serve(client, channel, last_id)
        await channel.finish(close, self.options.close_timeout_s)

    async def sse_endpoint(self, request: Request) -> Response:
        try:
            follow = parse_follow(request.query_params.get("job"))
            last_id = parse_last_id(
                request.headers.get("last-event-id") or request.query_params.get("last_id")
            )
        except InvalidRequest as exc:
            return JSONResponse({"error": exc.reason, "type": "InvalidRequest"}, 400)
        ready = not self.closing and await self.hub.wait_ready(self.options.ready_timeout_s)
        if not ready:
            return JSONResponse(
                {"error": "event feed not ready: try again"},
                503,
                headers={"Retry-After": "2"},
            )
        return _SSEResponse(self, follow, last_id)


class _SSEResponse(Response):
    """A Server-Sent Events stream driven by a relay session (not Starlette's StreamingResponse,
    whose task group cannot be told to stop from outside when a client is too slow)."""

    def __init__(self, relay: Relay, follow: str | None, last_id: str | None) -> None:
        super().__init__()
        self.relay = relay
        self.follow = follow
        self.last_id = last_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = _SSEChannel(receive, send)
        try:
            await channel.start()
        except OSError:
            return
        client = Client(self.follow, self.relay.options.queue_size, "sse")
        close = await self.relay._serve(client, channel, self.last_id)
        await channel.finish(close, self.relay.options.close_timeout_s)


# --- the JSON API --------------------------------------------------------------------------------


class UploadRequest(BaseModel):
    """POST /api/uploads: what the browser is about to upload."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field(min_length=1, max_length=1024)
    content_type: str | None = Field(default=None, max_length=200)


class UploadTicket(BaseModel):
    url: str
    bucket: str
    key: str
    method: str = "PUT"
    headers: dict[str, str]


def safe_upload_name(filename: str, video_suffixes: Iterable[str]) -> str:
    """The last path component, reduced to [A-Za-z0-9._-]; its suffix must be a video's."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    stem, dot, ext = name.rpartition(".")
    suffix = f".{ext.lower()}" if dot else ""
    allowed = {s.lower() for s in video_suffixes}
    if suffix not in allowed:
        raise InvalidRequest(
            f"{name[:80]!r} is not a video file name (expected one of {', '.join(sorted(allowed))})"
        )
    safe = _UNSAFE.sub("_", stem).strip("._-")[:100] or "video"
    return f"{safe}{suffix}"


class JobsApi:
    """The page's JSON routes. The Pipeline (PostgreSQL, Redis, storage clients) is built on
    first use, once per process, and its blocking calls run in the threadpool."""

    UPLOAD_URL_TTL_S = 3600

    def __init__(self, settings: Settings, *, uploads_enabled: bool = True) -> None:
        self.settings = settings
        self.uploads_enabled = uploads_enabled
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self._storage: Storage | None = None

    def pipeline(self) -> Pipeline:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = Pipeline.from_settings(self.settings)
            return self._pipeline

    def storage(self) -> Storage:
        # Uploads need only the storage client: no database round trip to hand out a URL.
        with self._lock:
            if self._storage is None:
                self._storage = Storage.from_settings(self.settings)
            return self._storage

    # --- blocking parts ----------------------------------------------------------------------
    def list_jobs(
        self, state: JobState | None, limit: int, bucket: str | None, key: str | None
    ) -> dict[str, Any]:
        p = self.pipeline()
        jobs = p.store.list(state, limit, bucket=bucket, key=key)
        return {"jobs": [p.describe_job(j) for j in jobs]}

    def get_job(self, job_id: str) -> dict[str, Any]:
        p = self.pipeline()
        return p.describe_job(p.find_job(job_id))

    def upload_ticket(self, request: UploadRequest) -> UploadTicket:
        name = safe_upload_name(request.filename, self.settings.video_suffixes)
        wanted = (request.content_type or "").strip()
        content_type = wanted if _MIME.match(wanted) else content_type_for(name)
        key = f"web/{uuid.uuid4()}/{name}"
        bucket = self.settings.uploads_bucket
        url = self.storage().presigned_put(bucket, key, expires=self.UPLOAD_URL_TTL_S)
        return UploadTicket(url=url, bucket=bucket, key=key, headers={"Content-Type": content_type})

    # --- endpoints ---------------------------------------------------------------------------
    async def list_endpoint(self, request: Request) -> Response:
        q = request.query_params
        try:
            state = JobState(q["state"]) if q.get("state") else None
            limit = max(1, min(int(q.get("limit") or 50), 1000))
        except ValueError as exc:
            raise InvalidRequest(
                f"state must be one of {[s.value for s in JobState]} and limit a number"
            ) from exc
        body = await run_in_threadpool(
            self.list_jobs, state, limit, q.get("bucket") or None, q.get("key") or None
        )
        return _json(body)

    async def job_endpoint(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.get_job, request.path_params["job_id"]))

    async def upload_endpoint(self, request: Request) -> Response:
        if not self.uploads_enabled:
            raise Forbidden("uploads through this page are turned off (RELAY_UPLOADS_ENABLED)")
        raw = await request.body()
        try:
            upload = UploadRequest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise InvalidRequest(f"{where}: {first.get('msg', 'invalid')}") from exc
        ticket = await run_in_threadpool(self.upload_ticket, upload)
        return _json(ticket.model_dump())


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(to_jsonable_python(body), status_code=status)


def _guarded(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Named exceptions become their status with a JSON body; anything else a JSON 500."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            answer = error_response(exc)
            return JSONResponse(answer["body"], status_code=answer["statusCode"])

    return run


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return JSONResponse({"error": detail}, status_code=status)


def create_app(
    settings: Settings | None = None,
    *,
    static_dir: Path,
    options: RelayOptions | None = None,
) -> Starlette:
    """The ws-relay ASGI app: page, static assets, /ws, /events and /api. `app.state.relay`
    is the Relay (its `shutdown_streams()` belongs in the template's on_sigterm hook)."""
    settings = settings or Settings()
    options = options or RelayOptions()
    relay = Relay.from_settings(settings, options)
    api = JobsApi(settings, uploads_enabled=options.uploads_enabled)

    async def index(request: Request) -> Response:
        page = static_dir / "index.html"
        if not page.is_file():
            return JSONResponse({"error": "the progress page is not installed"}, 404)
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def stats(request: Request) -> Response:
        return JSONResponse(relay.stats())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET", "HEAD"]),
            WebSocketRoute("/ws", relay.websocket_endpoint),
            Route("/events", relay.sse_endpoint, methods=["GET"]),
            Route("/api/jobs", _guarded(api.list_endpoint), methods=["GET"]),
            Route("/api/jobs/{job_id}", _guarded(api.job_endpoint), methods=["GET"]),
            Route("/api/uploads", _guarded(api.upload_endpoint), methods=["POST"]),
            Route("/api/relay/stats", stats, methods=["GET"]),
            Mount("/static", StaticFiles(directory=static_dir, check_dir=False)),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.relay = relay
    app.state.api = api
    return app
