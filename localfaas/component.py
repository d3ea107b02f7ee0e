"""How the runtime's async components (gateway excepted) run as processes of their own."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from localfaas.config import LocalConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Component(Protocol):
    stopping: asyncio.Event

    async def run(self) -> None: ...


def run_component(make: Callable[[LocalConfig], Component]) -> None:
    """Build the component from the LOCALFAAS_* environment and run it until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

    async def amain() -> None:
        component = make(LocalConfig())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, component.stopping.set)
        await component.run()

    asyncio.run(amain())
