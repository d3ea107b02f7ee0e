"""Jobs as clients see them: state, renditions with live progress, output URLs."""

from __future__ import annotations

import logging
from typing import Any

from vtp import callbacks, layout
from vtp.errors import NotFound
from vtp.events import progress_field
from vtp.jobs import Job, Rendition
from vtp.media.encode import AUDIO_CHANNELS, AUDIO_SAMPLE_RATE
from vtp.media.quality import METRIC
from vtp.models import RenditionSpec, RenditionState
from vtp.pipeline.clients import Clients
from vtp.pipeline.urls import Urls

log = logging.getLogger(__name__)


class JobViews:
    def __init__(self, clients: Clients, urls: Urls) -> None:
        self.store = clients.store
        self.bus = clients.bus
        self.urls = urls
        self.queue = clients.queue

    def describe_job(
        self, job: Job, *, live: bool = True, listing: bool = False, play: bool = True
    ) -> dict[str, Any]:
        """The job as clients see it: state, renditions with live progress, output URLs.

        The callback URL is the job owner's: one job's view shows it without its query
        string (receivers put their own tokens there), a listing (`listing`) not at all.
        A private job's URLs are play URLs minted now (vtp.pipeline.urls), or none with
        `play` False.
        """
        progress = self.bus.current(job.id) if live else {}
        out = None if job.outputs_deleted_at else self.urls.outputs(job, play=play)
        rends = []
        for r in job.renditions:
            video = r.spec.kind == "video"
            item: dict[str, Any] = {
                "name": r.name,
                "kind": r.spec.kind,
                "state": r.state.value,
                # What each kind is (a picture's size and factor, a sound's channels, a
                # subtitle track's language): fields of one kind only, never nulls for the
                # others', so no reader shows a sound track as "NonexNone".
                **(_picture(r) if video else _track(r)),
                "attempts": r.attempts,
                "refusals": r.refusals,
                "error": r.error,
                "size_bytes": r.size_bytes,
                "avg_bitrate": r.avg_bitrate,
                "peak_bitrate": r.peak_bitrate,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                # The ffmpeg and ffprobe builds that made it (vtp.media.build).
                "tools": (r.result or {}).get("tools"),
                # In the master playlist already: playable before the job ends.
                "ready": r.name in job.ready,
                # Its units of work: one for a rendition encoded whole.
                "tasks": [
                    {
                        "chunk": t.chunk,
                        "state": t.state.value,
                        "start_s": t.start_s,
                        "end_s": t.end_s,
                        "attempts": t.attempts,
                        "refusals": t.refusals,
                        # A backup call raced it (a straggler); "running" while it does.
                        "backup": (
                            "running"
                            if t.backup_started_at
                            else "queued"
                            if t.backup_call_id
                            else "ran"
                            if t.backups
                            else None
                        ),
                        "error": t.error,
                        # A chunk's live percent, from its own progress events.
                        "percent": (
                            chunk.percent
                            if (chunk := progress.get(progress_field(r.name, t.chunk)))
                            else None
                        ),
                    }
                    for t in r.tasks
                ],
                "urls": {},
            }
            if r.state is RenditionState.SUCCEEDED and r.result and out is not None:
                folder = layout.within_job(job.id, r.output_prefix, r.name)
                item["urls"]["playlist"] = out.url(f"{folder}/{r.result['playlist']}")
                if r.result.get("subtitles"):  # the WebVTT file itself
                    item["urls"]["subtitles"] = out.url(f"{folder}/{r.result['subtitles']}")
                if r.result.get("iframes"):  # trick play (vtp.media.iframes)
                    item["urls"]["iframes"] = out.url(f"{folder}/{r.result['iframes']}")
                if r.result.get("mp4"):
                    item["urls"]["mp4"] = out.url(f"{folder}/{r.result['mp4']}")
            if live and r.name in progress:
                p = progress[r.name]
                item["progress"] = p.model_dump(
                    include={"id", "state", "percent", "fps", "speed", "eta_seconds", "ts"}
                )
            rends.append(item)
        urls: dict[str, str] = {}
        if out is not None:
            if job.master_playlist or (job.ready and not job.state.terminal):
                # Early, the master lists the renditions ready so far (`ready`).
                urls["master"] = out.url(layout.MASTER)
            if job.master_playlist:
                if job.source_info is None or job.source_info.has_video:  # sound alone: none
                    urls["poster"] = out.url(layout.POSTER)
                # The DASH manifest, the storyboard's index... (vtp.layout), as written.
                for name, path in sorted(job.outputs.items()):
                    if isinstance(path, str):
                        urls[name] = out.url(path)
        done = [r for r in job.renditions if r.state.terminal]
        return {
            "id": str(job.id),
            "state": job.state.value,
            "error": job.error,
            "source": job.source.model_dump(),
            "source_info": job.source_info.model_dump() if job.source_info else None,
            "formats": job.formats,
            # With the source version, what makes the job this job (vtp.options).
            "options_key": job.options_key,
            "options": job.options,
            "redrives": job.redrives,
            # The renditions the master playlist lists so far (all that succeeded, once the
            # job has ended): playback can start as soon as there is one.
            "ready": job.ready,
            # The retention sweep removed its outputs (VTP_RETENTION_DAYS): no URLs.
            "outputs_deleted_at": job.outputs_deleted_at,
            # Private outputs (vtp.privacy): `urls` are play URLs, working until
            # `urls_expire_at` (ask again for fresh ones); none where no link secret signs them.
            "private": job.private,
            "urls_expire_at": out.expires_at if out is not None else None,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "renditions_done": len(done),
            # Encoder time per video codec, summed over its renditions' calls (vtp.media.codecs).
            "encode_seconds": _encode_seconds(job),
            "renditions": rends,
            # How the ladder was decided: samples, their cost, rungs dropped and why.
            "plan": job.plan,
            # The builds that planned it (each rendition says which made it).
            "tools": (job.plan or {}).get("tools"),
            "urls": urls,
            "callback": self._describe_callback(job, listing=listing),
            "priority": job.priority,
            # Work waiting for a slot (vtp.jobs.scheduling): the jobs served before it, its
            # tasks waiting and in flight, and about when its first call starts.
            "queue": self._queue(job) if live and not listing else None,
        }

    def _queue(self, job: Job) -> dict[str, Any] | None:
        if job.state.terminal:
            return None
        place = self.queue.place(job.id)
        if place is None:
            return None
        return {
            "ahead": place.ahead,
            "waiting": place.waiting,
            "in_flight": place.in_flight,
            "start_in_s": round(place.start_s, 1) if place.start_s is not None else None,
        }

    @staticmethod
    def _describe_callback(job: Job, *, listing: bool) -> dict[str, Any] | None:
        if not job.callback_url:
            return None
        seen: dict[str, Any] = {
            "status": job.callback_status.value,
            "attempts": job.callback_attempts,
        }
        if listing:
            # Not even the error: a failed delivery's names the receiver's host.
            return seen
        return (
            {"url": callbacks.shown_url(job.callback_url)}
            | seen
            | {"error": job.callback_last_error}
        )

    def find_job(self, job_id: str) -> Job:
        """A job by its id or an unambiguous prefix of it (the page shows 8 digits)."""
        try:
            return self.store.get(self.store.resolve_id(job_id))
        except (ValueError, NotFound) as exc:
            raise NotFound(f"no job {job_id!r}") from exc


