"""ws-relay figures: how long an event takes from `EventBus.publish` to a client, with 200
WebSocket clients, then 200 SSE clients on the function's port, then 200 SSE clients through the
gateway; and ws-relay's memory with 500 idle WebSocket connections.

Each event carries its publish time in `ts` (set just before the publish); a client's latency
sample is its receive time minus `ts`, over every (client, event) pair. Client and server run
on this one machine, so the figures include the benchmark's own client-side work.

Runs a stack of its own (.run/bench-ws, ports 16900+, gateway 18380) with stack.yml's functions,
so it neither needs nor disturbs `make up`'s stack or the tests'. Prints figures; asserts only
that every client got every event.

    .venv/bin/python bench/ws_latency.py [--clients 200] [--events 300] [--rate 100] [--idle 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import redis
import requests
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localfaas import procs, runtime  # noqa: E402
from localfaas.config import LocalConfig  # noqa: E402
from localfaas.registry import load_registry  # noqa: E402
from tests.ports import free_port, free_port_base  # noqa: E402
from vtp.events import EventBus, ProgressEvent  # noqa: E402
from vtp.settings import Settings  # noqa: E402

Sample = tuple[float, str]  # (receive time, raw text holding one or more events)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def relay_stats(base: str) -> dict[str, Any]:
    stats: dict[str, Any] = requests.get(f"{base}/api/relay/stats", timeout=10).json()
    return stats


def wait_clients(base: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while relay_stats(base)["clients"] != n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"relay has {relay_stats(base)['clients']} clients, expected {n}")
        time.sleep(0.1)


def publish_paced(bus: EventBus, job: str, n: int, rate: float) -> None:
    """n events at `rate` per second; each carries its own publish time in ts."""
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        bus.publish(
            ProgressEvent(
                job_id=job,
                rendition="720p",
                state="running",
                percent=round(99.0 * i / n, 2),
                ts=time.time(),
            )
        )


def latencies(samples: list[Sample], parse: str) -> list[float]:
    """Milliseconds from publish to receive, one per event received."""
    out = []
    for received, raw in samples:
        if parse == "ws":
            message = json.loads(raw)
            if message["type"] == "event":
                out.append((received - message["event"]["ts"]) * 1000)
        else:
            for line in raw.split("\n"):
                if line.startswith("data: {") and '"ts"' in line:
                    event = json.loads(line[6:])
                    if "ts" in event:
                        out.append((received - event["ts"]) * 1000)
    return out


def report(label: str, ms: list[float], clients: int, events: int) -> None:
    ms.sort()
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(
        f"{label:<34} {clients} clients x {events} events: "
        f"median {statistics.median(ms):6.2f} ms, p99 {p99:6.2f} ms, max {ms[-1]:6.2f} ms"
    )
    if len(ms) != clients * events:
        raise SystemExit(f"{label}: {len(ms)} events received, expected {clients * events}")


async def ws_round(ws_url: str, bus: EventBus, clients: int, events: int, rate: float) -> None:
    job = str(uuid.uuid4())
    conns = await asyncio.gather(
        *(connect(f"{ws_url}?job={job}", open_timeout=60) for _ in range(clients))
    )

    async def receive(ws: ClientConnection) -> list[Sample]:
        samples: list[Sample] = []
        assert json.loads(await ws.recv())["type"] == "snapshot"
        got = 0
        while got < events:
            raw = str(await ws.recv())
            samples.append((time.time(), raw))
            if raw.startswith('{"type":"event"'):
                got += 1
        return samples

    try:
        tasks = [asyncio.create_task(receive(ws)) for ws in conns]
        await asyncio.sleep(0.5)  # every snapshot is in
        await asyncio.to_thread(publish_paced, bus, job, events, rate)
        async with asyncio.timeout(60):
            results = await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(ws.close() for ws in conns))
    samples = [s for r in results for s in r]
    report("WebSocket (direct)", latencies(samples, "ws"), clients, events)


async def sse_round(
    label: str, url: str, bus: EventBus, clients: int, events: int, rate: float
) -> None:
    job = str(uuid.uuid4())
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ready = asyncio.Semaphore(0)

        async def receive() -> list[Sample]:
            samples: list[Sample] = []
            # As the page and the CLI do: a CE gateway streams only what asks for a stream.
            headers = {"Accept": "text/event-stream"}
            async with session.get(f"{url}?job={job}", headers=headers) as resp:
                resp.raise_for_status()
                buffer, got, snapshot = "", 0, False
                async for chunk in resp.content.iter_any():
                    now = time.time()
                    buffer += chunk.decode()
                    if not snapshot and "event: snapshot" in buffer:
                        snapshot = True
                        ready.release()
                    # Whole events only; a partial one waits for the next chunk.
                    whole, sep, buffer = buffer.rpartition("\n\n")
                    if sep and "event: progress" in whole:
                        samples.append((now, whole))
                        got += whole.count("event: progress")
                    if got >= events:
                        return samples
            raise RuntimeError("SSE stream ended early")

        tasks = [asyncio.create_task(receive()) for _ in range(clients)]
        async with asyncio.timeout(60):
            for _ in range(clients):
                await ready.acquire()
        await asyncio.to_thread(publish_paced, bus, job, events, rate)
        async with asyncio.timeout(60):
            results = await asyncio.gather(*tasks)
    samples = [s for r in results for s in r]
    report(label, latencies(samples, "sse"), clients, events)


async def idle_round(ws_url: str, base: str, pid: int, n: int) -> None:
    wait_clients(base, 0)
    await asyncio.sleep(1)
    before = rss_kib(pid)
    conns: list[ClientConnection] = []
    try:
        for start in range(0, n, 100):  # in batches: no thundering herd on the listen backlog
            conns += await asyncio.gather(
                *(
                    connect(f"{ws_url}?job={uuid.uuid4()}", open_timeout=60)
                    for _ in range(min(100, n - start))
                )
            )
        await asyncio.gather(*(ws.recv() for ws in conns))  # every snapshot in
        await asyncio.to_thread(wait_clients, base, n)
        await asyncio.sleep(2)
        after = rss_kib(pid)
    finally:
        await asyncio.gather(*(ws.close() for ws in conns))
    print(
        f"ws-relay RSS: {before / 1024:.1f} MiB with no clients, {after / 1024:.1f} MiB with "
        f"{n} idle WebSocket connections (+{(after - before) / 1024:.1f} MiB, "
        f"{(after - before) / n:.1f} KiB per connection)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()

    run_dir = REPO / ".run" / "bench-ws"
    cfg = LocalConfig(run_dir=run_dir, port_base=free_port_base(), gateway_port=free_port())
    runtime.down(cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        seconds = runtime.up(cfg)
        port = load_registry(cfg)["ws-relay"].port
        record = procs.running(cfg, runtime.FN_PREFIX + "ws-relay")
        assert record is not None
        base = f"http://127.0.0.1:{port}"
        ws_url = f"ws://127.0.0.1:{port}/ws"
        print(f"stack up in {seconds:.1f} s; ws-relay pid {record.pid} on :{port}")
        cpus = len(os.sched_getaffinity(0))
        print(
            f"{args.events} events per round at {args.rate:g}/s, each to every client "
            f"(one machine: clients, relay, Redis and gateway share its {cpus} CPUs)"
        )
        client = redis.Redis.from_url(cfg.redis_url)
        bus = EventBus(client, Settings().redis_prefix)
        asyncio.run(ws_round(ws_url, bus, args.clients, args.events, args.rate))
        asyncio.run(
            sse_round("SSE (direct)", f"{base}/events", bus, args.clients, args.events, args.rate)
        )
        via_gateway = args.clients
        asyncio.run(
            sse_round(
                "SSE (through the gateway)",
                f"{cfg.gateway_url}/function/ws-relay/events",
                bus,
                via_gateway,
                args.events,
                args.rate,
            )
        )
        asyncio.run(idle_round(ws_url, base, record.pid, args.idle))
        stats = relay_stats(base)
        print(
            f"relay: {stats['events_received']} events received from Redis, "
            f"{stats['sessions_served']} sessions served, "
            f"{stats['overflow_disconnects']} slow-client disconnects"
        )
        client.close()
    finally:
        if not args.keep:
            runtime.down(cfg)


if __name__ == "__main__":
    main()
