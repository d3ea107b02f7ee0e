"""The read token at ws-relay's door: one ASGI middleware in front of every route that shows
jobs (the streams, /poll, /api), for HTTP and WebSocket alike.

The page and its static files stay open (they hold no job data, and the page is how a person
with the token gets in: `.../ws-relay/?token=<token>`); so does /api/relay/stats, which
counts connections and names no job. See `vtp.access` for why the token may come in the
query string.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from vtp import access

log = logging.getLogger(__name__)

_OPEN_PATHS = frozenset({"/", "/api/relay/stats"})
# /play/: a private job's play URLs (vtp_relay.play) carry their own key, a signed token in
# the path, which the route checks itself; players cannot send the read token.
_OPEN_PREFIXES = ("/static/", "/play/")

# RFC 6455 close code 1008, "policy violation", closes a WebSocket refused before accept:
# servers answer the handshake with HTTP 403.
WS_POLICY_VIOLATION = 1008


class ReadTokenGate:
    def __init__(self, app: ASGIApp, token: SecretStr | None) -> None:
        self.app = app
        self.token = token

    def _open(self, path: str) -> bool:
        return path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token is None
            or scope["type"] not in ("http", "websocket")
            or self._open(scope.get("path", "/"))
        ):
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        token = access.presented(Headers(scope=scope).get("authorization"), query)
        if access.allowed(self.token, token):
            await self.app(scope, receive, send)
            return
        why = "wrong read token" if token else "this relay requires a read token"
        log.info("refused %s %s: %s", scope["type"], scope.get("path"), why)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": why})
            return
        answer = JSONResponse(
            {"error": f"{why}: send Authorization: Bearer <token> or ?token=<token>"},
            status_code=401,
            headers={"WWW-Authenticate": access.CHALLENGE},
        )
        await answer(scope, receive, send)
