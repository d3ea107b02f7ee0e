"""The pipeline's core: submit a source, run a task, fan in, sweep, show a job.

Handlers stay thin: `split` calls `submit` and `on_rendition_callback`, `transcode-*` calls
`run_rendition`, `sweeper` calls `sweep`, `status` reads through `describe_job`. Every client
(database, Redis, storage, gateway) is injected, so tests and other entry points can build a
`Pipeline` from their own.

Who retries what: the OpenFaaS queue-worker calls each transcode once and then POSTs the
outcome to split's `/callback` route. A transcode that fails cleanly records a retryable or
permanent failure itself; one that dies (killed, OOM, exec_timeout) cannot, so the callback
records it. Retries are dispatched once their back-off has passed, from a timer or by the
cron sweeper, which also writes off tasks whose worker went silent. When the last task
ends, exactly one caller wins `claim_finalization` and finishes the job.

One module per responsibility, each part built with the parts it calls (no part reaches
another through a global or a base class): `clients` (the shared clients and events),
`urls`, `views` (the job as clients see it), `fanin` (finishing a job, its callback),
`pictures` (the poster and storyboard, made as soon as they can be),
`dispatch` (calls on the gateway's queue and the queue-worker's reports), `transcode`
(running one task), `intake` (submission and reconciliation), `sweep`, `operations` (what an
operator does to a job: cancel, redrive, delete; retention). `Pipeline` wires them together
and is what handlers hold.
"""

from __future__ import annotations

import threading
from typing import Self

from vtp.access import Gate
from vtp.events import EventBus
from vtp.invoker import Invoker
from vtp.jobs import JobStore
from vtp.pipeline.clients import Clients
from vtp.pipeline.dispatch import Dispatcher
from vtp.pipeline.fanin import FanIn, JobCallback
from vtp.pipeline.intake import Intake, SubmitResult
from vtp.pipeline.operations import Operations
from vtp.pipeline.sweep import Sweeper
from vtp.pipeline.transcode import TaskRunner
from vtp.pipeline.urls import Urls
from vtp.pipeline.views import JobViews
from vtp.quotas import Quotas
from vtp.settings import Settings
from vtp.storage import Storage


class Pipeline:
    """The parts, wired together once per process; what every handler calls."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        bus: EventBus,
        invoker: Invoker,
    ) -> None:
        self.clients = Clients(settings, store, storage, bus, invoker)
        self.settings, self.store, self.storage = settings, store, storage
        self.bus, self.invoker = bus, invoker
        # Set when the process is asked to stop (SIGTERM): encodes in flight end, recorded.
        self.stopping = threading.Event()
        self.urls = Urls(settings, invoker)
        self.views = JobViews(self.clients, self.urls)
        self.fanin = FanIn(self.clients, self.views)
        self.dispatcher = Dispatcher(self.clients, self.urls, self.fanin)
        self.runner = TaskRunner(self.clients, self.fanin, self.stopping)
        self.intake = Intake(self.clients, self.dispatcher, self.fanin)
        self.quotas = Quotas(store.connection_factory, settings)
        self.gate = Gate(settings)  # who may call what (vtp.access), parsed once
        self.operations = Operations(self.clients, self.dispatcher, self.fanin)
        self.sweeper = Sweeper(
            self.clients, self.dispatcher, self.fanin, self.intake, self.operations
        )
        # The entry points handlers use, by name.
        self.submit = self.intake.submit
        self.on_rendition_callback = self.dispatcher.on_rendition_callback
        self.check_callback_signature = self.urls.check_callback_signature
        self.run_rendition = self.runner.run
        self.sweep = self.sweeper.sweep
        self.describe_job = self.views.describe_job
        self.find_job = self.views.find_job
        self.redeliver_callback = self.fanin.redeliver_callback
        self.cancel_job = self.operations.cancel
        self.redrive_job = self.operations.redrive
        self.delete_job = self.operations.delete

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build every client from settings and bring the schema up to date (idempotent)."""
        c = Clients.from_settings(settings)
        return cls(c.settings, c.store, c.storage, c.bus, c.invoker)


__all__ = ["JobCallback", "Pipeline", "SubmitResult"]
