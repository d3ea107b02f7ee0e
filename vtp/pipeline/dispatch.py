"""Dispatching transcode calls through the gateway's queue, and what the queue-worker reports
about each: refusals, workers that died, retries with back-off.

Tasks wait in PostgreSQL for a slot (vtp.jobs.scheduling): `pump` hands the gateway a call
for each task fair share picks, whenever a slot may have freed: a job recorded or redriven,
the queue-worker's report that a call ended, a retry's back-off over, the sweeper's round."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from vtp import logs
from vtp.errors import Conflict, VtpError
from vtp.jobs import Task
from vtp.models import TaskState, TranscodeTask
from vtp.pipeline.clients import Clients
from vtp.pipeline.fanin import FanIn
from vtp.pipeline.urls import Urls

log = logging.getLogger(__name__)


# A retry due within this long is dispatched from a timer in split; later ones by the sweeper.
INLINE_RETRY_WAIT_S = 15.0


class Later:
    """Work to do a little later in this process (a freed slot to fill, a retry due, a death
    to confirm), run by one thread of its own, each piece at its time, once however often
    it was asked for meanwhile.

    A thread per piece (threading.Timer) was a thread, and so a database connection of its
    own (the store keeps one per thread, for good), per call that ever ended: a split
    serving a few hundred calls ran PostgreSQL out of connections (bench/fairness.py).
    The sweeper covers what a process gone takes with it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[], object], *, after_s: float) -> None:
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + max(0.0, after_s), next(self._seq), fn))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vtp-later", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
                ready: list[Callable[[], object]] = []
                while self._due and self._due[0][0] <= time.monotonic():
                    fn = heapq.heappop(self._due)[2]
                    if fn not in ready:
                        ready.append(fn)
            for fn in ready:
                try:
                    fn()
                except Exception:
                    log.exception("%s failed; the sweeper will do it", getattr(fn, "__name__", fn))


