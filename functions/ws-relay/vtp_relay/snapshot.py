"""ws-relay's snapshots: the current state of one job or of every recent job, with the
stream position it describes (its watermark), read so that nothing is missed or repeated."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from vtp.events import EventBus, ProgressEvent, stream_id_order
from vtp_relay.options import ZERO, Order, _text

log = logging.getLogger(__name__)


def _field(fields: dict[Any, Any], name: str) -> str | None:
    value = fields.get(name, fields.get(name.encode()))
    return None if value is None else _text(value)


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
