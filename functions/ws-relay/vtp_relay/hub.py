"""ws-relay's hub: the process's one Redis pub/sub subscription, fanned out to every client's
bounded outbox (`Item`, `Outbox`, `Client`, `Hub`), and why a client's stream ends (`Close`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from vtp.events import ProgressEvent, stream_id_order
from vtp_relay.options import ZERO, Order, _text

log = logging.getLogger(__name__)


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
