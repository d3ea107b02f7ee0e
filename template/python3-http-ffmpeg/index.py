"""The upstream HTTP server of the python3-http-ffmpeg template.

In the image, of-watchdog (`mode=http`) listens on :8080 and forwards every call to this
server on 127.0.0.1:5000. The local runtime starts this file directly, without of-watchdog,
with `UPSTREAM_PORT` set; so it answers `/_/health` and `/_/ready` itself and never depends on
anything of-watchdog adds.

Handler contract
----------------
`function/handler.py` defines `handle(event, context)`.

* `event.body` is the whole request body as bytes. Chunked bodies are read too: of-watchdog
  streams the request with chunked transfer encoding and no Content-Length.
* `event.headers` is a case-insensitive header mapping, `event.method` the HTTP method,
  `event.query` the query-string multi-dict (`.get(k)`, `.getlist(k)`), `event.path` the path.
* `context.hostname` is the container's hostname.

`/_/health` and `/_/ready` are answered here (200, "OK") and never reach the handler. Every
other path, with any of the methods GET HEAD POST PUT PATCH DELETE OPTIONS, goes to the
handler (HEAD responses carry no body).

What a handler may return
-------------------------
* A dict with a `statusCode` or a `body` key is a response envelope, as in the stock template:
  `statusCode` (int, default 200), `body` (encoded as below), `headers` (a dict; a list value
  sends the header once per item, e.g. several Set-Cookie).
* Anything else is a bare body sent with status 200. A dict with neither key is therefore a
  JSON body. (A JSON object that has a `statusCode` or `body` key of its own must be wrapped in
  an envelope, or it would be read as one.)

Bodies are encoded by type, and a Content-Type header set by the handler always wins:

* dict, list, tuple, int, float, bool: JSON, `application/json`;
* bytes, bytearray, memoryview: sent unchanged, `application/octet-stream`;
* str: UTF-8, `text/plain; charset=utf-8`;
* None: empty body, no Content-Type.

Any other type is a handler bug and answered like an exception.

Errors are JSON, never an HTML page
-----------------------------------
An exception in the handler (or an unencodable return value) is answered with 500 and
`{"error": "internal error", "call_id": <X-Call-Id or null>}`; the traceback goes to stderr,
which of-watchdog copies into the function's logs. Errors raised before the handler runs
(405 for a method outside GET HEAD POST PUT PATCH DELETE OPTIONS, 413 for a body over the
limit) are JSON of the same shape with the reason as `error`.

Optional: `function/handler.py` may define `on_sigterm()`, a plain function called (in the
main thread, so it must be quick: set a flag) as soon as this process gets SIGTERM, before
the calls in flight are given their last seconds. Under of-watchdog the process gets SIGTERM
only when its whole process group is signalled (of-watchdog itself drains and does not pass
the signal on); the local runtime signals the group.

Environment: `UPSTREAM_PORT` (5000), `WAITRESS_THREADS` (8), `MAX_REQUEST_BODY_BYTES`
(32 MiB: this pipeline passes object keys, never media, through function calls), `LOG_LEVEL`
(INFO). SIGTERM stops the server and exits with status 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

import waitress
from flask import Flask, Response, request
from werkzeug.datastructures import Headers, MultiDict
from werkzeug.exceptions import HTTPException

# The handler folder goes on sys.path right after this file's folder, ahead of site-packages,
# so that code copied next to the handler by stack.yml's `configuration.copy` (function/vtp)
# imports as `vtp`, and wins over any installed copy of the same package.
FUNCTION_DIR = Path(__file__).resolve().parent / "function"
sys.path.insert(1, str(FUNCTION_DIR))

from function import handler  # noqa: E402  (needs the sys.path entry above)

log = logging.getLogger("index")

HANDLER_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_MAX_BODY = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    """One request as the handler sees it."""

    body: bytes
    headers: Headers
    method: str
    query: MultiDict[str, str]
    path: str


@dataclass(frozen=True, slots=True)
class Context:
    """What the handler may want to know about where it runs."""

    hostname: str


class _Response(Response):
    # Flask would label every response text/html; we set a Content-Type only when we know it.
    default_mimetype = None


def _encode(body: object) -> tuple[bytes, str | None]:
    """Bytes to send and the Content-Type they get unless the handler chose one."""
    if body is None:
        return b"", None
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), "application/octet-stream"
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    if isinstance(body, dict | list | tuple | int | float):
        # allow_nan=False: NaN and Infinity are not JSON and would break strict clients.
        text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8"), "application/json"
    raise TypeError(f"handler returned a body of type {type(body).__name__}, which has no encoding")


def build_response(result: object) -> Response:
    """Turn a handler's return value into a response (rules in the module docstring)."""
    if isinstance(result, dict) and ("statusCode" in result or "body" in result):
        status = result.get("statusCode", 200)
        body = result.get("body")
        headers = result.get("headers") or {}
    else:
        status, body, headers = 200, result, {}
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"handler returned statusCode {status!r}; expected an int in 100-599")
    if not isinstance(headers, Mapping):
        raise TypeError(f"handler returned headers of type {type(headers).__name__}")
    data, default_type = _encode(body)
    response = _Response(data, status=status)
    for name, value in headers.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            response.headers.add(str(name), str(item))
    if default_type is not None and "Content-Type" not in response.headers:
        response.headers["Content-Type"] = default_type
    return response


