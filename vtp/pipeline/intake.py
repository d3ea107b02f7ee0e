"""Intake: an object (from a bucket event or a manual job) probed, planned and recorded as a
job, or recorded as refused with its reason."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from vtp import callbacks, privacy
from vtp.errors import Conflict, InvalidRequest, InvalidSource, NotFound, VtpError
from vtp.jobs import Job, SourceRef
from vtp.media.build import build
from vtp.media.chunks import ChunkRange, plan_chunks
from vtp.media.ladder import (
    audio_only_renditions,
    audio_renditions,
    codec_ladders,
    hdr_renditions,
    plan_ladder,
    text_renditions,
)
from vtp.media.probe import probe_source
from vtp.media.tuning import TitlePlan, tune
from vtp.models import RenditionSpec, SourceInfo
from vtp.options import INVALID_OPTIONS_KEY, JobOptions, OptionsOrigin, from_metadata, job_key
from vtp.pipeline.clients import Clients
from vtp.pipeline.dispatch import Dispatcher
from vtp.pipeline.fanin import FanIn
from vtp.pipeline.views import kind_fields
from vtp.storage import ListedObject
from vtp.webhook import SourceObject, key_problem, storable_key

log = logging.getLogger(__name__)

# A subtitle file is text: hours of dialogue are a few hundred kilobytes.
MAX_CAPTION_BYTES = 10 * 1024 * 1024


class SubmitResult(BaseModel):
    job: Job
    created: bool
    # Why this job answers the request: new, or the same source version and options as an
    # existing job (and what became of the request's callback); for the client to read.
    reason: str = ""
    # The source version's other jobs (other options), oldest first: (id, options key).
    others: list[tuple[UUID, str]] = []


class Planned(BaseModel):
    """A source's plan: what probing found, the tuned ladder, its chunks, the decision."""

    source: SourceInfo
    specs: list[RenditionSpec]
    chunks: list[ChunkRange]
    title: TitlePlan
    # Tracks of the source (or caption files) left out, and why: bitmap subtitles, say.
    skipped: list[str] = Field(default_factory=list)
    # How each codec beside H.264 had its factors chosen (its own samples' summary).
    codecs: dict[str, dict[str, object]] = Field(default_factory=dict)

    def decision(self) -> dict[str, Any]:
        """What the job records of its plan (jobs.plan)."""
        extra: dict[str, Any] = {"skipped_tracks": self.skipped} if self.skipped else {}
        if self.codecs:
            extra["codecs"] = self.codecs
        # The tools that probed and sampled it (vtp.media.build): results say what made them.
        extra["tools"] = build().model_dump()
        return self.title.summary() | extra

    def preview(self) -> dict[str, Any]:
        """The plan as a dry run answers it: per rendition the factor, the cap and what the
        samples predict; in all, the predicted size and encode time."""
        rows = []
        for spec in self.specs:
            est = spec.estimate
            video = spec.kind == "video"
            rows.append(
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    **kind_fields(spec),
                    "audio_only": spec.audio_only,
                    "crf": spec.crf if video else None,
                    "preset": spec.preset if video else None,
                    "max_bitrate": spec.max_bitrate if video else None,
                    "audio_bitrate": spec.audio_bitrate,
                    "quality_target": spec.quality_target if video else None,
                    "predicted": est.model_dump(exclude={"probes"}) if est else None,
                    "probes": [list(p) for p in est.probes] if est else [],
                }
            )
        known = [s.estimate for s in self.specs if s.estimate and s.kind == "video"]
        return {
            "dry_run": True,
            "source": self.source.model_dump(mode="json"),
            "renditions": rows,
            "chunks": len(self.chunks),
            "plan": self.decision(),
            "predicted": {
                # Video only, over every rendition the samples could predict.
                "size_bytes": sum(e.size_bytes for e in known),
                "encode_cpu_seconds": round(sum(e.encode_cpu_seconds for e in known), 1),
                "renditions_predicted": len(known),
            },
        }


