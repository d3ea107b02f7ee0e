"""The `vtp` client's watcher: follows one job to its end over the WebSocket, else SSE, else
short polls of the relay's events route, else status polls alone, with status polls for the
final word (`Watcher`, `WatchResult`).

A stream that opens is not necessarily live: a CE gateway before 2024 buffers
`text/event-stream` and delivers minutes late, in bursts. So a stream counts as stalled, and
gives way to polling, when its snapshot has not come `stall_seconds` (VTP_STALL_SECONDS, 5 s)
after it was asked for, or when a status poll shows events that it still has not delivered
by the next poll.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from vtp.errors import UpstreamError
from vtp_cli.client import StatusClient
from vtp_cli.config import ClientConfig
from vtp_cli.progress import JobProgress, event_order
from vtp_cli.transport import (
    Event,
    Message,
    Opened,
    Snapshot,
    TransportError,
    poll_messages,
    sse_messages,
    ws_messages,
)

log = logging.getLogger(__name__)

WS_RETRIES = 4  # reopen attempts of a WebSocket that worked, before falling back to SSE
WS_STABLE_S = 30.0  # a WebSocket cut after this long was working: reopen it
ABNORMAL_CLOSE = frozenset({1002, 1006, 1011, 1015})
STALLED = "the gateway holds the event stream back"


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
        self._sse_stalled = False  # SSE opened but was not live: poll instead
        self._poll_failures_route = 0
        self._why = ""  # why the last transport failed, told when the next one opens
        self._announced = ""
        # The live transport in use: when it was asked for, whether its snapshot came, the
        # newest event id it delivered, and the newest a status poll showed it should have.
        self._stream_kind = ""
        self._stream_asked = 0.0
        self._stream_snapshot = False
        self._stream_last: str | None = None
        self._lag_mark: str | None = None
        self._lagging = False

    def run(self) -> WatchResult:
        deadline = time.monotonic() + self.timeout
        self.poll(strict=True)  # an unknown job or an unreachable gateway ends here
        while not self.job.finished and time.monotonic() < deadline:
            stream = self._open()
            if stream is None:
                self._announce("status polling")
                self._sleep_polling(min(2.0 * self._sse_failures, 10.0), deadline)
                continue
            try:
                for message in stream:
                    self._apply(message)
                    if self.job.finished or time.monotonic() >= deadline:
                        break
                    if time.monotonic() - self._last_poll >= self.poll_every:
                        self.poll()
                    if self._stalled():
                        self._stream_stalled()
                        break
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
        self._note_lag(view)
        self.job.apply_view(view)
        self.on_change(self.job)

    # --- is the stream live? -------------------------------------------------------------
    def _note_lag(self, view: dict[str, Any]) -> None:
        """Remember the newest event a status view shows, for the next `_stalled` check."""
        if self._stream_kind not in ("sse", "websocket"):
            return
        ids = [
            str((item.get("progress") or {}).get("id") or "")
            for item in view.get("renditions") or []
            if isinstance(item, dict)
        ]
        newest = max((i for i in ids if i), key=event_order, default=None)
        mark, seen = self._lag_mark, event_order(self._stream_last)
        if mark is not None and seen < event_order(mark):
            # What the previous poll showed has still not come through the stream.
            self._lagging = not self.job.finished
            return
        ahead = newest is not None and event_order(newest) > seen
        self._lag_mark = newest if ahead else None

    def _stalled(self) -> bool:
        """Opened, yet not live: no snapshot `stall_seconds` after asking, or behind events a
        status poll showed a whole poll interval ago."""
        if self._stream_kind != "sse":
            return False  # a WebSocket is never buffered; polling is live by construction
        if not self._stream_snapshot:
            return time.monotonic() - self._stream_asked > self.config.stall_seconds
        return self._lagging

    def _stream_stalled(self) -> None:
        log.info("SSE stalled: %s", STALLED)
        self._sse_stalled = True
        self._why = STALLED
        self._announced = ""

    def _apply(self, message: Message) -> None:
        changed = False
        if isinstance(message, Opened):
            # SSE is announced when its snapshot comes: a stream can open and stay silent.
            if message.transport != "sse":
                self._announce(message.transport)
            if message.transport == "sse":
                self._sse_failures = 0
            elif message.transport == "polling":
                self._poll_failures_route = 0
            else:
                self._ws_worked, self._ws_retries = True, 0
                self._ws_opened_at = time.monotonic()
        elif isinstance(message, Snapshot):
            if self._stream_kind == "sse":
                self._announce("sse")
            self._stream_snapshot = True
            self._stream_saw(_snapshot_ids(message.jobs, self.job.job_id))
            changed = self.job.apply_snapshot(message.jobs) > 0
        elif isinstance(message, Event):
            self._stream_saw([message.event.id])
            changed = self.job.apply_event(message.event)
            ready = message.event.kind == "rendition.ready"
            if changed and message.event.rendition is None and (self.job.finished or ready):
                self.poll()  # the view carries the master URL and sizes
        if changed:
            self.on_change(self.job)

    def _stream_saw(self, ids: list[str | None]) -> None:
        for event_id in ids:
            if event_id and event_order(event_id) > event_order(self._stream_last):
                self._stream_last = event_id

    def _open(self) -> Generator[Message, None, None] | None:
        last = self.job.last_event_id
        self._stream_asked = time.monotonic()
        self._stream_snapshot = False
        self._stream_last = last
        self._lag_mark = None
        self._lagging = False
        if self._ws_ok and self.config.ws_url:
            self._stream_kind = "websocket"
            return ws_messages(
                self.config.ws_url, self.job.job_id, last, headers=self.config.auth_headers
            )
        if self._sse_failures < 3 and not self._sse_stalled:
            self._stream_kind = "sse"
            return sse_messages(
                self.config.sse_url, self.job.job_id, last, headers=self.config.auth_headers
            )
        if self._poll_failures_route < 3:
            self._stream_kind = "polling"
            return poll_messages(self.session, self.config.poll_url, self.job.job_id, last)
        self._stream_kind = ""
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
        elif self._stream_kind == "polling":
            self._poll_failures_route += 1
            self._wait_polling(min(2.0 * self._poll_failures_route, 10.0))
        elif not exc.opened:
            self._sse_failures += 1
        if exc.opened:
            self._announced = ""  # say so when it (or another) opens again
            self.poll()  # catch up at once; the next transport resumes from the last id

    def _sleep_polling(self, seconds: float, deadline: float) -> None:
        """Status polls only (no live transport): status every second for `seconds`, then the
        caller tries SSE, or the poll route, once more."""
        self._wait_polling(min(max(seconds, 1.0), deadline - time.monotonic()))
        self._sse_failures = min(self._sse_failures, 2)
        self._poll_failures_route = min(self._poll_failures_route, 2)

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


def _snapshot_ids(jobs: dict[str, Any], job_id: str) -> list[str | None]:
    fields = jobs.get(job_id)
    if not isinstance(fields, dict):
        return []
    return [str(v["id"]) for v in fields.values() if isinstance(v, dict) and v.get("id")]
