"""Fan-in: as each rendition is ready, the master playlist over those ready so far (and the
pictures, vtp.pipeline.pictures); when the last task ends, one caller writes the final master
and what pictures are missing, finishes the job and sends its callback (tried again by the
sweeper until it is taken)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from vtp import callbacks, layout, logs, privacy
from vtp.errors import VtpError
from vtp.events import ProgressEvent
from vtp.jobs import CallbackStatus, Job, Rendition, SourceRef, summarize_outcome
from vtp.lifecycle import RetryPolicy, TaskState
from vtp.media import dash, storyboard
from vtp.media.encode import HLS_PLAYLIST, ChunkResult, RenditionResult, frame_rate
from vtp.media.iframes import IFRAME_PLAYLIST
from vtp.media.join import check_join, iframe_playlist, joined_result, media_playlist
from vtp.media.playlist import MasterEntry, master_playlist
from vtp.media.quality import METRIC, combined_record
from vtp.models import JobState, RenditionState
from vtp.pipeline.clients import Clients
from vtp.pipeline.pictures import Pictures
from vtp.pipeline.views import JobViews

log = logging.getLogger(__name__)


class JobCallback(BaseModel):
    """The body POSTed to a job's callback URL when the job ends (`job.finished`), or is
    cancelled (`job.cancelled`)."""

    event: str = "job.finished"
    job_id: UUID
    state: JobState
    error: str | None
    source: SourceRef
    master_url: str | None
    poster_url: str | None
    dash_url: str | None = None  # the DASH manifest, for a job that asked for it
    storyboard_url: str | None = None  # the thumbnails' WebVTT index (vtp.media.storyboard)
    renditions: list[dict[str, Any]]
    finished_at: datetime | None
    plan: dict[str, Any] | None = None  # how the ladder was decided (vtp.media.tuning)
    # A private job's (vtp.privacy): no URLs here, since play URLs expire and a receiver
    # keeps what it is sent; it asks status for fresh ones when a viewer plays.
    private: bool = False


class FanIn:
    def __init__(self, clients: Clients, views: JobViews) -> None:
        self.clients = clients
        self.settings = clients.settings
        self.store = clients.store
        self.storage = clients.storage
        self.views = views
        self.pictures = Pictures(clients)
        # Job callbacks are tried again with the same back-off rule as tasks.
        self.callback_retry = RetryPolicy(
            base_s=self.settings.callback_retry_base_seconds,
            max_s=self.settings.callback_retry_max_seconds,
        )

    def _bucket(self, job: Job) -> str:
        """Where this job's outputs are: the private bucket for a private job (vtp.privacy)."""
        return privacy.outputs_bucket(self.settings, job)

    def maybe_finalize(self, job_id: UUID | str, *, claimer: str) -> bool:
        """Finish the job if every task has ended and no one else is doing it; first, if
        a rendition of it failed, end the tasks not started (vtp.jobs.cancellation)."""
        with logs.context(job_id=job_id):
            return self._maybe_finalize(job_id, claimer)

    def _maybe_finalize(self, job_id: UUID | str, claimer: str) -> bool:
        self.store.cancel_doomed(job_id)
        job = self.store.claim_finalization(job_id, claimer)
        if job is None:
            return False
        refused = self._join_chunked(job)
        job = self.store.get(job.id)
        state, reason = summarize_outcome(job.renditions)
        if refused:
            state, reason = JobState.FAILED, "; ".join([*refused, *([reason] if reason else [])])
        built = self._master(job.id, job.renditions, early=False)
        master, ready = built if built else (None, None)
        outputs: dict[str, Any] = {}
        if master is not None:
            try:
                self.storage.put_bytes(
                    self._bucket(job), f"{job.id}/{layout.MASTER}", master.encode(),
                    cache_control=layout.FINAL_MASTER_CACHE,
                )  # fmt: skip
                if self.pictures.final(job):  # what the early calls did not make
                    outputs["storyboard"] = storyboard.VTT
            except VtpError as exc:
                state, reason = (
                    JobState.FAILED,
                    f"could not write the master playlist: {exc.reason}",
                )
            if state is JobState.SUCCEEDED and "dash" in job.formats:
                problem = self._write_manifest(job)
                if problem:
                    state, reason = JobState.FAILED, problem
                else:
                    outputs["dash"] = layout.MANIFEST
        job = self.store.complete_job(
            job.id, state, reason, claimer=claimer, master_playlist=master, ready=ready,
            outputs=outputs,
        )  # fmt: skip
        log.info("job %s %s%s", job.id, job.state, f": {reason}" if reason else "")
        self._remove_superseded_attempts(job)
        self.clients.publish_job(job)
        self.fire_callback(job)
        return True

    def rendition_ready(self, job_id: UUID | str, name: str) -> list[str] | None:
        """After a task of rendition `name` succeeded: once the rendition is whole (its
        chunks joined), rewrite the master playlist with every rendition ready so far, so
        that playback can start before the job ends, and say so (`rendition.ready`).
        Returns the renditions the master now lists; None when nothing changed (the
        rendition is not whole yet, the job is ending, or a variant's sound is not ready).
        The final master, at the job's end, is written as before. Then the job's poster
        and storyboard, if this rendition is what they wait for (vtp.pipeline.pictures)."""
        job = self.store.get(job_id)
        rend = job.rendition(name)
        if job.state.terminal or rend.state is not RenditionState.SUCCEEDED:
            return None
        if len(rend.tasks) > 1 and not rend.result:
            if self._join(job, rend) is not None:
                return None  # refused: the job's end says why
            job = self.store.get(job.id)  # with the joined result
            rend = job.rendition(name)
        ready = self._publish_early(job)
        # The poster and the storyboard, while larger renditions still encode: off the
        # job's last call (vtp.pipeline.pictures).
        self.pictures.early(job, rend)
        return ready

    def _publish_early(self, job: Job) -> list[str] | None:
        """The master over every rendition ready so far, written and recorded under the
        job's lock, and announced (see rendition_ready)."""
        written: list[str] = []

        def publish(renditions: list[Rendition]) -> list[str] | None:
            built = self._master(job.id, renditions, early=True)
            if built is None:
                return None
            master, ready = built
            self.storage.put_bytes(
                self._bucket(job), f"{job.id}/{layout.MASTER}", master.encode(),
                cache_control=layout.EARLY_MASTER_CACHE,
            )  # fmt: skip
            written[:] = ready
            return ready

        if self.store.record_ready(job.id, publish) is None:
            return None
        log.info("job %s: playable early with %s", job.id, ", ".join(written))
        self.clients.publish(
            ProgressEvent(job_id=str(job.id), state=job.state.value, kind="rendition.ready",
                          ready=written)
        )  # fmt: skip
        return written

    def _master(
        self, job_id: UUID, renditions: list[Rendition], *, early: bool
    ) -> tuple[str, list[str]] | None:
        """The master playlist over the renditions that succeeded, and their names; None
        when no video rendition did. `early`: while the job runs, not before the sound
        every variant names (a job encoded in chunks) is ready too."""
        done = [r for r in renditions if r.state is RenditionState.SUCCEEDED and r.result]
        sound_pending = any(
            r.spec.audio_only and r.state is not RenditionState.SUCCEEDED for r in renditions
        )
        if early and sound_pending:
            return None
        entries = {
            r.name: MasterEntry.from_result(
                RenditionResult.model_validate(r.result),
                layout.within_job(job_id, r.output_prefix, r.name),
                score=_vmaf_display(r.result or {}),
                spec=r.spec,
            )
            for r in done
        }
        audio = [entries.pop(r.name) for r in done if r.spec.audio_only]
        text = [entries.pop(r.name) for r in done if r.spec.text_only]
        video = list(entries.values())
        if not video and (not audio or any(r.spec.kind == "video" for r in renditions)):
            return None  # a job of sound alone has no video rendition to wait for
        master = master_playlist(video, audio=audio, subtitles=text)
        return master, [r.name for r in done]

    def _write_manifest(self, job: Job) -> str | None:
        """The DASH manifest over the renditions' own segments (vtp.media.dash), from their media
        playlists as stored; why it could not be written, else None."""
        bucket = self._bucket(job)
        tracks = []
        subtitles = []
        try:
            for r in job.renditions:
                if r.state is not RenditionState.SUCCEEDED or not r.result:
                    continue
                result = RenditionResult.model_validate(r.result)
                folder = layout.within_job(job.id, r.output_prefix, r.name)
                if r.spec.text_only and result.subtitles:
                    subtitles.append(
                        dash.Subtitles(id=r.name, url=f"{folder}/{result.subtitles}",
                                       bandwidth=max(1, result.peak_bitrate),
                                       language=r.spec.language, label=r.spec.label,
                                       forced=r.spec.forced)
                    )  # fmt: skip
                    continue
                if result.timescale is None:
                    return f"rendition {r.name} was encoded before DASH could index it"
                playlist = self.storage.get_bytes(bucket, f"{job.id}/{folder}/{result.playlist}")
                tracks.append(dash.rendition_track(playlist.decode(), folder, result, r.spec))
            text = dash.manifest(tracks, subtitles, title=job.source.key.rsplit("/", 1)[-1])
            self.storage.put_bytes(bucket, f"{job.id}/{layout.MANIFEST}", text.encode())
        except VtpError as exc:
            return f"could not write the DASH manifest: {exc.reason}"
        except (ValueError, UnicodeDecodeError) as exc:
            return f"could not write the DASH manifest: {exc}"
        return None

    def _join_chunked(self, job: Job) -> list[str]:
        """Join each rendition encoded in chunks whose chunks all succeeded and that is not
        joined yet (`rendition_ready` joins each as it finishes); why any could not be."""
        refused = []
        for r in job.renditions:
            if len(r.tasks) < 2 or r.state is not RenditionState.SUCCEEDED or r.result:
                continue
            problems = self._join(job, r)
            if problems is not None:
                refused += problems
        return refused

    def _join(self, job: Job, r: Rendition) -> list[str] | None:
        """Join a rendition encoded in chunks whose chunks all succeeded: prove the join
        (vtp.media.join), write its playlist over the chunks' folders, record what it is. Returns
        why it could not be joined (each chunk checked itself before it succeeded, so only
        a cross-chunk mismatch is left: an init segment from another encoder build, say),
        which fails the job with the reason rather than publishing a broken stream; None
        once joined."""
        tasks = sorted(r.tasks, key=lambda t: t.chunk)
        chunks = [ChunkResult.model_validate(t.result) for t in tasks]
        fps = frame_rate(r.spec.fps)
        assert job.source_info is not None
        problems = check_join(chunks, fps=fps, source_duration=job.source_info.duration)
        if problems:
            return [
                f"rendition {r.name} cannot be joined: chunk {p.chunk}: {p.reason}"
                for p in problems
            ]
        folder = layout.rendition_prefix(job.id, r.name)
        prefixes = [
            str((t.result or {})["output_prefix"]).removeprefix(folder).strip("/") + "/"
            for t in tasks
        ]
        playlist = media_playlist(chunks, prefixes=prefixes)
        trick = iframe_playlist(chunks, prefixes=prefixes)
        try:
            self.storage.put_bytes(self._bucket(job), f"{folder}{HLS_PLAYLIST}", playlist.encode())
            if trick is not None:
                self.storage.put_bytes(
                    self._bucket(job), f"{folder}{IFRAME_PLAYLIST}", trick.encode()
                )
        except VtpError as exc:
            return [f"rendition {r.name}: its playlist not written: {exc.reason}"]
        joined = joined_result(r.spec, chunks, fps=fps)
        quality = combined_record(
            [t.result or {} for t in tasks],
            target=r.spec.quality_target,
            margin=self.settings.quality_margin,
        )
        # The builds that made it (vtp.media.build): one, unless a rolling update of the
        # pinned ffmpeg ran through the job (the init segments matched all the same).
        tools: list[Any] = []
        for t in tasks:
            if (made := (t.result or {}).get("tools")) not in tools:
                tools.append(made)
        if len(tools) > 1:
            log.warning("job %s: %s joined from chunks of %d builds", job.id, r.name, len(tools))
        record = (
            joined.model_dump(mode="json")
            | quality
            | {"output_prefix": folder.rstrip("/"), "tools": tools[0] if len(tools) == 1 else tools}
        )
        self.store.record_joined(job.id, r.name, record)
        log.info("job %s: %s joined from %d chunks", job.id, r.name, len(chunks))
        return None

    def _remove_superseded_attempts(self, job: Job) -> None:
        """The folders of attempts that did not win (vtp.layout): what failed or written-off
        attempts uploaded, which nothing references. Best effort: a zombie may still write
        into its own folder later, where it harms nothing but space."""
        for r in job.renditions:
            if len(r.tasks) > 1:
                self._remove_superseded_chunk_attempts(job, r)
                continue
            winner = r.output_prefix if r.state is RenditionState.SUCCEEDED else None
            if r.attempts == 0 or (winner and r.attempts == 1):
                continue  # no attempt but the winner ever ran: no listing of the bucket
            if winner and "/attempt-" not in winner:
                continue  # the layout from before attempt folders: one folder, all of it used
            self._remove_attempt_folders(
                job, r.name, layout.rendition_prefix(job.id, r.name) + "attempt-", winner
            )

    def _remove_superseded_chunk_attempts(self, job: Job, r: Rendition) -> None:
        """The same for each chunk of a rendition encoded in chunks that ran more than once."""
        for t in r.tasks:
            if t.attempts < 2 and not t.backups:
                continue
            won = (t.result or {}).get("output_prefix") if t.state is TaskState.SUCCEEDED else None
            folders = f"{layout.rendition_prefix(job.id, r.name)}chunk-{t.chunk}/attempt-"
            self._remove_attempt_folders(job, t.name, folders, str(won) if won else None)

    def _remove_attempt_folders(
        self, job: Job, what: str, folders: str, winner: str | None
    ) -> None:
        """Every object under the attempt folders `folders` but the winner's folder."""
        try:
            removed = self.storage.remove_prefix(
                self._bucket(job),
                folders,
                keep=f"{winner.rstrip('/')}/" if winner else None,
            )
        except VtpError as exc:
            log.warning("job %s: superseded attempts of %s kept: %s", job.id, what, exc.reason)
            return
        if removed:
            log.info("job %s: removed %d files of superseded attempts of %s", job.id, removed,
                     what)  # fmt: skip

    def fire_callback(self, job: Job) -> None:
        """One try at the job's callback; a failure is tried again by the sweeper, with
        back-off, for `callback_retry_hours` after the job ended (state in PostgreSQL, so
        restarts lose nothing). Never sleeps: this runs in a function's call."""
        if not job.callback_url or job.callback_status is CallbackStatus.DELIVERED:
            return
        secret = self.settings.callback_secret
        try:
            callbacks.check_destination(
                job.callback_url, allow_private=self.settings.callback_allow_private_networks
            )
        except VtpError as exc:
            self.store.record_callback(job.id, CallbackStatus.FAILED, exc.reason)
            return
        body = self.callback_body(job)
        delivery = callbacks.deliver(
            job.callback_url,
            body,
            delivery_id=str(job.id),
            event=body.event,
            secret=secret.get_secret_value() if secret else None,
            attempts=1,
        )
        if delivery.ok:
            self.store.record_callback(job.id, CallbackStatus.DELIVERED)
            return
        tries = job.callback_attempts + 1
        s = self.settings
        ended = job.finished_at or datetime.now(UTC)
        giving_up = ended + timedelta(hours=s.callback_retry_hours)
        delay = self.callback_retry.delay(tries)
        if datetime.now(UTC) + timedelta(seconds=delay) > giving_up:
            log.warning("job %s: callback failed %d times; giving up: %s", job.id, tries,
                        delivery.error)  # fmt: skip
            self.store.record_callback(job.id, CallbackStatus.FAILED, delivery.error)
            return
        log.info("job %s: callback try %d failed (%s); again in %.0fs", job.id, tries,
                 delivery.error, delay)  # fmt: skip
        self.store.record_callback(job.id, CallbackStatus.PENDING, delivery.error, retry_in=delay)

    def deliver_due_callbacks(self) -> int:
        """The sweeper's part: try again the callbacks whose back-off has passed."""
        due = self.store.due_callbacks()
        for job in due:
            self.fire_callback(job)
        return len(due)

    def redeliver_callback(self, job_id: str) -> Job:
        """Send a finished job's callback again now, whatever became of it before (by hand:
        `vtp callbacks redeliver JOB`); the receiver de-duplicates on X-VTP-Delivery."""
        job = self.store.reset_callback(self.store.resolve_id(job_id))
        self.fire_callback(job)
        return self.store.get(job.id)

    def callback_body(self, job: Job) -> JobCallback:
        view = self.views.describe_job(job, live=False, play=False)
        return JobCallback(
            event="job.cancelled" if job.state is JobState.CANCELLED else "job.finished",
            job_id=job.id,
            state=job.state,
            error=job.error,
            source=job.source,
            master_url=view["urls"].get("master"),
            poster_url=view["urls"].get("poster"),
            dash_url=view["urls"].get("dash"),
            storyboard_url=view["urls"].get("storyboard"),
            renditions=view["renditions"],
            finished_at=job.finished_at,
            plan=job.plan,
            private=job.private,
        )


def _vmaf_display(result: dict[str, Any]) -> float | None:
    """A rendition's SCORE: its VMAF at the ladder's largest size. A rendition measured by
    SSIM (before VMAF; redriven beside new ones) has none, so a master never ranks variants
    on two scales (the playlist writes SCORE on all variants or none)."""
    score = result.get("quality_display")
    return score if result.get("quality_metric") == METRIC else None
