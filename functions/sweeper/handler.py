"""sweeper (cron): retries or dead-letters renditions whose worker vanished, dispatches due
retries and finishes stuck finalizations, so no accepted job is left hanging."""

from __future__ import annotations

from typing import Any

from vtp.http import Response, guarded, ok, pipeline
from vtp.settings import load_at_start

# A bad setting or combination stops the start here, said in one line of the log.
load_at_start()


@guarded
def handle(event: Any, context: Any) -> Response:
    return ok(pipeline().sweep())
