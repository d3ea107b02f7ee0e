"""The cron sweeper's round: confirm reported deaths, write off silent workers, dispatch due
and lost retries, finish stuck finalizations."""

from __future__ import annotations

import logging
import threading

from vtp.errors import VtpError
from vtp.pipeline.intake import Intake

log = logging.getLogger(__name__)


class Sweep(Intake):
    # --- sweeper -------------------------------------------------------------------------------
    def sweep(self) -> dict[str, int]:
        """Write off silent workers, dispatch due retries and lost dispatches, finish stuck
        finalizations, try again due job callbacks; and now and then reconcile the input
        buckets against the jobs (a lost event becomes a job)."""
        confirmed = self.confirm_deaths()
        reaped = self.store.reap_stale(self.settings.stale_after_seconds)
        for t in reaped:
            self._publish_task(t)
        retried = self.dispatch_due_retries()
        lost = self.store.lost_dispatches(self.settings.redispatch_after_seconds)
        for t in lost:
            log.warning("re-dispatching %s of job %s: still queued", t.name, t.job_id)
            self.dispatch(t)
        finalized = 0
        for job in self.store.finalizations_due():
            finalized += self.maybe_finalize(job.id, claimer=f"sweeper:{threading.get_ident()}")
        callbacks_sent = self.deliver_due_callbacks()
        reconciled = 0
        if self.settings.reconcile_window_seconds > 0 and self.store.claim_periodic(
            "reconcile", self.settings.reconcile_every_seconds
        ):
            try:
                reconciled = self.reconcile()["submitted"]
            except VtpError as exc:
                log.error("reconciliation failed: %s", exc.reason)
        return {
            "reaped": len(reaped),
            "confirmed_deaths": confirmed,
            "retried": retried,
            "redispatched": len(lost),
            "finalized": finalized,
            "callbacks": callbacks_sent,
            "reconciled": reconciled,
        }
