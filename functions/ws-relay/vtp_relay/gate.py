"""ws-relay's door: one ASGI middleware in front of every route, for HTTP and WebSocket alike,
applying the deployment's access rules (`vtp.access.ROUTES`, the `ws-relay` lines).

A caller is a credential (`Authorization: Bearer`), the page's session cookie (which
/api/session sets after being shown a credential, since a browser's WebSocket and
EventSource cannot send headers), or a signed link to one job (`?link=`). A link's caller
sees that job only: its streams, its poll and its API answer, never a listing or another
job, and a WebSocket following it cannot switch to another (`allowed_follow`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from vtp import access
from vtp.errors import Forbidden, Unauthorized, VtpError

log = logging.getLogger(__name__)

# RFC 6455 close code 1008, "policy violation", closes a WebSocket refused before accept:
# servers answer the handshake with HTTP 403.
WS_POLICY_VIOLATION = 1008
PRINCIPAL = "vtp.principal"
_JOB_ROUTES = ("/ws", "/events", "/poll")


def principal_of(scope: Scope) -> access.Principal | None:
    """Who the gate let in for this request (None: an open route)."""
    state = scope.get("state") or {}
    found = state.get(PRINCIPAL) if isinstance(state, dict) else None
    return found if isinstance(found, access.Principal) else None


def allowed_follow(principal: access.Principal | None, job: str | None) -> bool:
    """Whether a stream may follow `job` (None: every job)."""
    return principal is None or principal.job is None or principal.job == job


class AccessGate:
    def __init__(self, app: ASGIApp, gate: access.Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "/") or "/"
        headers = Headers(scope=scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        presented = access.Presented(
            authorization=headers.get("authorization"),
            query=query,
            session=cookie_parser(headers.get("cookie", "")).get(access.SESSION_COOKIE),
        )
        try:
            principal = self.gate.authorize("ws-relay", path, presented)
            if principal is not access.ANYONE:
                principal.sees(_job_of(path, query))
        except VtpError as exc:
            await _refuse(scope, receive, send, exc)
            return
        if principal is not access.ANYONE:
            state = scope.setdefault("state", {})
            state[PRINCIPAL] = principal
        await self.app(scope, receive, send)


def _job_of(path: str, query: dict[str, str]) -> str | None:
    """The one job a request is about, canonical, or None for "every job"."""
    if path.startswith("/api/jobs/"):
        raw: str | None = path.removeprefix("/api/jobs/").strip("/")
    elif path.rstrip("/") in _JOB_ROUTES:
        raw = query.get("job")
        if raw is None or raw.strip() in ("", "all"):
            return None
    else:
        return None
    try:
        return str(uuid.UUID((raw or "").strip()))
    except ValueError:
        return raw  # not a job id: it matches no link, and the route says what is wrong


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: VtpError) -> None:
    status = 403 if isinstance(exc, Forbidden) else 401
    log.info("refused %s %s: %s", scope["type"], scope.get("path"), exc.reason)
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": exc.reason})
        return
    headers: dict[str, Any] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = access.CHALLENGE
    answer = JSONResponse({"error": exc.reason}, status_code=status, headers=headers)
    await answer(scope, receive, send)