def _error(status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> Response:
    body = {"error": reason, "call_id": request.headers.get("X-Call-Id")}
    response = build_response({"statusCode": status, "body": body})
    for name, value in headers or []:
        response.headers.add(name, value)
    return response


def create_app(
    handle: Callable[[Event, Context], object], context: Context, max_body: int
) -> Flask:
    """The Flask app: health routes, the handler on every other path, JSON errors."""
    # No static folder: its route would take /static/* away from the handler.
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_body
    # Paths reach the handler as sent: no redirect from //a to /a (an HTML 308 page).
    app.url_map.merge_slashes = False

    def health() -> Response:
        return _Response(b"OK", status=200, mimetype="text/plain")

    def call_handler(path: str = "") -> Response:
        # Outside the try: a body over the limit is the caller's 413, not our 500.
        body = request.get_data(cache=False)
        event = Event(
            body=body,
            headers=Headers(request.headers),
            method=request.method,
            query=request.args,
            path=request.path,
        )
        try:
            return build_response(handle(event, context))
        except Exception:
            call_id = request.headers.get("X-Call-Id")
            log.exception("handler failed: %s %s (call_id=%s)", event.method, event.path, call_id)
            return _error(500, "internal error")

    # Reserved for health checks whatever the method, as under of-watchdog: the handler never
    # sees these two paths.
    for route in ("/_/health", "/_/ready"):
        app.add_url_rule(route, route, health, methods=list(HANDLER_METHODS))
    # HEAD and OPTIONS are listed on purpose and Flask's automatic OPTIONS answer is off, so
    # the handler sees every request with a method from HANDLER_METHODS.
    app.add_url_rule(
        "/",
        "handler",
        call_handler,
        methods=list(HANDLER_METHODS),
        provide_automatic_options=False,
    )
    app.add_url_rule(
        "/<path:path>",
        "handler",
        call_handler,
        methods=list(HANDLER_METHODS),
        provide_automatic_options=False,
    )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Keep headers such as Allow (405), drop the HTML page's Content-Type.
        extra = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return _error(exc.code or 500, (exc.name or "error").lower(), extra)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.error("unexpected error serving %s %s", request.method, request.path, exc_info=exc)
        return _error(500, "internal error")

    return app


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value} is below the minimum of {minimum}")
    return value


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # The handler's own hook first (a long call may want to stop and record why); then
    # waitress's run() catches SystemExit, lets its worker threads finish (up to 5 s) and
    # returns; main() then closes the listening socket and exits with status 0.
    log.info("SIGTERM received: shutting down")
    hook = getattr(handler, "on_sigterm", None)
    if callable(hook):
        try:
            hook()
        except Exception:
            log.exception("the handler's on_sigterm() failed")
    raise SystemExit(0)


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    port = _env_int("UPSTREAM_PORT", 5000, 1)
    threads = _env_int("WAITRESS_THREADS", 8, 1)
    max_body = _env_int("MAX_REQUEST_BODY_BYTES", DEFAULT_MAX_BODY, 1)
    context = Context(hostname=os.environ.get("HOSTNAME", "localhost"))
    app = create_app(handler.handle, context, max_body)
    signal.signal(signal.SIGTERM, _on_sigterm)
    server = waitress.create_server(
        app,
        host="127.0.0.1",
        port=port,
        threads=threads,
        # waitress answers a body over its own limit with a plain-text page; keeping its limit
        # at twice Flask's lets Flask give the JSON 413 for most oversized bodies.
        max_request_body_size=2 * max_body,
        # poll() instead of select(): no 1024 file-descriptor ceiling under many connections.
        asyncore_use_poll=True,
    )
    log.info("serving on http://127.0.0.1:%d with %d threads", port, threads)
    try:
        server.run()
    finally:
        server.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
