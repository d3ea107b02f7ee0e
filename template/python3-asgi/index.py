"""The server of the python3-asgi template: uvicorn serving the function's ASGI app on :8080.

There is no of-watchdog in front (see the Dockerfile for why): this process is the whole
function, so it answers the platform's health checks itself.

Handler contract
----------------
`function/handler.py` defines `app`, an ASGI 3 application (Starlette, FastAPI, a bare
`async def app(scope, receive, send)`...). HTTP, WebSocket and lifespan events all reach it,
except `/_/health` and `/_/ready`, which are answered here (200, "OK", any method) and never
reach the app, so a platform probe cannot be broken by the handler's routing.

Optional: `function/handler.py` may define `on_sigterm()`, a plain function called in the
event loop as soon as SIGTERM arrives, before uvicorn waits for open connections. Long-lived
responses (Server-Sent Events) use it to end themselves: uvicorn closes WebSockets with 1012
on shutdown, but it has no way to tell an endless HTTP response to stop.

Environment
-----------
* `UPSTREAM_PORT`, else `PORT`, else 8080: the port to listen on.
* `LISTEN_HOST`: the address. By default 127.0.0.1 when `UPSTREAM_PORT` is set (something on
  this host forwards to us, as the local runtime does) and 0.0.0.0 otherwise (in a container,
  where the gateway reaches the function over the network).
* `GRACEFUL_TIMEOUT` (10 s): after SIGTERM, how long open connections may take to finish
  before their tasks are cancelled. The process then exits with status 0.
* `WS_MAX_SIZE` (1 MiB): largest WebSocket message accepted from a client.
* `LOG_LEVEL` (INFO), `ACCESS_LOG` (true).

WebSocket messages are not compressed (permessage-deflate off): a compressor per connection
costs tens of KiB and compressing each broadcast once per client costs CPU, for small JSON
messages that barely shrink.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import uvicorn

# The handler folder goes on sys.path right after this file's folder, ahead of site-packages,
# so that code copied next to the handler by stack.yml's `configuration.copy` (function/vtp)
# imports as `vtp`, and wins over any installed copy of the same package.
FUNCTION_DIR = Path(__file__).resolve().parent / "function"
sys.path.insert(1, str(FUNCTION_DIR))

from function import handler  # noqa: E402  (needs the sys.path entry above)

log = logging.getLogger("index")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATHS = frozenset({"/_/health", "/_/ready"})


class HealthChecks:
    """Answers the platform's probes in front of the function's app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in HEALTH_PATHS:
            body = b"" if scope["method"] == "HEAD" else b"OK"
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", b"2"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class FunctionServer(uvicorn.Server):
    """uvicorn's server, plus the handler's `on_sigterm` hook when a stop is asked for."""

    def __init__(self, config: uvicorn.Config, on_sigterm: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_sigterm = on_sigterm
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hook_called = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._on_sigterm is None or self._hook_called or self._loop is None:
            return
        self._hook_called = True
        log.info("signal %d: stopping; asking the handler to end its open streams", sig)
        # A signal handler may run between any two bytecodes: hand the hook to the loop.
        self._loop.call_soon_threadsafe(self._run_hook)

    def _run_hook(self) -> None:
        assert self._on_sigterm is not None
        try:
            self._on_sigterm()
        except Exception:
            log.exception("the handler's on_sigterm() failed")


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


def listen_port() -> int:
    for name in ("UPSTREAM_PORT", "PORT"):
        if os.environ.get(name, "").strip():
            return _env_int(name, 8080, 1)
    return 8080


def listen_host() -> str:
    host = os.environ.get("LISTEN_HOST", "").strip()
    if host:
        return host
    return "127.0.0.1" if os.environ.get("UPSTREAM_PORT", "").strip() else "0.0.0.0"


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # Installed before uvicorn starts. uvicorn replaces it while serving, and after a
    # graceful shutdown re-raises the signal it caught, which lands here again: a stop asked
    # for is a clean exit (status 0), as the platform expects.
    raise SystemExit(0)


# Query parameters whose values are secrets or keys: a credential someone put in a URL by
# mistake (refused, but still requested), a signed link, a signature. The access log keeps
# the request, not them.
_SECRET_PARAM = re.compile(
    r"(?i)(?P<name>[?&](?:token|link|sig|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token)=)[^&\s]*"
)


class _RedactQuery(logging.Filter):
    """uvicorn's lines (the access log, a WebSocket's "accepted") without the values of
    `_SECRET_PARAM`, wherever the path is among their arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_PARAM.sub(r"\g<name><redacted>", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def main() -> int:
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(_RedactQuery())
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    app = getattr(handler, "app", None)
    if app is None or not callable(app):
        raise SystemExit("function/handler.py must define `app`, an ASGI application")
    hook = getattr(handler, "on_sigterm", None)
    config = uvicorn.Config(
        HealthChecks(app),
        host=listen_host(),
        port=listen_port(),
        lifespan="auto",
        ws_per_message_deflate=False,
        ws_max_size=_env_int("WS_MAX_SIZE", 1024 * 1024, 1024),
        timeout_graceful_shutdown=_env_int("GRACEFUL_TIMEOUT", 10, 0),
        access_log=os.environ.get("ACCESS_LOG", "true").lower() not in ("0", "false", "no"),
        log_config=None,  # keep the logging set up above
        server_header=False,
        proxy_headers=False,
    )
    server = FunctionServer(config, hook if callable(hook) else None)
    log.info("serving on http://%s:%d", config.host, config.port)
    try:
        server.run()
    except SystemExit as exc:
        return int(exc.code or 0)
    log.info("stopped")
    return 0 if server.started or server.should_exit else 1


if __name__ == "__main__":
    sys.exit(main())
