"""ws-relay's ASGI app: the progress page, its static assets, the live streams (/ws, /events),
their polling fallback (/poll), the JSON API (/api) and private jobs' play URLs (/play), wired
together by `create_app`, behind the access gate (`vtp_relay.gate`), with the page's session
(`vtp_relay.session`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from vtp import access
from vtp.settings import Settings, load_at_start
from vtp_relay.api import JobsApi, _guarded, _http_error
from vtp_relay.gate import AccessGate
from vtp_relay.options import RelayOptions
from vtp_relay.play import PlayRoute, hide_tokens_in_access_log
from vtp_relay.poll import make_poll_endpoint
from vtp_relay.session import SessionApi
from vtp_relay.streams import Relay
from vtp_relay.uploads import UploadsApi


def create_app(
    settings: Settings | None = None,
    *,
    static_dir: Path,
    options: RelayOptions | None = None,
) -> Starlette:
    """The ws-relay ASGI app: page, static assets, /ws, /events and /api. `app.state.relay`
    is the Relay (its `shutdown_streams()` belongs in the template's on_sigterm hook)."""
    settings = settings or load_at_start()
    options = options or RelayOptions()
    relay = Relay.from_settings(settings, options)
    api = JobsApi(settings)
    uploads = UploadsApi(
        settings, enabled=options.uploads_enabled, quotas=lambda: api.pipeline().quotas
    )
    gate = access.Gate(settings)
    session = SessionApi(settings, gate)
    play = PlayRoute(settings)
    hide_tokens_in_access_log()

    async def index(request: Request) -> Response:
        page = static_dir / "index.html"
        if not page.is_file():
            return JSONResponse({"error": "the progress page is not installed"}, 404)
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def stats(request: Request) -> Response:
        return JSONResponse(relay.stats())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET", "HEAD"]),
            WebSocketRoute("/ws", relay.websocket_endpoint),
            Route("/events", relay.sse_endpoint, methods=["GET"]),
            Route("/poll", make_poll_endpoint(relay), methods=["GET"]),
            Route("/api/jobs", _guarded(api.list_endpoint), methods=["GET"]),
            Route("/api/jobs/{job_id}", _guarded(api.job_endpoint), methods=["GET"]),
            Route("/api/uploads", _guarded(uploads.ticket_endpoint), methods=["POST"]),
            Route("/api/uploads/parts", _guarded(uploads.parts_endpoint), methods=["POST"]),
            Route("/api/uploads/complete", _guarded(uploads.complete_endpoint), methods=["POST"]),
            Route("/api/uploads/abort", _guarded(uploads.abort_endpoint), methods=["POST"]),
            Route("/api/relay/stats", stats, methods=["GET"]),
            Route("/api/session", _guarded(session.create), methods=["POST"]),
            Route("/api/session", _guarded(session.show), methods=["GET"]),
            Route("/api/session", _guarded(session.delete), methods=["DELETE"]),
            Route("/play/{token}/{path:path}", play.endpoint, methods=["GET", "HEAD", "OPTIONS"]),
            Mount("/static", StaticFiles(directory=static_dir, check_dir=False)),
        ],
        exception_handlers={HTTPException: _http_error},
        middleware=[Middleware(AccessGate, gate=gate)],
        lifespan=lifespan,
    )
    app.state.relay = relay
    app.state.api = api
    app.state.uploads = uploads
    return app
