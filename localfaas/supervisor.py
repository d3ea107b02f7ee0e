"""Restarts function processes that died, as an orchestrator restarts a crashed container.

Without it, a transcode killed by the OOM killer (or by a test) would leave its function
answering 502 until the next `make up`, and every retry of a rendition would fail the same
way. It only acts when a function's process is gone; redeploying changed code stays `up`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from localfaas import procs
from localfaas.component import run_component
from localfaas.config import LocalConfig
from localfaas.registry import RegistryWatcher, scaled_to_zero

log = logging.getLogger("localfaas.supervisor")

CHECK_EVERY_S = 1.0


class Supervisor:
    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg
        self.registry = RegistryWatcher(cfg)
        self.stopping = asyncio.Event()

    def dead_functions(self) -> list[str]:
        from localfaas.runtime import replica_names

        return [
            name
            for name, entry in self.registry.get().items()
            if not scaled_to_zero(self.cfg, name)
            and any(
                procs.running(self.cfg, p) is None for p in replica_names(name, len(entry.urls))
            )
        ]

    async def run(self) -> None:
        from localfaas import runtime

        while not self.stopping.is_set():
            dead = self.dead_functions()
            if dead:
                log.warning("function process gone: %s; restarting", ", ".join(dead))
                try:
                    await asyncio.to_thread(
                        runtime.start_functions,
                        self.cfg,
                        runtime.load_stacks(self.cfg),
                        dead_only=True,
                    )
                except Exception:
                    log.exception("restart failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=CHECK_EVERY_S)


def main() -> None:
    run_component(Supervisor)


if __name__ == "__main__":
    main()
