"""`GET /play/<token>/<job>/<path>`: a private job's outputs (vtp.privacy), for players, by a
signed URL with an expiry.

The token (vtp.links, scope "play") names one job and an expiry, and is the only key: the
route is open to anyone who holds such a URL, as the public outputs bucket is to anyone who
holds a job's URL, but only until the token expires, and only for its own job's files. Status
mints these URLs (vtp.pipeline.urls) for as long as `play_url_ttl_seconds` says.

Players resolve the URLs a playlist names against the playlist's own URL, and hls.js and
dash.js take the URL a response finally came from, after redirects. So what names other files
by relative URL is served here, from the store, under the route's own URL, which carries the
token in its path: HLS playlists, the DASH manifest and WebVTT files (the storyboard's index
names its sprite sheets). Were they redirected to a presigned URL, every relative URL in them
would resolve to an unsigned object URL, which the private bucket refuses. Everything else
(segments, init segments, MP4s, posters, sprite sheets) answers 302 to a presigned GET that
expires no later than the token: the bytes of video never pass through ws-relay.

Nothing here is cached by anyone (`Cache-Control: private, no-store`): a cached playlist or
redirect would outlive its token. The token never reaches a log line: refusals name the path
only, and the access log's request lines show the token's place as `<token>`.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import PurePosixPath

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from vtp import links
from vtp.errors import Forbidden, VtpError, http_status
from vtp.links import Claims
from vtp.pipeline.urls import PLAY_ROUTE, PLAY_SCOPE
from vtp.settings import Settings
from vtp.storage import content_type_for, lazy_storage

log = logging.getLogger(__name__)

# Served by the route itself, not redirected: they name other files by relative URL.
SERVED_SUFFIXES = frozenset({".m3u8", ".mpd", ".vtt"})
# One path segment of a job's outputs as vtp.layout names them (`360p`, `attempt-2-backup`,
# `seg-00001.m4s`, `sheet-001.jpg`): no dot first, so never `.` or `..`.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_SEGMENTS = 8
NO_STORE = "private, no-store"
# Players on another origin (the page straight on ws-relay's port, a platform's own site)
# read these with CORS; the token is the credential, never a cookie, so any origin may.
_HEADERS = {
    "Cache-Control": NO_STORE,
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range",
    # The token is in this URL: never send it on as a Referer.
    "Referrer-Policy": "no-referrer",
}
_PREFLIGHT = _HEADERS | {
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range",
    "Access-Control-Max-Age": "3600",
}
# The token's place in a request line, for the access log.
_TOKEN_IN_PATH = re.compile(re.escape(PLAY_ROUTE) + r"[^/?#\s]+")


def object_key(claims: Claims, path: str) -> str:
    """The object `path` names, if it is one of the token's job's outputs: `<job>/...`, each
    segment a plain name. Anything else (another job, `..`, an absolute path, an empty or odd
    segment) is Forbidden: the token opens its own job's folder and nothing beside it."""
    parts = path.split("/")
    if len(parts) < 2 or parts[0] != claims.job:
        raise Forbidden("a play URL opens its own job's outputs only")
    if len(parts) > MAX_SEGMENTS + 1 or not all(_SEGMENT.match(p) for p in parts[1:]):
        raise Forbidden("not a path of this job's outputs")
    return path


def hide_tokens(text: str) -> str:
    """`text` with the token of any play URL in it replaced by `<token>`."""
    return _TOKEN_IN_PATH.sub(PLAY_ROUTE + "<token>", text)


class _HideTokens(logging.Filter):
    """uvicorn's access log lines without play tokens (their paths are in its args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(hide_tokens(a) if isinstance(a, str) else a for a in record.args)
        return True


def hide_tokens_in_access_log() -> None:
    """Once per process: the server's access log never shows a play token."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _HideTokens) for f in access.filters):
        access.addFilter(_HideTokens())


class PlayRoute:
    """The route's endpoint. Its storage clients are built on first use, once per process:
    presigning is local computation; reading a playlist is a blocking call, run in the
    threadpool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = lazy_storage(settings)

    def claims(self, token: str, now: float) -> Claims:
        """The token's claims, if it is a play token of this deployment and still valid."""
        secret = self.settings.link_secret
        if secret is None:
            raise Forbidden("this deployment signs no play URLs (no vtp-link-secret)")
        # A token of another kind (a viewer link, a session) is refused by its kind.
        return links.verify(secret, token, now, kind=PLAY_SCOPE)

    async def endpoint(self, request: Request) -> Response:
        if request.method == "OPTIONS":  # a CORS preflight (a Range header): no token needed
            return Response(status_code=204, headers=_PREFLIGHT)
        path = request.path_params["path"]
        now = time.time()
        try:
            claims = self.claims(request.path_params["token"], now)
            key = object_key(claims, path)
            bucket = self.settings.private_outputs_bucket
            if PurePosixPath(key).suffix.lower() in SERVED_SUFFIXES:
                body = await run_in_threadpool(self.storage().get_bytes, bucket, key)
                return Response(body, media_type=content_type_for(key), headers=_HEADERS)
            # Whole seconds, rounded down: the presigned URL dies no later than the token.
            seconds = int(claims.expires_at - now)
            if seconds < 1:
                raise Forbidden("the play URL expires within a second: ask for a new one")
            url = self.storage().presigned_get(bucket, key, expires=seconds, public=True, minimum=1)
            return RedirectResponse(url, status_code=302, headers=_HEADERS)
        except VtpError as exc:
            log.info("play %s refused: %s", path[:200], exc.reason)
            status = http_status(exc)
            return JSONResponse({"error": exc.reason}, status_code=status, headers=_HEADERS)
