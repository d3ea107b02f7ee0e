"""The cron-connector: invokes functions annotated `topic: cron-function` on their `schedule`.

Like the OpenFaaS cron-connector, calls go through the gateway's synchronous route and a slow
call never delays another function's schedule. Schedules are standard five-field cron
expressions; as a local-only extension a sixth field gives seconds (croniter's syntax), which
the tests use so they need not wait a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

import aiohttp
from croniter import croniter

from localfaas.component import run_component
from localfaas.config import LocalConfig
from localfaas.registry import FunctionEntry, RegistryWatcher

log = logging.getLogger("localfaas.cron")

TOPIC = "cron-function"


def cron_functions(functions: dict[str, FunctionEntry]) -> dict[str, str]:
    """name -> schedule of the functions the cron-connector would pick up."""
    out = {}
    for name, entry in functions.items():
        topics = [t.strip() for t in entry.annotations.get("topic", "").split(",")]
        schedule = entry.annotations.get("schedule", "").strip()
        if TOPIC in topics and schedule:
            if not croniter.is_valid(schedule):
                log.error("function %s: invalid schedule %r, ignored", name, schedule)
                continue
            out[name] = schedule
    return out


class CronRunner:
    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg
        self.registry = RegistryWatcher(cfg)
        self.stopping = asyncio.Event()
        self.next_run: dict[tuple[str, str], float] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def _next(self, schedule: str, after: float) -> float:
        base = datetime.fromtimestamp(after, UTC)
        return float(croniter(schedule, base).get_next(float))

    async def run(self) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.upstream_timeout)
        ) as session:
            while not self.stopping.is_set():
                now = time.time()
                wanted = {(n, s) for n, s in cron_functions(self.registry.get()).items()}
                for key in list(self.next_run):
                    if key not in wanted:
                        del self.next_run[key]
                for key in wanted:
                    due = self.next_run.setdefault(key, self._next(key[1], now))
                    if now >= due:
                        self.next_run[key] = self._next(key[1], now)
                        task = asyncio.create_task(self.invoke(session, key[0]))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=0.25)

    async def invoke(self, session: aiohttp.ClientSession, name: str) -> None:
        url = f"{self.cfg.gateway_url}/function/{name}"
        t0 = time.monotonic()
        try:
            async with session.post(url, data=b"", headers={"X-Connector": "cron-connector"}) as r:
                await r.read()
                log.info("cron invoked %s: %d in %.3fs", name, r.status, time.monotonic() - t0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cron invoke %s failed: %r", name, exc)


def main() -> None:
    run_component(CronRunner)


if __name__ == "__main__":
    main()