class Dispatcher:
    def __init__(self, clients: Clients, urls: Urls, fanin: FanIn) -> None:
        self.clients = clients
        self.settings = clients.settings
        self.store = clients.store
        self.invoker = clients.invoker
        self.urls = urls
        self.fanin = fanin
        self.queue = clients.queue
        self.later = Later()

    def pump(self) -> list[Task]:
        """Hand the gateway a call for each task fair share picks for the free slots; the
        tasks it dispatched. A hand-over the gateway refuses is a refusal (the task backs off
        and its slot frees), and the slots are filled again, a few rounds at most."""
        sent: list[Task] = []
        for _ in range(3):
            claimed = self.queue.claim()
            refused = 0
            for task in claimed:
                with logs.context(job_id=task.job_id, rendition=task.rendition, chunk=task.chunk):
                    call_id = str(task.dispatch_call_id)
                    logs.bind(call_id=call_id)
                    if self._hand_over(task, call_id):
                        sent.append(task)
                    else:
                        refused += 1
            if not refused:
                break
        return sent

    def dispatch(self, task: Task) -> None:
        """Queue one transcode call for a task that holds a slot already (a call the sweeper
        believes lost); a refused dispatch becomes a retry, never a lost task.

        The call id is chosen here and recorded before the call is handed to the gateway
        (which keeps an X-Call-Id it is given), so the queue-worker's report on it, however
        fast, is always matched to this dispatch.
        """
        with logs.context(job_id=task.job_id, rendition=task.rendition, chunk=task.chunk):
            self._dispatch(task)

    def _dispatch(self, task: Task) -> None:
        call_id = str(uuid4())
        logs.bind(call_id=call_id)
        job_id, rendition, chunk = task.job_id, task.rendition, task.chunk
        if self.store.record_dispatch(job_id, rendition, call_id, chunk=chunk) is None:
            return  # running or finished meanwhile: nothing to dispatch
        self._hand_over(task, call_id)

    def _hand_over(self, task: Task, call_id: str) -> bool:
        """Hand the recorded call `call_id` to the gateway; False when it refused, recorded
        as a refusal (the task backs off, its slot frees)."""
        try:
            self._invoke(task, call_id)
        except VtpError as exc:
            log.error("could not dispatch %s of job %s: %s", task.name, task.job_id, exc.reason)
            self._refused(task, call_id, f"dispatch failed: {exc.reason}")
            return False
        return True

    def _invoke(self, task: Task, call_id: str) -> None:
        """Hand one call for `task` to the gateway's queue, reporting to its callback URL."""
        job_id, rendition, chunk = task.job_id, task.rendition, task.chunk
        self.invoker.invoke_async(
            task.function,
            TranscodeTask(job_id=job_id, rendition=rendition, chunk=chunk),
            callback_url=self.urls.callback_url(job_id, rendition, call_id, chunk),
            call_id=call_id,
        )

    def dispatch_backups(self) -> int:
        """A backup call for each chunk that straggles (vtp.jobs.backups); 0 when
        `straggler_factor` is 0. A backup the gateway refuses is dropped: the first call
        goes on as if nothing happened."""
        factor = self.settings.straggler_factor
        if factor <= 0 or not self.queue.spare():
            return 0  # off, or every slot is wanted by waiting work
        sent = 0
        for task in self.store.stragglers(
            factor=factor, min_running_s=self.settings.straggler_min_seconds
        ):
            call_id = str(uuid4())
            job_id = task.job_id
            if self.store.record_backup(job_id, task.rendition, call_id, chunk=task.chunk) is None:
                continue  # it ended meanwhile, or another sweeper sent one
            log.info("%s of job %s straggles: backup call %s", task.name, job_id, call_id)
            try:
                self._invoke(task, call_id)
                sent += 1
            except VtpError as exc:
                self._drop_backup(task, call_id, f"dispatch failed: {exc.reason}")
        return sent

    def _drop_backup(self, task: Task, call_id: str, reason: str) -> None:
        with contextlib.suppress(Conflict):  # it won, or was dropped already
            self.store.drop_backup(task.job_id, task.rendition, call_id, reason, chunk=task.chunk)

    def dispatch_due_retries(self) -> int:
        """Fill the free slots: retries past their back-off wait for one like every task."""
        sent = self.pump()
        for task in sent:
            if task.attempts:
                log.info("retrying %s of job %s (attempt %d)", task.name, task.job_id,
                         task.attempts + 1)  # fmt: skip
        return len(sent)

    def on_rendition_callback(
        self,
        job_id: str,
        rendition: str,
        *,
        function_status: int,
        call_id: str | None,
        body: bytes = b"",
        chunk: int = 0,
    ) -> dict[str, Any]:
        """The queue-worker reports how a transcode call ended.

        It reports every call, whatever happened, and only once. What the report means
        depends on which call it is about and where its task is now:

        * the attempt running under this call is still running and the call failed: the
          worker ended without recording an outcome (killed, out of memory, cut off): a
          failed attempt. A 2xx for a running attempt is a redelivery of its message (NATS
          Streaming delivers a restarted queue-worker's unacknowledged message again at
          once) that the handler refused as a duplicate: the attempt goes on;
        * the task still waits for this very call and the status is not 2xx: the call
          never reached the handler (429 from a busy watchdog, 500 "Can't reach service"
          from the provider, 502/503 while the function restarts): a refusal;
        * the call is a straggler's backup (vtp.jobs.backups) and failed: it is dropped, the
          first call goes on;
        * anything else (the attempt recorded its own outcome, or the call was superseded):
          nothing to do. A late report never changes a newer attempt.
        """
        with logs.context(job_id=job_id, rendition=rendition, chunk=chunk, call_id=call_id):
            return self._on_rendition_callback(
                job_id, rendition, function_status=function_status, call_id=call_id,
                body=body, chunk=chunk,
            )  # fmt: skip

    def _on_rendition_callback(
        self,
        job_id: str,
        rendition: str,
        *,
        function_status: int,
        call_id: str | None,
        body: bytes,
        chunk: int,
    ) -> dict[str, Any]:
        if call_id:
            # Its slot frees once the queue-worker has acknowledged the call's message, right
            # after this answer (vtp.jobs.scheduling.unreported), not when its task ended.
            self.store.record_report(job_id, rendition, call_id, chunk=chunk)
        task = self.store.get(job_id).rendition(rendition).task(chunk)
        what = _status_text(function_status, body)
        failed = not 200 <= function_status < 300
        if task.state is TaskState.RUNNING and task.is_backup(call_id) and failed:
            # A straggler's backup call refused, killed or cut off: the first call goes on.
            assert call_id is not None
            self._drop_backup(task, call_id, f"{task.function} ended without a result ({what})")
        elif (
            task.state is TaskState.RUNNING and call_id and task.last_call_id == call_id and failed
        ):
            self._report_death(
                task,
                f"{task.function} ended without a result ({what}; "
                "killed, out of memory or past its exec_timeout)",
                call_id=call_id,
            )
        elif (
            task.state is TaskState.QUEUED
            and failed
            and (call_id is None or task.dispatch_call_id == call_id)
        ):
            self._refused(task, call_id, f"{task.function} did not take the call ({what})")
        rend = self.store.get(job_id).rendition(rendition)
        task = rend.task(chunk)
        if task.state is TaskState.RETRYING:
            self._schedule_retry(task)
        finished = self.fanin.maybe_finalize(job_id, claimer=f"callback:{call_id}")
        # The call ended: its slot is free for whoever is next, once the queue-worker has
        # acknowledged its message (right after this answer), not before.
        # (A little after the hand-over, so that the claim counts the slot free.)
        self.later.call(self.pump, after_s=self.settings.slot_handover_seconds + 0.02)
        return {
            "job_id": job_id,
            "rendition": rendition,
            "chunk": chunk,
            "state": rend.state,
            "task_state": task.state,
            "finalized": finished,
        }

    def _schedule_retry(self, task: Task) -> None:
        """Dispatch a retry due soon later in this process, so the answer to the queue-worker
        (which runs one call at a time) is not held up; later ones go to the sweeper, which
        also covers a timer lost with its process."""
        if task.next_retry_at is None:
            return
        wait = (task.next_retry_at - datetime.now(UTC)).total_seconds()
        if wait > INLINE_RETRY_WAIT_S:
            return
        self.later.call(self.dispatch_due_retries, after_s=wait + 0.05)

    def _refused(self, task: Task, call_id: str | None, reason: str) -> None:
        """Record that a call never reached the handler (a refusal: no attempt spent) and
        tell progress followers; a stale report (Conflict) changes nothing."""
        try:
            after = self.store.record_refusal(
                task.job_id, task.rendition, call_id, reason, chunk=task.chunk
            )
        except Conflict as exc:
            log.info("refusal report ignored: %s", exc.reason)
            return
        self.clients.publish_task(after)
        if after.state is TaskState.DEAD:
            self.fanin.maybe_finalize(task.job_id, claimer=f"refusal:{call_id}")

    def _report_death(self, task: Task, reason: str, *, call_id: str) -> None:
        """The attempt running under `call_id` was reported dead: believed once it stays
        silent for `death_confirm_seconds` (a live one refutes a forged report with its next
        heartbeat). A timer here confirms it then; the sweeper does if this process is gone.
        An attempt that ended in the meantime (Conflict) is left as is."""
        try:
            self.store.report_death(task.job_id, task.rendition, call_id, reason, chunk=task.chunk)
        except Conflict:
            return
        log.info("%s of job %s reported dead (%s); confirmed if silent for %gs", task.name,
                 task.job_id, reason, self.settings.death_confirm_seconds)  # fmt: skip
        self.later.call(self.confirm_deaths, after_s=self.settings.death_confirm_seconds + 0.5)

    def confirm_deaths(self) -> int:
        """Fail the attempts reported dead that stayed silent, tell followers, retry them
        (or finish their job, when that was the last attempt)."""
        confirmed = self.store.confirm_deaths(self.settings.death_confirm_seconds)
        for t in confirmed:
            self.clients.publish_task(t)
            if t.state is TaskState.RETRYING:
                self._schedule_retry(t)
            else:
                self.fanin.maybe_finalize(t.job_id, claimer=f"confirmed-death:{t.last_call_id}")
        return len(confirmed)


def _status_text(status: int, body: bytes) -> str:
    """`HTTP 500: Can't reach service for: x.` from a queue-worker report, body shortened."""
    text = body[:200].decode("utf-8", "replace").strip().splitlines()
    first = text[0].strip() if text else ""
    if first.startswith("{"):  # our own JSON answers: the caller has them elsewhere
        first = ""
    return f"HTTP {status}" + (f": {first}" if first else "")