class Intake:
    def __init__(self, clients: Clients, dispatcher: Dispatcher, fanin: FanIn) -> None:
        self.clients = clients
        self.settings = clients.settings
        self.store = clients.store
        self.storage = clients.storage
        self.dispatcher = dispatcher
        self.fanin = fanin

    def submit(
        self,
        src: SourceObject,
        options: JobOptions | None = None,
        *,
        reprocess: bool = False,
        manual: bool = False,
    ) -> SubmitResult:
        """Probe, plan and record a job for one object with its options, then dispatch its
        renditions.

        `options`: a manual job's; None takes them from the object's own `x-amz-meta-vtp-*`
        metadata (a bucket event, reconciliation), or the defaults when it has none. The
        same object version with the same options (vtp.options) always maps to one job: a
        duplicate returns the existing job and dispatches nothing, unless `reprocess`.
        Sources come from the input buckets only (InvalidRequest otherwise). What cannot be
        processed (the key, the upload's options, the source) is refused with InvalidRequest
        for a manual job, whose caller is there to read why, and recorded as a failed job
        for a bucket event: nobody is there, and the event must leave a trace.
        """
        self._require_input_bucket(src)
        origin = OptionsOrigin.REQUEST if options is not None else OptionsOrigin.DEFAULTS
        problem = key_problem(src.key)
        if problem is not None:
            if manual:
                raise InvalidRequest(problem)
            ref = SourceRef(
                bucket=src.bucket, key=storable_key(src.key), etag=src.etag or "unknown",
                size=src.size,
            )  # fmt: skip
            asked = options or JobOptions()
            return self._reject(ref, f"{problem}: it cannot be processed", asked, origin)
        if options is not None and options.callback:
            self._check_callback(options.callback)
        obj = self.storage.stat(src.bucket, src.key)
        ref = SourceRef(bucket=src.bucket, key=src.key, etag=obj.etag or "none", size=obj.size)
        unwanted = None if manual else self._unwanted_name(src.key)
        if unwanted is not None:
            return self._reject(ref, unwanted, options or JobOptions(), origin)
        if options is None:
            try:
                options = from_metadata(obj.metadata)
                if options is not None and options.callback:
                    self._check_callback(options.callback)
            except InvalidRequest as exc:
                return self._reject(
                    ref, exc.reason, JobOptions(), OptionsOrigin.METADATA, key=INVALID_OPTIONS_KEY
                )
            origin = OptionsOrigin.METADATA if options is not None else OptionsOrigin.DEFAULTS
            options = options or JobOptions()
        # Private or not is part of what the job is (vtp.options): settled before its key.
        options = privacy.settle(options, self.settings)
        key = job_key(options, reprocess=reprocess)
        others = self.store.versions_jobs(ref)
        if not reprocess:
            existing = self.store.find(ref, key)
            if existing is not None:
                # MinIO redelivers events (at least once): answer without probing again.
                return self._duplicate(existing, options, others, manual=manual)
        try:
            planned = self._plan(src, obj.size, options)
        except InvalidSource as exc:
            return self._reject(ref, exc.reason, options, origin, key=key)
        except InvalidRequest as exc:
            if manual:
                raise
            return self._reject(ref, f"invalid upload options: {exc.reason}", options, origin,
                                key=INVALID_OPTIONS_KEY)  # fmt: skip
        job, created = self.store.create_job(
            ref,
            planned.source,
            planned.specs,
            options_key=key,
            options=options.recorded(origin, reprocess=reprocess),
            formats=options.formats,
            callback_url=options.callback,
            chunks=planned.chunks,
            decision=planned.decision(),
            priority=options.priority,
        )
        if not created:  # a concurrent call recorded it first
            return self._duplicate(job, options, others, manual=manual)
        log.info(
            "job %s for s3://%s/%s (%s): %s",
            job.id,
            src.bucket,
            src.key,
            key,
            ", ".join(
                f"{r.name} {r.spec.width}x{r.spec.height}" if r.spec.kind == "video" else r.name
                for r in job.renditions
            ),
        )
        self.clients.announce(job)
        self.dispatcher.pump()  # its tasks wait for slots (vtp.jobs.scheduling)
        return SubmitResult(
            job=self.store.get(job.id), created=True, reason=_new_reason(key, others, reprocess),
            others=others,
        )  # fmt: skip

    def _unwanted_name(self, key: str) -> str | None:
        """Why an upload's name says it is neither video nor sound (a bucket event: a manual
        job's caller named the file on purpose, and the probe will say what it holds)."""
        name = key.rsplit("/", 1)[-1]
        suffixes = self.settings.media_suffixes
        if name.lower().endswith(tuple(s.lower() for s in suffixes)):
            return None
        ext = name.rsplit(".", 1)[-1][:16] if "." in name else None
        kind = f"a {ext!r} file" if ext else "a file without a suffix"
        listed = " ".join(suffixes)
        return f"{kind} is neither video nor sound: uploads are taken by their names ({listed})"

    def _check_callback(self, url: str) -> None:
        callbacks.check_destination(
            url, allow_private=self.settings.callback_allow_private_networks
        )

    def _duplicate(
        self, job: Job, options: JobOptions, others: list[tuple[UUID, str]], *, manual: bool
    ) -> SubmitResult:
        """The answer for a request its job already exists for; a callback URL the job has
        not got is attached to it (sent at once if the job has ended). A different one is
        a Conflict for a manual job: sending the callback elsewhere would silently take it
        from whoever asked for it first."""
        reason = f"duplicate: job {job.id} has this object version with the same options"
        wanted = options.callback
        if wanted and job.callback_url != wanted:
            if job.callback_url:
                if manual:
                    raise Conflict(
                        f"job {job.id} has this object version with the same options and "
                        'calls back another URL; send "reprocess": true for a job of its own'
                    )
                reason += "; it calls back another URL, which is kept"
            else:
                job, attached = self.store.attach_callback(job.id, wanted)
                if attached:
                    reason += "; the callback is attached to it"
                    if job.state.terminal:
                        self.fanin.fire_callback(job)
        return SubmitResult(
            job=self.store.get(job.id),
            created=False,
            reason=reason,
            others=[o for o in others if o[0] != job.id],
        )

    def preview(self, src: SourceObject, options: JobOptions | None = None) -> Planned:
        """The plan a job for `src` would get, tuned from samples, without recording or
        encoding anything (a manual job's `"dry_run": true`). InvalidSource says why the
        source would be refused."""
        self._require_input_bucket(src)
        problem = key_problem(src.key)
        if problem is not None:
            raise InvalidRequest(problem)
        obj = self.storage.stat(src.bucket, src.key)
        return self._plan(src, obj.size, options or JobOptions())

    def source_version(self, src: SourceObject) -> str:
        """The ETag of the object a manual job names (what its quotas count by), once it is
        known to be in an input bucket: no other bucket's objects are ever looked at."""
        self._require_input_bucket(src)
        problem = key_problem(src.key)
        if problem is not None:
            raise InvalidRequest(problem)  # what submit would say: the key, not the store
        return self.storage.stat(src.bucket, src.key).etag

    def _require_input_bucket(self, src: SourceObject) -> None:
        """Sources come from the input buckets only: public outputs are public-read, so a job
        for another bucket's object would publish it."""
        buckets = self.settings.source_buckets
        if src.bucket not in buckets:
            raise InvalidRequest(
                f"bucket {src.bucket!r} is not an input bucket: sources come from "
                f"{', '.join(buckets)} (VTP_INPUT_BUCKETS)"
            )

    def _plan(self, src: SourceObject, size: int | None, options: JobOptions) -> Planned:
        """Probe, plan the ladder, tune it per title from samples (vtp.media.tuning), and cut it
        into chunks where the job is to be encoded in parts."""
        s = self.settings
        self._check_captions(src.bucket, options)
        url = self.storage.presigned_get(src.bucket, src.key, expires=600)
        info = probe_source(url, s, size_bytes=size)
        if not info.has_video:
            return self._plan_sound(info, options)
        renditions, mp4 = options.renditions, "mp4" in options.formats
        ladder = plan_ladder(info, s, renditions)
        if not ladder:
            raise InvalidSource(
                f"no rendition can be made from a {info.width}x{info.height} source"
            )
        # Sampling must leave split time to record the job within its own call.
        budget = min(s.quality_sample_timeout_seconds, s.work_deadline_seconds() / 2)
        # Rungs a user asked for by name are kept even when the samples say they add little.
        title = tune(url, info, ladder, s, prune=renditions is None, timeout=budget)
        videos, per_codec = self._codec_ladders(url, info, title, options, budget)
        hdr_skipped = []
        if options.hdr == "keep":
            kept = hdr_renditions(title.specs, info)
            videos += kept
            if not kept:
                hdr_skipped.append("hdr: the source is SDR; there is no HDR picture to keep")
        chunks = (
            plan_chunks(
                info.duration,
                segment_s=s.segment_seconds,
                chunk_s=s.chunk_seconds,
                threshold_s=s.chunk_threshold_seconds,
            )
            # The progressive MP4 is one file from one encoder: such a job is encoded whole;
            # so is a source without an index, where every chunk would read from the start.
            if s.chunked_encoding and not mp4 and info.seekable
            else []
        )
        specs = audio_renditions(
            videos, info, max_tracks=s.max_audio_tracks, loudness=options.loudness,
            muxed_mp4=mp4,
        )  # fmt: skip
        skipped = [
            f"sound track {t.index}: more than the {s.max_audio_tracks} sound tracks a job gets"
            for t in info.audio_tracks[s.max_audio_tracks :]
        ]
        text, left_out = text_renditions(
            title.specs, info, options.captions, max_tracks=s.max_text_tracks
        )
        return Planned(source=info, specs=[*specs, *text], chunks=chunks, title=title,
                       skipped=skipped + left_out + hdr_skipped, codecs=per_codec)  # fmt: skip

    def _plan_sound(self, info: SourceInfo, options: JobOptions) -> Planned:
        """A source of sound alone (a voice memo, a podcast): its sound tracks, nothing to
        sample or cut in chunks; what the job asked that has no meaning without a picture
        (renditions by size, other video codecs, captions, a progressive MP4) is said in
        its plan rather than refused."""
        s = self.settings
        specs = audio_only_renditions(info, s, max_tracks=s.max_audio_tracks,
                                      loudness=options.loudness)  # fmt: skip
        skipped = [
            f"sound track {t.index}: more than the {s.max_audio_tracks} sound tracks a job gets"
            for t in info.audio_tracks[s.max_audio_tracks :]
        ]
        if "mp4" in options.formats:
            skipped.append("mp4: a source of sound alone has no progressive MP4")
        if options.captions:
            skipped.append("captions: a source of sound alone has no picture to caption")
        title = TitlePlan(specs=[], note="a source of sound alone: nothing to sample")
        return Planned(source=info, specs=specs, chunks=[], title=title, skipped=skipped)

    def _check_captions(self, bucket: str, options: JobOptions) -> None:
        """A job's caption files must be there, beside the source, and small: a missing one
        is refused now with its key, not found out by a transcode call later."""
        for caption in options.captions:
            try:
                found = self.storage.stat(bucket, caption.key)
            except NotFound:
                raise InvalidRequest(
                    f"caption file s3://{bucket}/{caption.key} does not exist"
                ) from None
            if found.size > MAX_CAPTION_BYTES:
                raise InvalidRequest(
                    f"caption file {caption.key} is {found.size} bytes; at most "
                    f"{MAX_CAPTION_BYTES} are read"
                )

    def _codec_ladders(
        self, url: str, info: SourceInfo, title: TitlePlan, options: JobOptions, budget: float
    ) -> tuple[list[RenditionSpec], dict[str, dict[str, object]]]:
        """The H.264 ladder and the other codecs' (vtp.media.ladder.codec_ladders), each codec's
        factors searched from the same samples with its own encoder (the search runs on
        x264's scale, vtp.media.codecs.crf_for) for what H.264's rung shows (its target, or
        the knee its search stopped at), in what is left of the sampling budget shared
        among them; a codec left without time keeps the factors carried over from x264."""
        videos = codec_ladders(title.specs, options.codecs)
        extra = videos[len(title.specs) :]
        codecs = list(dict.fromkeys(s.codec for s in extra))
        if not codecs:
            return videos, {}
        plans: dict[str, dict[str, object]] = {}
        tuned: list[RenditionSpec] = []
        left = budget - title.sampling_wall_seconds
        for i, codec in enumerate(codecs):
            group = [s for s in extra if s.codec == codec]
            share = left / (len(codecs) - i)
            if share < 5.0 or not title.samples:
                tuned += group
                plans[codec] = {"note": f"factors carried over from x264's ({share:.0f} s left "
                                        "to sample)" if title.samples else title.note}  # fmt: skip
                continue
            plan = tune(url, info, group, self.settings, prune=False, timeout=share)
            left -= plan.sampling_wall_seconds
            tuned += plan.specs
            plans[codec] = plan.summary()
        return [*title.specs, *tuned], plans

    def _reject(
        self,
        ref: SourceRef,
        reason: str,
        options: JobOptions,
        origin: OptionsOrigin,
        *,
        key: str | None = None,
    ) -> SubmitResult:
        """Record a source that cannot be processed as a failed job with its reason."""
        job, created = self.store.record_rejected(
            ref,
            reason,
            options_key=key or options.identity(),
            options=options.recorded(origin),
            callback_url=options.callback if key != INVALID_OPTIONS_KEY else None,
        )
        if created:
            log.warning("rejected s3://%s/%s: %s", ref.bucket, ref.key, reason)
            self.clients.publish_job(job)
            self.fanin.fire_callback(job)
        return SubmitResult(
            job=self.store.get(job.id), created=created, reason=f"refused: {job.error}"
        )

    # --- reconciliation -------------------------------------------------------------------
    def reconcile(self) -> dict[str, int]:
        """Submit the objects of the input buckets that no job knows: their event was lost
        (split down or failing when MinIO sent it without a queue dir, the async route's one
        call lost). Objects younger than the grace period still have their event coming;
        older than the window they are history, not lost work."""
        s = self.settings
        now = datetime.now(UTC)
        listed = submitted = 0
        suffixes = tuple(x.lower() for x in s.media_suffixes)
        for bucket in s.source_buckets:
            batch: list[ListedObject] = []
            for obj in self.storage.list_objects(bucket):
                listed += 1
                age = (now - obj.last_modified).total_seconds()
                if obj.key.lower().endswith(suffixes) and (
                    s.reconcile_grace_seconds <= age <= s.reconcile_window_seconds
                ):
                    batch.append(obj)
                if len(batch) >= 500:
                    submitted += self._reconcile(bucket, batch, s.reconcile_max_per_run - submitted)
                    batch = []
                if submitted >= s.reconcile_max_per_run:
                    break
            submitted += self._reconcile(bucket, batch, s.reconcile_max_per_run - submitted)
        if submitted:
            log.warning("reconciled %d object(s) that had no job", submitted)
        return {"listed": listed, "submitted": submitted}

    def _reconcile(self, bucket: str, objects: list[ListedObject], room: int) -> int:
        known = self.store.known_versions(bucket, [(storable_key(o.key), o.etag) for o in objects])
        submitted = 0
        for obj in objects:
            if submitted >= room:
                break
            if (storable_key(obj.key), obj.etag) in known:
                continue
            log.warning("s3://%s/%s (ETag %s) has no job: submitting it", bucket, obj.key, obj.etag)
            try:
                self.submit(SourceObject(bucket=bucket, key=obj.key, etag=obj.etag, size=obj.size))
            except NotFound:
                continue  # deleted meanwhile
            except VtpError as exc:
                log.error("reconciling s3://%s/%s failed: %s", bucket, obj.key, exc.reason)
                continue
            submitted += 1
        return submitted


def _new_reason(key: str, others: list[tuple[UUID, str]], reprocess: bool) -> str:
    if reprocess:
        return f"new: encoded again as asked (reprocess), beside {len(others)} earlier job(s)"
    if not others:
        return "new: the first job for this object version"
    return (
        f"new: this object version's other job(s) ({', '.join(str(i) for i, _ in others)}) "
        f"have other options than {key}"
    )
