"""ws-relay's app served by uvicorn in the test process (on the stack's real Redis and
PostgreSQL), for tests that need a relay configured differently from the stack's."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from tests.ports import free_port


@contextlib.contextmanager
def serve_relay(app: Any, *, timeout: float = 15.0, **config: Any) -> Iterator[str]:
    """`host:port` of `app` once uvicorn listens and the relay's hub is subscribed."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not (server.started and app.state.relay.hub.ready):
            assert time.monotonic() < deadline, "in-process relay did not start"
            assert thread.is_alive(), "uvicorn stopped before the relay was ready"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
