"""The `vtp` client's live transports to ws-relay: the messages (`Snapshot`, `Event`, `Tick`,
`Opened`), the wire-format parsers (`parse_ws_message`, `SseParser`; pure) and the readers
that do the I/O: WebSocket (`ws_messages`), Server-Sent Events (`sse_messages`) and short
polls of the relay's events-since route (`poll_messages`), for gateways that buffer streams.

Every reader yields a `Tick` at least once a second whatever the network does, so the watcher
can notice a stream that opened but delivers nothing (see vtp_cli.watch)."""

from __future__ import annotations

import codecs
import json
import logging
import queue
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from pydantic import ValidationError

from vtp.events import ProgressEvent

log = logging.getLogger(__name__)


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
    url: str,
    job_id: str,
    last_id: str | None,
    *,
    open_timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> Generator[Message, None, None]:
    """Messages from the ws-relay WebSocket: Opened, then the server's; a Tick every second of
    silence. Raises TransportError when it cannot open or when the connection ends."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
    from websockets.sync.client import connect

    target = with_query(url, job=job_id, last_id=last_id)
    try:
        conn = connect(
            target,
            open_timeout=open_timeout,
            close_timeout=2,
            max_size=8 << 20,
            additional_headers=dict(headers or {}),
        )
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
    url: str,
    job_id: str,
    last_id: str | None,
    *,
    read_timeout: float = 40.0,
    headers: Mapping[str, str] | None = None,
) -> Generator[Message, None, None]:
    """Messages from the ws-relay's Server-Sent Events (the server pings every 15 s, so a read
    timeout of 40 s means the stream is dead). Raises TransportError.

    The stream is read on a thread of its own (with its own HTTP session), and a Tick comes
    every second of silence, even while the response headers have not arrived: a gateway
    that buffers the stream must not freeze the watcher for the read timeout.
    """
    inbox: queue.Queue[Message | TransportError] = queue.Queue()
    stop = threading.Event()
    session = requests.Session()
    session.headers.update(headers or {})

    def read() -> None:
        sent = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_id:
            sent["Last-Event-ID"] = last_id
        params = {"job": job_id} | ({"last_id": last_id} if last_id else {})
        opened = False
        try:
            with session.get(
                url, params=params, headers=sent, stream=True, timeout=(5.0, read_timeout)
            ) as resp:
                kind = resp.headers.get("Content-Type", "")
                if resp.status_code != 200 or not kind.startswith("text/event-stream"):
                    why = f"HTTP {resp.status_code} {kind or 'no content type'}"
                    inbox.put(TransportError(f"SSE {url}: {why}", opened=False))
                    return
                opened = True
                inbox.put(Opened("sse"))
                parser = SseParser()
                # A character may be split between chunks: decode incrementally.
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                # chunk_size=None: whatever arrives, as it arrives (events are small, sparse).
                for chunk in resp.iter_content(chunk_size=None, decode_unicode=False):
                    if stop.is_set():
                        return
                    for message in parser.feed(decoder.decode(chunk)):
                        inbox.put(message)
            inbox.put(TransportError("SSE stream ended", opened=True))
        except (requests.RequestException, OSError, ValueError) as exc:
            if not stop.is_set():
                what = "SSE stream ended" if opened else f"SSE {url}"
                inbox.put(TransportError(f"{what}: {describe_error(exc)}", opened=opened))
        finally:
            session.close()

    reader = threading.Thread(target=read, name="vtp-sse", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = inbox.get(timeout=1.0)
            except queue.Empty:
                yield Tick()
                continue
            if isinstance(item, TransportError):
                raise item
            yield item
    finally:
        # Closing the session's connections ends a read in progress; a request still
        # waiting for its headers ends at its own timeout, on its daemon thread.
        stop.set()
        session.close()


def poll_messages(
    session: requests.Session,
    url: str,
    job_id: str,
    last_id: str | None,
    *,
    interval: float = 1.0,
) -> Generator[Message, None, None]:
    """Messages from short polls of the relay's `/poll` route (vtp_relay.poll): a snapshot
    when there is no `last_id` to resume from, then the events after the last one seen, once
    a second. Raises TransportError when a poll fails."""
    cursor = last_id
    opened = False
    while True:
        params = {"job": job_id} | ({"last_id": cursor} if cursor else {})
        try:
            resp = session.get(url, params=params, timeout=(5.0, 15.0))
            body = resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError) as exc:
            raise TransportError(f"poll {url}: {describe_error(exc)}", opened=opened) from exc
        if not isinstance(body, dict):
            raise TransportError(f"poll {url}: HTTP {resp.status_code}", opened=opened)
        if not opened:
            opened = True
            yield Opened("polling")
        if isinstance(body.get("jobs"), dict):
            yield Snapshot(body["jobs"])
        for data in body.get("events") or []:
            event = _event(data)
            if event is not None:
                yield event
        cursor = str(body.get("last_id") or cursor or "") or None
        if not body.get("more"):
            yield Tick()
            time.sleep(interval)
