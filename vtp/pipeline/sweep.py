"""The cron sweeper's round: confirm reported deaths, write off silent workers, back up
stragglers, dispatch due and lost retries, finish stuck finalizations; now and then,
reconcile the input buckets and expire old outputs."""

from __future__ import annotations

import logging
import threading

from vtp.errors import VtpError
from vtp.pipeline.clients import Clients
from vtp.pipeline.dispatch import Dispatcher
from vtp.pipeline.fanin import FanIn
from vtp.pipeline.intake import Intake
from vtp.pipeline.operations import Operations

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        clients: Clients,
        dispatcher: Dispatcher,
        fanin: FanIn,
        intake: Intake,
        operations: Operations,
    ) -> None:
        self.clients = clients
        self.operations = operations
        self.settings = clients.settings
        self.store = clients.store
        self.dispatcher = dispatcher
        self.fanin = fanin
        self.intake = intake

    def sweep(self) -> dict[str, int]:
        """Write off silent workers, fill free slots with waiting tasks and due retries,
        dispatch lost calls again, finish stuck finalizations, try again due job callbacks;
        and now and then reconcile the input buckets against the jobs (a lost event becomes
        a job)."""
        confirmed = self.dispatcher.confirm_deaths()
        reaped = self.store.reap_stale(self.settings.stale_after_seconds)
        for t in reaped:
            self.clients.publish_task(t)
        lost = self.store.lost_dispatches(self.settings.redispatch_after_seconds)
        for t in lost:
            log.warning("re-dispatching %s of job %s: still queued", t.name, t.job_id)
            self.dispatcher.dispatch(t)
        # Waiting tasks and retries past their back-off, into whatever slots are free (a
        # report of a call's end that never came, a split replica gone mid-dispatch), then
        # backups for stragglers, only into slots nothing waits for.
        retried = self.dispatcher.dispatch_due_retries()
        backups = self.dispatcher.dispatch_backups()
        finalized = 0
        claimer = f"sweeper:{threading.get_ident()}"
        for job in self.store.finalizations_due():
            finalized += self.fanin.maybe_finalize(job.id, claimer=claimer)
        callbacks_sent = self.fanin.deliver_due_callbacks()
        reconciled = 0
        if self.settings.reconcile_window_seconds > 0 and self.store.claim_periodic(
            "reconcile", self.settings.reconcile_every_seconds
        ):
            try:
                reconciled = self.intake.reconcile()["submitted"]
            except VtpError as exc:
                log.error("reconciliation failed: %s", exc.reason)
        expired = 0
        if self.settings.retention_days > 0 and self.store.claim_periodic(
            "retention", self.settings.retention_every_seconds
        ):
            expired = self.operations.expire_outputs()
        return {
            "reaped": len(reaped),
            "confirmed_deaths": confirmed,
            "backups": backups,
            "retried": retried,
            "redispatched": len(lost),
            "finalized": finalized,
            "callbacks": callbacks_sent,
            "reconciled": reconciled,
            "expired": expired,
        }
