"""The queue-worker: OpenFaaS CE's semantics for async calls.

For each queued request: invoke the function through the gateway, then, when the request had
an `X-Callback-Url`, POST the function's response body and headers there, adding
`X-Function-Status`, `X-Function-Name`, `X-Call-Id` and `X-Duration-Seconds`. Like CE it never
retries, neither the call nor the callback, and acknowledges the message whatever the outcome;
a connection failure is reported as 503. `max_inflight` calls run at once; a message not
acknowledged within `ack_wait` is delivered again (so keep ack_wait above the longest call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import FetchTimeoutError

from localfaas import queue
from localfaas.component import run_component
from localfaas.config import LocalConfig

log = logging.getLogger("localfaas.queue_worker")

# Headers of the function's response that describe that hop and must not be replayed.
_DROP_FROM_RESPONSE = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


class QueueWorker:
    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg
        self.slots = asyncio.Semaphore(cfg.max_inflight)
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        nc, js = await queue.connect(self.cfg.nats_url)
        consumer = ConsumerConfig(
            durable_name=queue.CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.cfg.ack_wait,
            max_ack_pending=self.cfg.max_inflight,
        )
        sub = await js.pull_subscribe(queue.SUBJECT, durable=queue.CONSUMER, config=consumer)
        log.info(
            "consuming %s: max_inflight=%d ack_wait=%.0fs",
            queue.SUBJECT,
            self.cfg.max_inflight,
            self.cfg.ack_wait,
        )
        timeout = aiohttp.ClientTimeout(total=self.cfg.upstream_timeout + 5)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            while not self.stopping.is_set():
                await self.slots.acquire()
                try:
                    msgs = await sub.fetch(1, timeout=1.0)
                except FetchTimeoutError:
                    self.slots.release()
                    continue
                except Exception as exc:
                    self.slots.release()
                    log.warning("fetch failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self.handle(session, msg))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=10)
        # close, not drain: draining a pull subscription waits out its pending fetch.
        await nc.close()

    async def handle(self, session: aiohttp.ClientSession, msg: queue.Msg) -> None:
        try:
            try:
                req = queue.QueuedRequest.model_validate_json(msg.data)
            except ValueError as exc:
                log.error("dropping malformed queue message: %s", exc)
                return
            await self.process(session, req)
        finally:
            with contextlib.suppress(Exception):
                await msg.ack()
            self.slots.release()

    async def process(self, session: aiohttp.ClientSession, req: queue.QueuedRequest) -> None:
        url = f"{self.cfg.gateway_url}/function/{req.function}{req.path if req.path != '/' else ''}"
        if req.query:
            url += "?" + req.query
        t0 = time.monotonic()
        status = 503
        body = b""
        resp_headers: list[tuple[str, str]] = []
        try:
            async with session.request(req.method, url, headers=req.headers, data=req.body) as resp:
                body = await resp.read()
                status = resp.status
                resp_headers = [
                    (k, v) for k, v in resp.headers.items() if k.lower() not in _DROP_FROM_RESPONSE
                ]
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("invoke %s call_id=%s failed: %r", req.function, req.call_id, exc)
        duration = time.monotonic() - t0
        log.info(
            "invoked %s call_id=%s status=%d in %.3fs", req.function, req.call_id, status, duration
        )
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
            async with session.post(
                req.callback_url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=60),
            ) as cb:
                await cb.read()
                log.info("callback %s for %s: %d", req.callback_url, req.call_id, cb.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # CE does not retry callbacks either; the log is all there is.
            log.warning("callback %s for %s failed: %r", req.callback_url, req.call_id, exc)


def main() -> None:
    run_component(QueueWorker)


if __name__ == "__main__":
    main()
