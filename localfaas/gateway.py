"""The gateway: OpenFaaS CE's HTTP routes in front of the local function processes.

Routes, as on the CE gateway:
- `/function/<name>[.<namespace>][/<path>]`: proxied synchronously (an unknown function or
  another namespace: 404);
- `/async-function/<name>[...]`: POST only; queued on NATS JetStream, `202 Accepted` with an
  empty body at once, for any name (the CE gateway does not look the function up: a call to
  a function that does not exist fails later, in the queue-worker);
- `/healthz`; `/system/functions` behind basic auth, like every `/system/*` route.

The gateway also plays the parts of the provider's proxy and each function's of-watchdog,
with their status codes: a function process that cannot be reached gives 500 `Can't reach
service for: <fn>.` (faas-provider), a call past the function's `exec_timeout` 504 with an
empty body (of-watchdog, which lets the handler run on), past the gateway's own
`upstream_timeout` 502 with an empty body.

Streaming (`LOCALFAAS_GATEWAY_STREAMING`), because CE gateways differ and clients must cope:
- `accept` (gateways from early 2024, faas-provider >= 0.25.2): a response is streamed as it
  comes only when the request says `Accept: text/event-stream`;
- `buffer` (gateway 0.25.4 and older): nothing is flushed early; the client gets the headers
  with the first 512 bytes, then the body in blocks (`gateway_buffer_bytes`) as the write
  buffers fill, so a trickle of small events arrives in bursts, minutes after it was sent.
Either way, without `Accept: text/event-stream`, a function behind of-watchdog (the
python3-http templates) is read whole before anything is sent, as of-watchdog does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from localfaas import queue
from localfaas.config import LocalConfig
from localfaas.redact import redact
from localfaas.registry import FunctionEntry, RegistryWatcher, scaled_to_zero

log = logging.getLogger("localfaas.gateway")

# Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus those aiohttp sets.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
_STREAM_CHUNK = 64 * 1024
# What a CE gateway 0.25.4 lets out of a response it copies without flushing: Go's
# ResponseWriter.ReadFrom sends the headers with the first 512 bytes (its content-sniffing
# length), then the rest in buffered blocks; on the real gateway an SSE client saw 512 bytes,
# then nothing for minutes, then ~30 KB at once (LOCALFAAS_GATEWAY_BUFFER_BYTES).
GO_SNIFF_LEN = 512
# Set by the gateway on every call (kept when the client sent them), on request and response.
CALL_HEADERS = ("x-call-id", "x-start-time")


def start_time_header() -> str:
    """X-Start-Time as the CE gateway writes it: Unix time in nanoseconds."""
    return str(time.time_ns())


def forwardable(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The end-to-end headers of a request or response, repeated names kept."""
    return [(k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP]


class Gateway:
    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg
        self.registry = RegistryWatcher(cfg)
        self.invocations: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None
        self.nc: queue.NATS | None = None
        self.js: queue.JetStreamContext | None = None

    # --- lifecycle ------------------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        # No total timeout on the session: each call sets its own from the function's limits.
        # No pool limit: each open SSE stream holds a connection for as long as it lasts.
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0),
        )
        self.nc, self.js = await queue.connect(self.cfg.nats_url)

    async def on_cleanup(self, app: web.Application) -> None:
        if self.session:
            await self.session.close()
        if self.nc:
            await self.nc.drain()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.on_startup.append(self.on_startup)
        app.on_cleanup.append(self.on_cleanup)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/system/functions", self.list_functions)
        app.router.add_get("/system/function/{name}", self.get_function)
        app.router.add_route("*", "/function/{name}", self.invoke)
        app.router.add_route("*", "/function/{name}/{tail:.*}", self.invoke)
        # POST only, as on the CE gateway (its router answers 405 for anything else).
        app.router.add_post("/async-function/{name}", self.invoke_async)
        app.router.add_post("/async-function/{name}/{tail:.*}", self.invoke_async)
        return app

    # --- helpers ---------------------------------------------------------------------------
    def lookup(self, raw_name: str) -> FunctionEntry:
        """`name` or `name.namespace`, as the CE gateway resolves them."""
        functions = self.registry.get()
        name, _, namespace = raw_name.partition(".")
        entry = functions.get(name)
        if entry is None or (namespace and namespace != entry.namespace):
            raise web.HTTPNotFound(text=f"error finding function {raw_name}: not found\n")
        return entry

    def check_auth(self, request: web.Request) -> None:
        c = self.cfg.credentials
        auth = request.headers.get("Authorization", "")
        try:
            creds = aiohttp.BasicAuth.decode(auth) if auth else None
        except ValueError:
            creds = None
        if creds is None or (creds.login, creds.password) != (
            c["gateway_user"],
            c["gateway_password"],
        ):
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Basic realm="Restricted"'}, text="Unauthorized\n"
            )

    @staticmethod
    def call_headers(request: web.Request) -> tuple[str, str, list[tuple[str, str]]]:
        """The call's id and start time (kept when the client set them, as the CE gateway
        does) and the request headers to pass on, carrying exactly those two."""
        call_id = request.headers.get("X-Call-Id") or str(uuid.uuid4())
        start = request.headers.get("X-Start-Time") or start_time_header()
        headers = [(k, v) for k, v in forwardable(request.headers) if k.lower() not in CALL_HEADERS]
        headers += [("X-Call-Id", call_id), ("X-Start-Time", start)]
        return call_id, start, headers

    # --- routes ------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    def _describe(self, e: FunctionEntry) -> dict[str, object]:
        return {
            "name": e.name,
            "image": e.image,
            "namespace": e.namespace,
            "envProcess": e.env_process,
            "labels": e.labels,
            "annotations": e.annotations,
            "replicas": 0 if scaled_to_zero(self.cfg, e.name) else len(e.urls),
            "availableReplicas": 0 if scaled_to_zero(self.cfg, e.name) else len(e.urls),
            "invocationCount": self.invocations[e.name],
        }

    async def list_functions(self, request: web.Request) -> web.Response:
        self.check_auth(request)
        return web.json_response([self._describe(e) for e in self.registry.get().values()])

    async def get_function(self, request: web.Request) -> web.Response:
        self.check_auth(request)
        return web.json_response(self._describe(self.lookup(request.match_info["name"])))

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        entry = self.lookup(request.match_info["name"])
        call_id, start, headers = self.call_headers(request)
        tail = "/" + request.match_info.get("tail", "")
        headers.append(("X-Forwarded-Host", request.host))
        self.invocations[entry.name] += 1
        url = f"{entry.pick()}{tail}"
        # of-watchdog answers 504 once exec_timeout passes; the gateway's own limit is
        # upstream_timeout. The smaller one decides.
        limit = min(entry.exec_timeout, self.cfg.upstream_timeout)
        assert self.session is not None
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                upstream = await self.session.request(
                    request.method,
                    url,
                    params=request.query,
                    headers=headers,
                    data=request.content.iter_chunked(_STREAM_CHUNK)
                    if request.can_read_body
                    else None,
                    allow_redirects=False,
                )
        except TimeoutError:
            log.warning("%s %s: no response within %.0fs", entry.name, call_id, limit)
            # of-watchdog's 504 at exec_timeout, or the gateway's 502 at upstream_timeout;
            # both with an empty body.
            status = 504 if entry.exec_timeout <= self.cfg.upstream_timeout else 502
            return self._error(status, "", call_id, start)
        except aiohttp.ClientError as exc:
            log.warning("%s %s: upstream error %s", entry.name, call_id, exc)
            # faas-provider's proxy, when the function's address does not answer.
            return self._error(500, f"Can't reach service for: {entry.name}.", call_id, start)

        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in forwardable(upstream.headers):
            if k.lower() not in CALL_HEADERS:
                response.headers.add(k, v)
        response.headers["X-Call-Id"] = call_id
        response.headers["X-Start-Time"] = start
        response.headers["X-Duration-Seconds"] = f"{time.monotonic() - t0:.6f}"
        # How the body is passed on (see the module docstring): as it comes only for an event
        # stream on a streaming gateway; whole from behind of-watchdog otherwise.
        wants_events = request.headers.get("Accept", "").startswith("text/event-stream")
        streaming = wants_events and self.cfg.gateway_streaming == "accept"
        whole = entry.watchdog and not wants_events
        if "Content-Length" in upstream.headers:
            response.content_length = int(upstream.headers["Content-Length"])
        else:
            response.enable_chunked_encoding()
        try:
            remaining = limit - (time.monotonic() - t0)
            async with asyncio.timeout(max(remaining, 0.001)):
                if whole:
                    # of-watchdog reads the function's whole answer before sending any of it.
                    body = await upstream.read()
                    await response.prepare(request)
                    await response.write(body)
                elif streaming:
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                else:
                    await self._copy_buffered(request, upstream, response)
        except (TimeoutError, aiohttp.ClientError, ConnectionResetError) as exc:
            # Headers are gone already: all we can do is cut the body short.
            log.warning("%s %s: response interrupted: %r", entry.name, call_id, exc)
            upstream.close()
            if request.transport is not None:
                request.transport.close()
            return response
        except asyncio.CancelledError:
            # The client left (handler_cancellation): drop the upstream connection too.
            upstream.close()
            raise
        finally:
            upstream.release()
        await response.write_eof()
        return response

    async def _copy_buffered(
        self, request: web.Request, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> None:
        """The body as a Go server's buffered writer lets it out when nobody flushes: the
        status line and headers with the first GO_SNIFF_LEN bytes (or the end), then blocks
        of `gateway_buffer_bytes`, so a quiet stream shows the client next to nothing."""
        block = self.cfg.gateway_buffer_bytes
        pending = bytearray()
        async for chunk in upstream.content.iter_any():
            pending += chunk
            if not response.prepared:
                if len(pending) < GO_SNIFF_LEN:
                    continue
                await response.prepare(request)
                await response.write(bytes(pending[:GO_SNIFF_LEN]))
                del pending[:GO_SNIFF_LEN]
            while len(pending) >= block:
                await response.write(bytes(pending[:block]))
                del pending[:block]
        if not response.prepared:
            await response.prepare(request)
        if pending:
            await response.write(bytes(pending))

    def _error(self, status: int, text: str, call_id: str, start: str) -> web.Response:
        return web.Response(
            status=status,
            text=text,
            content_type="text/plain",
            headers={"X-Call-Id": call_id, "X-Start-Time": start},
        )

    async def invoke_async(self, request: web.Request) -> web.Response:
        # No look-up: the CE gateway queues a call to any name (see the module docstring).
        raw_name = request.match_info["name"]
        name, _, namespace = raw_name.partition(".")
        call_id, start, headers = self.call_headers(request)
        body = await request.read()
        if len(body) > queue.MAX_PAYLOAD_BYTES:
            raise web.HTTPRequestEntityTooLarge(
                max_size=queue.MAX_PAYLOAD_BYTES, actual_size=len(body)
            )
        msg = queue.QueuedRequest(
            function=raw_name,
            namespace=namespace or self.cfg.namespace,
            method=request.method,
            path="/" + request.match_info.get("tail", ""),
            query=request.query_string,
            headers=headers,
            body_b64=queue.QueuedRequest.encode_body(body),
            call_id=call_id,
            callback_url=request.headers.get("X-Callback-Url"),
            queued_at=time.time(),
        )
        assert self.js is not None
        try:
            await self.js.publish(queue.SUBJECT, msg.model_dump_json().encode())
        except Exception as exc:  # NATS down: say so, as the CE gateway does with a 500
            log.error("queue publish failed for %s: %s", name, exc)
            return self._error(500, f"queue error: {exc}", call_id, start)
        log.info("queued %s call_id=%s callback=%s", name, call_id, redact(msg.callback_url or ""))
        answer = {"X-Start-Time": start}
        if "X-Call-Id" not in request.headers:  # echoed only when the gateway made it up
            answer["X-Call-Id"] = call_id
        return web.Response(status=202, headers=answer)


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request, as aiohttp's, without the secrets in query strings."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.3fs',
            request.remote,
            request.method,
            redact(request.path_qs),
            response.status,
            response.body_length,
            time,
        )


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = LocalConfig()
    gw = Gateway(cfg)
    web.run_app(
        gw.app(),
        host="127.0.0.1",
        port=cfg.gateway_port,
        access_log_class=RedactingAccessLogger,
        print=None,
        handle_signals=True,
        # Cancel a handler when its client goes away, so a proxied stream (SSE) is closed
        # upstream at once instead of at its next write.
        handler_cancellation=True,
    )


if __name__ == "__main__":
    main()
