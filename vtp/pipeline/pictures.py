"""The job's pictures beside its renditions: the poster and the storyboard, made as soon as
what they are made from is there rather than by the job's last call.

Both are cosmetic (a failure is logged and the job stands) and neither depends on the job
being finished: the poster is a frame of the source, the storyboard the I-frames of the
smallest video rendition. Made by the job's last call, after every encode, they were on
every job's critical path (0.4 s of a 2 s clip's 3 s). So the first video rendition to be
ready makes the poster, and the smallest planned one makes the storyboard once it is ready,
while the larger renditions still encode; the job's end makes only what is still missing
(the smallest rendition failed, say: then the storyboard comes from the smallest that
succeeded, as before).
"""

from __future__ import annotations

import logging
from pathlib import Path

from vtp import layout, privacy, workdirs
from vtp.errors import NotFound, VtpError
from vtp.jobs import Job, Rendition
from vtp.media import iframes, storyboard
from vtp.media.playlist import make_poster
from vtp.models import JobState, RenditionState
from vtp.pipeline.clients import Clients

log = logging.getLogger(__name__)


class Pictures:
    def __init__(self, clients: Clients) -> None:
        self.settings = clients.settings
        self.store = clients.store
        self.storage = clients.storage

    # --- while the job runs -----------------------------------------------------------------
    def early(self, job: Job, rend: Rendition) -> None:
        """After video rendition `rend` of a running `job` became whole: the poster if no
        one has made it yet, the storyboard if `rend` is the one it is made from. A cancel
        that came meanwhile removed the job's files before these were written: then they
        are removed again."""
        if job.state.terminal or rend.spec.kind != "video" or not rend.result:
            return
        written: list[str] = []
        if not self._exists(job, layout.POSTER) and self.write_poster(job):
            written.append(layout.POSTER)
        planned = _storyboard_source(job.renditions, succeeded_only=False)
        if planned is not None and planned.name == rend.name and self.write_storyboard(job, rend):
            written.append(storyboard.VTT)
        if written and self.store.get(job.id).state is JobState.CANCELLED:
            self._remove(job, written)

    # --- at the job's end ---------------------------------------------------------------------
    def final(self, job: Job) -> bool:
        """What the early calls did not make: the poster, and the storyboard from the
        smallest video rendition that succeeded, unless it made it already. Whether the
        job has a storyboard. StorageError only when the storage cannot say what is there."""
        has_video = job.source_info is not None and job.source_info.has_video
        if has_video and not self._exists(job, layout.POSTER):
            self.write_poster(job)
        source = _storyboard_source(job.renditions, succeeded_only=True)
        if source is None:
            return False
        planned = _storyboard_source(job.renditions, succeeded_only=False)
        made_early = planned is not None and planned.name == source.name
        if made_early and self._exists(job, storyboard.VTT):
            return True
        return self.write_storyboard(job, source)

    # --- making them --------------------------------------------------------------------------
    def write_poster(self, job: Job) -> bool:
        """A frame of the source as the job's poster; whether it was written."""
        assert job.source_info is not None
        if not job.source_info.has_video:
            return False  # sound alone: no picture to show
        url = self.storage.presigned_get(job.source.bucket, job.source.key, expires=600)
        try:
            with workdirs.scratch("poster") as tmp:
                path = make_poster(url, job.source_info, Path(tmp) / "poster.jpg", self.settings)
                self.storage.put_bytes(
                    self._bucket(job), f"{job.id}/{layout.POSTER}", path.read_bytes()
                )
            return True
        except VtpError as exc:
            # A missing poster is cosmetic; the renditions are what the job is for.
            log.warning("job %s: no poster: %s", job.id, exc.reason)
            return False

    def write_storyboard(self, job: Job, smallest: Rendition) -> bool:
        """Thumbnails on sprite sheets with their WebVTT index (vtp.media.storyboard), from the
        I-frames of `smallest`. Like the poster, cosmetic: a failure is logged and the job
        stands."""
        every = self.settings.storyboard_seconds
        if not every:
            return False
        bucket = self._bucket(job)
        folder = f"{job.id}/{layout.within_job(job.id, smallest.output_prefix, smallest.name)}/"
        try:
            text = self.storage.get_bytes(bucket, folder + str((smallest.result or {})["iframes"]))
            init_uri, frames = iframes.parse(text.decode())
            chosen = storyboard.pick(frames, every)
            if init_uri is None or not chosen:
                raise ValueError("the I-frame playlist names no init segment or no frames")
            init = self.storage.get_bytes(bucket, folder + init_uri)
            ranges = [
                self.storage.get_bytes(bucket, folder + f.uri, offset=f.offset, length=f.length)
                for _, _, f in chosen
            ]
            with workdirs.scratch("storyboard") as tmp:
                out = Path(tmp)
                thumbs = storyboard.build(
                    init, ranges, [(s, e) for s, e, _ in chosen], out,
                    source_size=(smallest.spec.width, smallest.spec.height),
                    width=self.settings.storyboard_width,
                    timeout=self.settings.ffprobe_timeout_seconds,
                )  # fmt: skip
                for sheet in sorted({t.sheet for t in thumbs}):
                    self.storage.put_bytes(bucket, f"{job.id}/{storyboard.FOLDER}/{sheet}",
                                           (out / sheet).read_bytes())  # fmt: skip
            self.storage.put_bytes(bucket, f"{job.id}/{storyboard.VTT}",
                                   storyboard.webvtt(thumbs).encode())  # fmt: skip
            log.info("job %s: storyboard of %d thumbnails from %s", job.id, len(thumbs),
                     smallest.name)  # fmt: skip
            return True
        except (VtpError, ValueError, KeyError, UnicodeDecodeError, OSError) as exc:
            log.warning("job %s: no storyboard: %s", job.id, getattr(exc, "reason", exc))
            return False

    def _bucket(self, job: Job) -> str:
        return privacy.outputs_bucket(self.settings, job)

    def _exists(self, job: Job, name: str) -> bool:
        try:
            self.storage.stat(self._bucket(job), f"{job.id}/{name}")
        except NotFound:
            return False
        return True

    def _remove(self, job: Job, written: list[str]) -> None:
        """Pictures written for a job cancelled meanwhile (its files were removed before)."""
        bucket = self._bucket(job)
        try:
            for name in written:
                if name == storyboard.VTT:
                    self.storage.remove_prefix(bucket, f"{job.id}/{storyboard.FOLDER}/")
                self.storage.remove_object(bucket, f"{job.id}/{name}")
        except VtpError as exc:
            log.warning("pictures of cancelled job %s not removed: %s", job.id, exc.reason)


def _storyboard_source(renditions: list[Rendition], *, succeeded_only: bool) -> Rendition | None:
    """The rendition the storyboard is made from: the smallest SDR video rendition (with an
    I-frame playlist, once it has a result); among those that succeeded, or among every
    one planned (the one to make it early from)."""
    videos = [
        r for r in renditions
        if r.spec.kind == "video" and r.spec.dynamic_range == "sdr"
        and (r.state is RenditionState.SUCCEEDED or not succeeded_only)
        and (not r.result or r.result.get("iframes"))
        and (r.result or not succeeded_only)
    ]  # fmt: skip
    return min(videos, key=lambda r: r.spec.width * r.spec.height) if videos else None
