"""Dispatching transcode calls through the gateway's queue, and what the queue-worker reports
about each: refusals, workers that died, retries with back-off."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from vtp.errors import Conflict, VtpError
from vtp.jobs import Rendition
from vtp.models import RenditionState, TranscodeTask
from vtp.pipeline.fanin import FanIn

log = logging.getLogger(__name__)


# A retry due within this long is dispatched from a timer in split; later ones by the sweeper.
INLINE_RETRY_WAIT_S = 15.0


class Dispatch(FanIn):
    def dispatch(self, job_id: UUID, rend: Rendition) -> None:
        """Queue one transcode call; a refused dispatch becomes a retry, never a lost task.

        The call id is chosen here and recorded before the call is handed to the gateway
        (which keeps an X-Call-Id it is given), so the queue-worker's report on it, however
        fast, is always matched to this dispatch.
        """
        call_id = str(uuid4())
        if self.store.record_dispatch(job_id, rend.name, call_id) is None:
            return  # running or finished meanwhile: nothing to dispatch
        try:
            self.invoker.invoke_async(
                rend.function,
                TranscodeTask(job_id=job_id, rendition=rend.name),
                callback_url=self.callback_url(job_id, rend.name, call_id),
                call_id=call_id,
            )
        except VtpError as exc:
            log.error("could not dispatch %s of job %s: %s", rend.name, job_id, exc.reason)
            self._refused(job_id, rend.name, call_id, f"dispatch failed: {exc.reason}")

    def dispatch_due_retries(self) -> int:
        due = self.store.due_retries()
        for rend in due:
            log.info(
                "retrying %s of job %s (attempt %d)", rend.name, rend.job_id, rend.attempts + 1
            )
            self.dispatch(rend.job_id, rend)
        return len(due)

    def on_rendition_callback(
        self,
        job_id: str,
        rendition: str,
        *,
        function_status: int,
        call_id: str | None,
        body: bytes = b"",
    ) -> dict[str, Any]:
        """The queue-worker reports how a transcode call ended.

        It reports every call, whatever happened, and only once. What the report means
        depends on which call it is about and where the rendition is now:

        * the attempt running under this call is still running and the call failed: the
          worker ended without recording an outcome (killed, out of memory, cut off): a
          failed attempt. A 2xx for a running attempt is a redelivery of its message (NATS
          Streaming delivers a restarted queue-worker's unacknowledged message again at
          once) that the handler refused as a duplicate: the attempt goes on;
        * the rendition still waits for this very call and the status is not 2xx: the call
          never reached the handler (429 from a busy watchdog, 500 "Can't reach service"
          from the provider, 502/503 while the function restarts): a refusal;
        * anything else (the attempt recorded its own outcome, or the call was superseded):
          nothing to do. A late report never changes a newer attempt.
        """
        job = self.store.get(job_id)
        rend = job.rendition(rendition)
        what = _status_text(function_status, body)
        failed = not 200 <= function_status < 300
        if (
            rend.state is RenditionState.RUNNING
            and call_id
            and rend.last_call_id == call_id
            and failed
        ):
            self._report_death(
                rend,
                f"{rend.function} ended without a result ({what}; "
                "killed, out of memory or past its exec_timeout)",
                call_id=call_id,
            )
        elif (
            rend.state is RenditionState.QUEUED
            and failed
            and (call_id is None or rend.dispatch_call_id == call_id)
        ):
            self._refused(
                rend.job_id, rend.name, call_id, f"{rend.function} did not take the call ({what})"
            )
        rend = self.store.get(job_id).rendition(rendition)
        if rend.state is RenditionState.RETRYING:
            self._schedule_retry(rend)
        finished = self.maybe_finalize(job_id, claimer=f"callback:{call_id}")
        return {
            "job_id": job_id,
            "rendition": rendition,
            "state": rend.state,
            "finalized": finished,
        }

    def _schedule_retry(self, rend: Rendition) -> None:
        """Dispatch a retry due soon from a timer thread, so the answer to the queue-worker
        (which runs one call at a time) is not held up; later ones go to the sweeper, which
        also covers a timer lost with its process."""
        if rend.next_retry_at is None:
            return
        wait = (rend.next_retry_at - datetime.now(UTC)).total_seconds()
        if wait > INLINE_RETRY_WAIT_S:
            return
        timer = threading.Timer(max(wait, 0) + 0.05, self._dispatch_due_quietly)
        timer.daemon = True
        timer.start()

    def _dispatch_due_quietly(self) -> None:
        try:
            self.dispatch_due_retries()
        except Exception:
            log.exception("dispatching due retries failed; the sweeper will pick them up")

    def _refused(self, job_id: UUID, rendition: str, call_id: str | None, reason: str) -> None:
        """Record that a call never reached the handler (a refusal: no attempt spent) and
        tell progress followers; a stale report (Conflict) changes nothing."""
        try:
            rend = self.store.record_refusal(job_id, rendition, call_id, reason)
        except Conflict as exc:
            log.info("refusal report ignored: %s", exc.reason)
            return
        self._publish_rendition(rend)
        if rend.state is RenditionState.DEAD:
            self.maybe_finalize(job_id, claimer=f"refusal:{call_id}")

    def _report_death(self, rend: Rendition, reason: str, *, call_id: str) -> None:
        """The attempt running under `call_id` was reported dead: believed once it stays
        silent for `death_confirm_seconds` (a live one refutes a forged report with its next
        heartbeat). A timer here confirms it then; the sweeper does if this process is gone.
        An attempt that ended in the meantime (Conflict) is left as is."""
        try:
            self.store.report_death(rend.job_id, rend.name, call_id, reason)
        except Conflict:
            return
        log.info("%s of job %s reported dead (%s); confirmed if silent for %gs", rend.name,
                 rend.job_id, reason, self.settings.death_confirm_seconds)  # fmt: skip
        timer = threading.Timer(
            self.settings.death_confirm_seconds + 0.5, self._confirm_deaths_quietly
        )
        timer.daemon = True
        timer.start()

    def confirm_deaths(self) -> int:
        """Fail the attempts reported dead that stayed silent, tell followers, retry them
        (or finish their job, when that was the last attempt)."""
        confirmed = self.store.confirm_deaths(self.settings.death_confirm_seconds)
        for r in confirmed:
            self._publish_rendition(r)
            if r.state is RenditionState.RETRYING:
                self._schedule_retry(r)
            else:
                self.maybe_finalize(r.job_id, claimer=f"confirmed-death:{r.last_call_id}")
        return len(confirmed)

    def _confirm_deaths_quietly(self) -> None:
        try:
            self.confirm_deaths()
        except Exception:
            log.exception("confirming reported deaths failed; the sweeper will")


def _status_text(status: int, body: bytes) -> str:
    """`HTTP 500: Can't reach service for: x.` from a queue-worker report, body shortened."""
    text = body[:200].decode("utf-8", "replace").strip().splitlines()
    first = text[0].strip() if text else ""
    if first.startswith("{"):  # our own JSON answers: the caller has them elsewhere
        first = ""
    return f"HTTP {status}" + (f": {first}" if first else "")
