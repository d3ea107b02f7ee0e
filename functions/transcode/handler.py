"""transcode-<resolution>: encode one rendition of a job.

One handler for every rung; stack.yml deploys it once per resolution (VTP_RENDITION), so each
rung scales and queues on its own. The body is a TranscodeTask from split.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import ValidationError

from vtp.errors import InvalidRequest
from vtp.http import Response, guarded, header, ok, pipeline, stop_work
from vtp.models import TranscodeTask
from vtp.settings import load_at_start
from vtp.workdirs import clean_stale

# A bad setting or combination stops the start here, said in one line of the log.
load_at_start()

# A replica that starts again after a crash removes what its killed predecessor left.
clean_stale()


@guarded
def handle(event: Any, context: Any) -> Response:
    started = time.monotonic()  # the call's exec_timeout runs from here
    try:
        task = TranscodeTask.model_validate_json(event.body or b"{}")
    except ValidationError as exc:
        raise InvalidRequest(f"invalid transcode task: {exc.errors()[0]['msg']}") from exc
    call_id = header(event, "X-Call-Id") or f"direct-{uuid.uuid4()}"
    result = pipeline().run_rendition(task, call_id, started=started)
    status = 200 if result.get("state", "succeeded") == "succeeded" else 500
    return ok(result, status=status)


def on_sigterm() -> None:
    """The process is being stopped (redeploy, scale-down, `make down`): encodes in flight
    stop at once and record a retryable failure saying so, instead of vanishing."""
    stop_work()