def kind_fields(spec: RenditionSpec) -> dict[str, Any]:
    """What a rendition of `spec` is, by its kind: a picture's size, rate and codec, a sound
    track's codec and channels, nothing for a subtitle track. A sound rendition's spec
    carries the video fields of the rung whose function encodes it, unused: shown, they
    would tell a reader the sound is 640x360."""
    if spec.kind == "video":
        return {"width": spec.width, "height": spec.height, "fps": spec.fps, "codec": spec.codec,
                "dynamic_range": spec.dynamic_range}  # fmt: skip
    if spec.kind == "audio":
        return {"codec": "aac", "channels": AUDIO_CHANNELS, "sample_rate": AUDIO_SAMPLE_RATE}
    return {}


def _picture(r: Rendition) -> dict[str, Any]:
    """A video rendition: its picture, how it was encoded (vtp.media.tuning) and what it measured
    (vtp.media.quality)."""
    return {
        **kind_fields(r.spec),
        "crf": r.spec.crf,
        "preset": r.spec.preset,
        "max_bitrate": r.spec.max_bitrate,
        "quality": _quality(r),
    }


def _quality(r: Rendition) -> dict[str, Any]:
    """A video rendition's quality: the target, what the samples predicted, what its
    encode measured (once it succeeded), and whether that fell short of the target."""
    est = r.spec.estimate
    result = r.result or {}
    return {
        "metric": r.quality_metric or (est.metric if est else METRIC),
        "target": r.spec.quality_target,
        "predicted": est.quality if est else None,
        "predicted_bitrate": est.bitrate if est else None,
        "score": r.quality_score,
        "worst": r.quality_worst,
        "display": result.get("quality_display"),
        "ssim": result.get("quality_ssim"),  # the secondary figure
        "flagged": r.quality_flagged,
        "error": result.get("quality_error"),
    }


def _track(r: Rendition) -> dict[str, Any]:
    """A sound or subtitle rendition's track: which of the source's (or the caption file),
    as players name it, and for sound the loudness it measured when the job asked for one
    (vtp.media.loudness)."""
    result = r.result or {}
    if r.spec.text_only:
        return {
            "track": r.spec.text_track,
            "caption_key": r.spec.caption_key,
            "language": r.spec.language,
            "label": r.spec.label,
            "forced": r.spec.forced,
        }
    return {
        **kind_fields(r.spec),
        "track": r.spec.audio_track,
        "language": r.spec.language,
        "label": r.spec.label,
        "default": r.spec.default_track,
        "loudness": (
            {"target": r.spec.loudness, "measured": result.get("loudness")}
            if r.spec.loudness is not None
            else None
        ),
    }


def _encode_seconds(job: Job) -> dict[str, float]:
    """Seconds the encoder ran per video codec: each whole rendition's `timings.encode_s`,
    each chunk's for a rendition encoded in chunks."""
    out: dict[str, float] = {}
    for r in job.renditions:
        if r.spec.kind != "video":
            continue
        results = [t.result for t in r.tasks if t.result] if len(r.tasks) > 1 else [r.result]
        for result in results:
            timings = (result or {}).get("timings") or {}
            seconds = timings.get("encode_s") if isinstance(timings, dict) else None
            if isinstance(seconds, int | float):
                out[r.spec.codec] = round(out.get(r.spec.codec, 0.0) + float(seconds), 3)
    return out
