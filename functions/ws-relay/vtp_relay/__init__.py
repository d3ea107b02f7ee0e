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

The package, one module per part: `options` (tunables and request parameters), `hub` (the
subscription, outboxes and clients), `snapshot` (the snapshot reads), `streams` (the WebSocket
and SSE sessions and endpoints), `poll` (the polling fallback for gateways that buffer
streams), `api` (the JSON API about jobs), `uploads` (the upload form's tickets), `app` (the ASGI
app).
"""

from __future__ import annotations

from vtp_relay.app import create_app
from vtp_relay.options import RelayOptions

__all__ = ["RelayOptions", "create_app"]
