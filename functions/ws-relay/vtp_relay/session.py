"""The page's session: `POST /api/session` with a credential in `Authorization: Bearer` answers
a cookie holding a signed session token (`vtp.links`, kind "session") with the credential's
name and its `view`/`submit` scopes, for `session_ttl_seconds`.

Why a cookie: a browser's WebSocket and EventSource cannot send an Authorization header, and
a credential in their URLs would land in logs. The cookie is HttpOnly (scripts cannot read
it), SameSite=Strict (another site's page cannot use it) and short-lived; `operate` is never
in it (the page does not operate). `GET` says who the session is, `DELETE` ends it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vtp import access, links
from vtp.errors import Conflict, Unauthorized
from vtp.settings import Settings

_PAGE_SCOPES = frozenset({access.Scope.VIEW, access.Scope.SUBMIT})


class SessionApi:
    def __init__(self, settings: Settings, gate: access.Gate) -> None:
        self.settings = settings
        self.gate = gate

    async def create(self, request: Request) -> Response:
        token = access.bearer(request.headers.get("authorization"))
        if token is None or links.looks_signed(token):
            raise Unauthorized("POST /api/session with Authorization: Bearer <credential>")
        cred = self.gate.credential(token)
        if cred is None:
            raise Unauthorized("unknown credential")
        secret = self.settings.link_secret
        if secret is None:
            raise Conflict("this deployment signs no sessions: set the vtp-link-secret secret")
        ttl = self.settings.session_ttl_seconds
        expires = int(time.time()) + ttl
        scopes = sorted(cred.scopes & _PAGE_SCOPES)
        session = links.mint(secret, None, expires, scopes, name=cred.name, kind="session")
        answer = JSONResponse(
            {
                "name": cred.name,
                "scopes": scopes,
                "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
            }
        )
        answer.set_cookie(
            access.SESSION_COOKIE,
            session,
            max_age=ttl,
            httponly=True,
            samesite="strict",
            secure=_https(request),
            path="/",
        )
        answer.headers["Cache-Control"] = "no-store"
        return answer

    async def show(self, request: Request) -> Response:
        presented = access.Presented(
            authorization=request.headers.get("authorization"),
            query=dict(request.query_params),
            session=request.cookies.get(access.SESSION_COOKIE),
        )
        principal = self.gate.authenticate(presented)
        if principal is None:
            if self.gate.open:
                principal = access.ANYONE
            else:
                raise Unauthorized("no session: sign in with a credential")
        return JSONResponse(
            {
                "name": principal.name,
                "scopes": sorted(principal.scopes),
                "job": principal.job,
                "via": principal.via,
                "open": self.gate.open,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def delete(self, request: Request) -> Response:
        answer = JSONResponse({"signed_out": True})
        answer.delete_cookie(access.SESSION_COOKIE, path="/")
        return answer


def _https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"
