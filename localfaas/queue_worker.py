"""The queue-worker: OpenFaaS CE's semantics for async calls (nats-queue-worker 0.14.0).

For each queued request: POST it to the function through the gateway (always POST, whatever
the original method, as CE does), then, when the request had an `X-Callback-Url`, POST the
function's response body and headers there, adding `X-Function-Status`, `X-Function-Name`,
`X-Call-Id` and `X-Duration-Seconds`. Like CE it never retries, neither the call nor the
callback, and acknowledges the message whatever the outcome; a connection failure is
reported as 503. A worker stopped mid-call hands the message back for redelivery (see
`run_one`), so a restarted stack does not wait `ack_wait` for it.

Concurrency: one call at a time per queue-worker. CE 0.14.0 no longer reads `max_inflight`
(its log says "Concurrency: 1") and the CE gateway has no named queues, so every async call,
split's and every transcode's, waits in one queue for a free worker. Parallelism comes from
replicas only: `LOCALFAAS_QUEUE_WORKERS` processes share one durable consumer, as replicas of
the real queue-worker share one NATS Streaming queue group. A message not acknowledged within
`ack_wait` is delivered again (so keep ack_wait above the longest call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import aiohttp
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import FetchTimeoutError

from localfaas import queue
from localfaas.component import run_component
from localfaas.config import LocalConfig
from localfaas.redact import redact

log = logging.getLogger("localfaas.queue_worker")

# Headers of the function's response that describe that hop and must not be replayed.
_DROP_FROM_RESPONSE = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)
# How long one fetch waits for a message before asking again. A fetch is not cut short (a
# message the server sent to a fetch given up on would wait out ack_wait), so this is also
# how long a stopping idle worker takes to go: short, for a quick `make down`.
FETCH_WAIT_S = 1.0


class QueueWorker:
    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg
        self.replica = os.environ.get("LOCALFAAS_REPLICA", "0")
        self.stopping = asyncio.Event()
        self.count = 0

    async def run(self) -> None:
        nc, js = await queue.connect(self.cfg.nats_url)
        await queue.ensure_consumer(js, ack_wait=self.cfg.ack_wait)
        sub = await js.pull_subscribe(queue.SUBJECT, durable=queue.CONSUMER)
        log.info(
            "queue-worker %s consuming %s. Concurrency: 1 ack_wait=%.0fs",
            self.replica,
            queue.SUBJECT,
            self.cfg.ack_wait,
        )
        # No timeout on the function call, as in CE: the gateway and the function's own
        # exec_timeout end a call that runs too long.
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            while not self.stopping.is_set():
                try:
                    msgs = await sub.fetch(1, timeout=FETCH_WAIT_S)
                except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                    continue  # nothing queued: the normal state of an idle worker
                except Exception as exc:
                    log.warning("fetch failed: %r", exc)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    # One at a time: the next fetch waits for this call and its callback.
                    await self.run_one(session, msg)
        # close, not drain: draining a pull subscription waits out its pending fetch.
        await nc.close()

    async def run_one(self, session: aiohttp.ClientSession, msg: queue.Msg) -> None:
        """Handle one message, unless the worker is told to stop first: then the call is
        abandoned (no callback) and handed back to the queue at once, as NATS Streaming does
        with the unacknowledged message of a queue-worker that comes back under its client
        id (seen on nats-queue-worker 0.14.0, after SIGTERM and SIGKILL alike): the next
        worker to fetch gets it, marked redelivered, without waiting for ack_wait."""
        call = asyncio.create_task(self.handle(session, msg))
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if call not in done:
            log.warning("stopping with a call in flight: handing it back to the queue")
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            with contextlib.suppress(Exception):
                await msg.nak()

    async def handle(self, session: aiohttp.ClientSession, msg: queue.Msg) -> None:
        """Process one message and acknowledge it, whatever the outcome (as CE does)."""
        try:
            req = queue.QueuedRequest.model_validate_json(msg.data)
        except ValueError as exc:
            log.error("dropping malformed queue message: %s", exc)
        else:
            self.count += 1
            try:
                await self.process(session, req)
            except asyncio.CancelledError:
                raise  # abandoned (see run_one): no ack
            except Exception:
                log.exception("handling a queue message failed")
        with contextlib.suppress(Exception):
            await msg.ack()

    async def process(self, session: aiohttp.ClientSession, req: queue.QueuedRequest) -> None:
        n = self.count
        url = f"{self.cfg.gateway_url}/function/{req.function}{req.path if req.path != '/' else ''}"
        if req.query:
            url += "?" + req.query
        log.info(
            "[#%d] Invoking: %s with %d bytes, via: %s", n, req.function, len(req.body), redact(url)
        )
        t0 = time.monotonic()
        status = 503
        body = b""
        resp_headers: list[tuple[str, str]] = []
        try:
            async with session.post(url, headers=req.headers, data=req.body) as resp:
                body = await resp.read()
                status = resp.status
                resp_headers = [
                    (k, v) for k, v in resp.headers.items() if k.lower() not in _DROP_FROM_RESPONSE
                ]
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("[#%d] Error invoking %s: %r", n, req.function, exc)
        duration = time.monotonic() - t0
        log.info("[#%d] Invoked: %s [%d] in %.3fs call_id=%s", n, req.function, status, duration,
                 req.call_id)  # fmt: skip
        if not req.callback_url:
            return
        headers = [
            (k, v)
            for k, v in resp_headers
            if k.lower()
            not in ("x-function-status", "x-function-name", "x-call-id", "x-duration-seconds")
        ]
        headers += [
            ("X-Function-Status", str(status)),
            ("X-Function-Name", req.function),
            ("X-Call-Id", req.call_id),
            ("X-Duration-Seconds", f"{duration:.6f}"),
        ]
        try:
            async with session.post(req.callback_url, data=body, headers=headers) as cb:
                await cb.read()
                log.info("[#%d] Posted result for %s to callback-url: %s, status: %d", n,
                         req.function, redact(req.callback_url), cb.status)  # fmt: skip
        except (aiohttp.ClientError, TimeoutError) as exc:
            # CE does not retry callbacks either; the log is all there is.
            log.warning(
                "[#%d] Error posting to callback-url %s: %r", n, redact(req.callback_url), exc
            )


def main() -> None:
    run_component(QueueWorker)


if __name__ == "__main__":
    main()
