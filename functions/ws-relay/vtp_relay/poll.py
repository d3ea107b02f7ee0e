"""The polling fallback: `GET /poll`, the events since an id, for clients whose event stream
does not stream.

A CE gateway before 2024 (0.25.4 and older) buffers `text/event-stream` responses: an SSE
client through it sees nothing for minutes, then a burst. WebSockets do not pass it at all.
So the page and `vtp watch` notice a stalled stream and fall back to asking this route once a
second: an ordinary short request that every gateway passes whole.

    GET /poll?job=<id>|all                 -> {"jobs": <snapshot>, "events": [], "last_id": W}
    GET /poll?job=<id>|all&last_id=<id>    -> {"jobs": null, "events": [...], "last_id": L,
                                               "more": bool}

Without `last_id` the answer is the same snapshot a stream starts with, and `last_id` is its
watermark; with it, the events after it (oldest first, at most a page; `more` says another
page is waiting), and `last_id` is the newest one returned (or the one given). Resuming from
the answer's `last_id` misses nothing, as with the streams.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vtp.errors import InvalidRequest
from vtp_relay.options import ZERO, Order, parse_follow, parse_last_id
from vtp_relay.streams import REPLAY_PAGE, Relay


def _stream_id(order: Order) -> str:
    return "0" if order == ZERO else f"{order[0]}-{order[1]}"


def poll_answer(relay: Relay, follow: str | None, last_id: str | None) -> dict[str, Any]:
    """The body of one poll (blocking Redis reads: run it in the threadpool)."""
    if last_id is None:
        snapshot = relay.read_snapshot(follow)
        return {
            "jobs": snapshot.jobs,
            "events": [],
            "last_id": _stream_id(snapshot.watermark),
            "more": False,
        }
    events = relay.bus.since(last_id, follow, REPLAY_PAGE)
    return {
        "jobs": None,
        "events": [e.model_dump(mode="json") for e in events],
        "last_id": events[-1].id if events else last_id,
        "more": len(events) >= REPLAY_PAGE,
    }


def make_poll_endpoint(relay: Relay) -> Any:
    async def poll_endpoint(request: Request) -> Response:
        try:
            follow = parse_follow(request.query_params.get("job"))
            last_id = parse_last_id(request.query_params.get("last_id"))
            body = await run_in_threadpool(poll_answer, relay, follow, last_id)
        except InvalidRequest as exc:
            return JSONResponse({"error": exc.reason, "type": "InvalidRequest"}, 400)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return poll_endpoint
