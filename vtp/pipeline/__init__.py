"""The pipeline's core: submit a source, run one rendition, fan in, sweep.

Handlers stay thin: `split` calls `submit` and `on_rendition_callback`, `transcode-*` calls
`run_rendition`, `sweeper` calls `sweep`, `status` reads through `describe_job`. Every client
(database, Redis, storage, gateway) is injected, so tests and other entry points can build a
`Pipeline` from their own.

Who retries what: the OpenFaaS queue-worker calls each transcode once and then POSTs the
outcome to split's `/callback` route. A transcode that fails cleanly records a retryable or
permanent failure itself; one that dies (killed, OOM, exec_timeout) cannot, so the callback
records it. Retries are dispatched once their back-off has passed, by the callback or by the
cron sweeper, which also writes off renditions whose worker went silent. When the last
rendition ends, exactly one caller wins `claim_finalization` and finishes the job.

The package, one module per part, each class building on the one before: `base` (clients,
URLs, events), `views`, `fanin`, `dispatch`, `transcode`, `intake`, `sweep`; `Pipeline` is
all of them.
"""

from __future__ import annotations

from vtp.pipeline.fanin import JobCallback
from vtp.pipeline.intake import SubmitResult
from vtp.pipeline.sweep import Sweep


class Pipeline(Sweep):
    """The whole pipeline: what every handler calls (see the module docstring)."""


__all__ = ["JobCallback", "Pipeline", "SubmitResult"]
