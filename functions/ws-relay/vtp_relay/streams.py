"""ws-relay's live streams: the WebSocket and Server-Sent Events channels, and `Relay`, which
runs each client's session over the `Hub` (snapshot, replay, live events, pings) and serves the
/ws and /events endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable
from typing import Any, Protocol

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from vtp.errors import InvalidRequest
from vtp.events import EventBus, stream_id_order
from vtp.settings import Settings
from vtp_relay.gate import allowed_follow, principal_of
from vtp_relay.hub import (
    BAD_REQUEST,
    DISCONNECTED,
    ERROR,
    FEED_LOST,
    NOT_READY,
    SEND_TIMEOUT,
    SHUTDOWN,
    Client,
    Close,
    Hub,
    Item,
)
from vtp_relay.options import RelayOptions, parse_follow, parse_last_id
from vtp_relay.snapshot import Snapshot, all_snapshot, job_snapshot

log = logging.getLogger(__name__)

REPLAY_PAGE = 500
SSE_RETRY_MS = 2000


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
                    wanted = parse_follow(job if isinstance(job, str) else None)
                    if not allowed_follow(principal_of(self.ws.scope), wanted):
                        log.info("a link's stream asked to follow another job: ignored")
                        continue
                    client.request_follow(wanted)
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
        self.hub.add(client)  # subscribed before anything is read: see vtp_relay's docstring
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
