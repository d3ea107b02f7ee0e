"""Pipeline paths that are hard to reach through uploads, driven directly against the stack's
real PostgreSQL, Redis, S3 and gateway."""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr

from tests.api import http
from tests.inprocess import HELD, chunked_pipeline, job_for_clip, quiet_bucket, record_job
from vtp import db
from vtp.errors import Conflict
from vtp.jobs import Job, SourceRef
from vtp.lifecycle import TaskState
from vtp.media.chunks import plan_chunks
from vtp.media.ladder import plan_ladder
from vtp.models import RenditionState, SourceInfo, TranscodeTask
from vtp.options import JobOptions
from vtp.pipeline import Pipeline
from vtp.settings import Settings

INFO = SourceInfo(
    duration=2.0, width=1280, height=720, fps=30.0, has_audio=True, video_codec="h264"
)


def _ended(pipeline: Pipeline, job: Job, timeout: float = 120) -> Job:
    """The job once it has ended (the stack's functions encode it)."""
    deadline = time.monotonic() + timeout
    while not (job := pipeline.store.get(job.id)).state.terminal:
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    return job


def test_call_refused_before_the_handler_becomes_a_retry(pipeline: Pipeline) -> None:
    """A 429/502/504 for a call that never began (busy watchdog, restarting function) must not
    leave the rendition queued forever: it becomes a retry with the reason recorded."""
    src = SourceRef(bucket="uploads", key=f"core/{time.time_ns()}.mp4", etag="e1")
    job, _ = record_job(pipeline, src, INFO, plan_ladder(INFO, pipeline.settings, ["360p"]))
    pipeline.store.record_dispatch(job.id, "360p", "never-started")
    out = pipeline.on_rendition_callback(
        str(job.id), "360p", function_status=429, call_id="never-started"
    )
    rend = pipeline.store.get(job.id).rendition("360p")
    assert out["state"] == RenditionState.RETRYING
    assert rend.state is RenditionState.RETRYING
    assert rend.attempts == 0  # the call never ran: no attempt spent
    assert rend.error is not None and "HTTP 429" in rend.error
    events = pipeline.bus.current(job.id)
    assert events["360p"].state == "retrying"


def test_successful_callback_for_an_unstarted_rendition_changes_nothing(
    pipeline: Pipeline,
) -> None:
    """A 2xx "skipped" answer (a duplicate delivery) is not a failure."""
    src = SourceRef(bucket="uploads", key=f"core/{time.time_ns()}.mp4", etag="e2")
    job, _ = record_job(pipeline, src, INFO, plan_ladder(INFO, pipeline.settings, ["360p"]))
    pipeline.on_rendition_callback(str(job.id), "360p", function_status=200, call_id="dup")
    assert pipeline.store.get(job.id).rendition("360p").state is RenditionState.QUEUED


def test_callback_urls_are_signed_per_call(pipeline: Pipeline) -> None:
    from urllib.parse import parse_qs, urlsplit

    from vtp.errors import Unauthorized

    assert pipeline.settings.callback_secret is None  # this fixture's settings: no secret
    signed = Pipeline(
        pipeline.settings.model_copy(update={"callback_secret": SecretStr("k")}),
        pipeline.store,
        pipeline.storage,
        pipeline.bus,
        pipeline.invoker,
    )
    q = parse_qs(urlsplit(signed.urls.callback_url("j1", "720p", "call-1")).query)
    assert q["job"] == ["j1"] and q["rendition"] == ["720p"] and q["call"] == ["call-1"]
    assert "chunk" not in q  # a rendition encoded whole: its URL as before there were chunks
    signed.check_callback_signature("j1", "720p", "call-1", q["sig"][0])
    chunked = parse_qs(urlsplit(signed.urls.callback_url("j1", "720p", "call-1", 3)).query)
    assert chunked["chunk"] == ["3"] and chunked["sig"] != q["sig"]
    signed.check_callback_signature("j1", "720p", "call-1", chunked["sig"][0], 3)
    with pytest.raises(Unauthorized):  # one chunk's URL cannot speak for another
        signed.check_callback_signature("j1", "720p", "call-1", chunked["sig"][0], 4)
    with pytest.raises(Unauthorized):
        signed.check_callback_signature("j1", "720p", "call-1", q["sig"][0], 3)
    for job, rendition, call in (("j2", "720p", "call-1"), ("j1", "360p", "call-1"),
                                 ("j1", "720p", "call-2"), ("j1", "720p", None)):  # fmt: skip
        with pytest.raises(Unauthorized):
            signed.check_callback_signature(job, rendition, call, q["sig"][0])
    with pytest.raises(Unauthorized):
        signed.check_callback_signature("j1", "720p", "call-1", None)
    pipeline.check_callback_signature("j1", "720p", "call-1", None)  # no secret: open


def test_a_bug_in_the_encoder_is_recorded_as_what_it_is(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception the pipeline did not expect (the real one: an IndexError in
    peak_bitrate) is recorded with its type and message, and not retried as if the worker
    had vanished: the same input would hit it again."""
    import vtp.pipeline.transcode as pipeline_module

    def broken(*args: object, **kwargs: object) -> None:
        raise IndexError("list assignment index out of range")

    monkeypatch.setattr(pipeline_module, "encode_rendition", broken)
    key = f"core/{time.time_ns()}.mp4"
    pipeline.storage.put_bytes("uploads", key, b"stands in for a video: never decoded here")
    src = SourceRef(bucket="uploads", key=key, etag=pipeline.storage.stat("uploads", key).etag)
    job, _ = record_job(pipeline, src, INFO, plan_ladder(INFO, pipeline.settings, ["360p"]))
    out = pipeline.run_rendition(TranscodeTask(job_id=job.id, rendition="360p"), "call-bug")
    rend = pipeline.store.get(job.id).rendition("360p")
    assert out["state"] == "failed" and rend.state is RenditionState.FAILED
    assert rend.attempts == 1
    assert rend.error is not None and "IndexError: list assignment index out of range" in rend.error
    assert pipeline.store.get(job.id).state.value == "failed"  # the job ended, with the reason


def test_failures_are_classified_by_what_retrying_can_change() -> None:
    import psycopg2

    from vtp.errors import FfmpegError, FfmpegTimeout, InvalidSource, StorageError
    from vtp.pipeline.transcode import _failure

    settings = Settings(exec_timeout="1h")
    cases: list[tuple[BaseException, bool, str]] = [
        (InvalidSource("not a video"), False, "not a video"),
        (FfmpegError("connection reset"), True, "connection reset"),
        (FfmpegError("Invalid data found", transient=False), False, "Invalid data found"),
        (FfmpegTimeout("ffmpeg ran past 3300s"), True, "exec_timeout is 3600s"),
        (StorageError("S3 503"), True, "S3 503"),
        (psycopg2.OperationalError("server closed the connection"), True, "OperationalError"),
        (requests.ConnectionError("refused"), True, "ConnectionError"),
        (OSError(28, "No space left on device"), True, "No space left"),
        (ValueError("bad math"), False, "internal error (ValueError: bad math)"),
        (KeyError("width"), False, "internal error (KeyError"),
    ]
    for exc, retryable, words in cases:
        reason, again = _failure(exc, settings)
        assert again is retryable, exc
        assert words in reason, (exc, reason)


def test_a_source_deleted_or_replaced_since_the_job_began_fails_for_good(
    pipeline: Pipeline,
) -> None:
    key = f"core/{time.time_ns()}.mp4"
    pipeline.storage.put_bytes("uploads", key, b"version one")
    etag = pipeline.storage.stat("uploads", key).etag
    plan = plan_ladder(INFO, pipeline.settings, ["360p"])
    replaced, _ = record_job(pipeline, SourceRef(bucket="uploads", key=key, etag=etag), INFO, plan)
    pipeline.storage.put_bytes("uploads", key, b"version two, a different object")
    out = pipeline.run_rendition(TranscodeTask(job_id=replaced.id, rendition="360p"), "c-r")
    assert out["state"] == "failed" and "was replaced" in out["error"], out
    gone, _ = record_job(
        pipeline,
        SourceRef(bucket="uploads", key=f"core/{time.time_ns()}-gone.mp4", etag="e4"),
        INFO,
        plan,
    )
    out = pipeline.run_rendition(TranscodeTask(job_id=gone.id, rendition="360p"), "c-g")
    assert out["state"] == "failed" and "is gone" in out["error"], out
    assert pipeline.store.get(gone.id).rendition("360p").attempts == 1  # not retried


def test_a_redelivered_call_refused_as_duplicate_leaves_the_attempt_running(
    pipeline: Pipeline,
) -> None:
    """A restarted CE queue-worker gets its unacknowledged message again at once; the
    transcode refuses it (the attempt still runs) and answers 200. That report must not
    write off the attempt that is encoding; a failed report of it must, once the attempt has
    stayed silent after it."""
    src = SourceRef(bucket="uploads", key=f"core/{time.time_ns()}.mp4", etag="e5")
    job, _ = record_job(pipeline, src, INFO, plan_ladder(INFO, pipeline.settings, ["360p"]))
    pipeline.store.record_dispatch(job.id, "360p", "call-1")
    pipeline.store.begin_attempt(job.id, "360p", "call-1")
    pipeline.on_rendition_callback(str(job.id), "360p", function_status=200, call_id="call-1")
    assert pipeline.store.get(job.id).rendition("360p").state is RenditionState.RUNNING
    pipeline.on_rendition_callback(str(job.id), "360p", function_status=500, call_id="call-1")
    reported = pipeline.store.get(job.id).rendition("360p").task()
    assert reported.state is TaskState.RUNNING and "HTTP 500" in str(reported.death_report)
    time.sleep(0.3)  # and no heartbeat: the worker is gone
    (confirmed,) = pipeline.store.confirm_deaths(0.1, job_id=job.id)
    assert confirmed.state is TaskState.RETRYING and "without a result" in str(confirmed.error)


@pytest.mark.slow
def test_a_written_off_attempt_can_neither_overwrite_nor_publish(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Attempt 1 is written off while it encodes (its heartbeats stalled), attempt 2 runs
    and the job succeeds, and only then does attempt 1's encode end. It must upload nothing
    over attempt 2's files and record nothing; the job's playlists are attempt 2's."""
    import subprocess

    import vtp.pipeline.transcode as transcode_module
    from tests.clips import make_clip
    from vtp.media.probe import probe_source

    clip = make_clip(tmp_path / "zombie.mp4", size="640x360", seconds=3)
    key = f"core/{time.time_ns()}-zombie.mp4"
    bucket = quiet_bucket(pipeline)
    pipeline.storage.client.fput_object(bucket, key, str(clip))
    stat = pipeline.storage.stat(bucket, key)
    url = pipeline.storage.presigned_get(bucket, key, expires=600)
    info = probe_source(url, pipeline.settings, size_bytes=stat.size)
    job, _ = record_job(
        pipeline,
        SourceRef(bucket=bucket, key=key, etag=stat.etag, size=stat.size),
        info,
        plan_ladder(info, pipeline.settings, ["360p"]),
    )
    task = TranscodeTask(job_id=job.id, rendition="360p")
    real_encode = transcode_module.encode_rendition
    replacement: dict[str, object] = {}
    encodes: list[int] = []

    def stalled_then_late(*args: object, **kwargs: object) -> object:
        encodes.append(len(encodes) + 1)
        result = real_encode(*args, **kwargs)  # type: ignore[arg-type]
        if encodes == [1]:
            # While attempt 1 "stalls": the sweeper writes it off, the queue redelivers the
            # call (same call id), attempt 2 runs to the end and the job is finalized.
            assert [t.rendition for t in pipeline.store.reap_stale(0)] == ["360p"]
            encodes.append(2)
            replacement.update(pipeline.run_rendition(task, "call-z"))
        return result

    monkeypatch.setattr(transcode_module, "encode_rendition", stalled_then_late)
    zombie = pipeline.run_rendition(task, "call-z")
    assert replacement.get("state") == "succeeded", replacement
    assert "superseded" in zombie and "attempt 2" in str(zombie["superseded"]), zombie

    done = pipeline.store.get(job.id)
    rend = done.rendition("360p")
    assert done.state.value == "succeeded" and rend.attempts == 2
    assert rend.output_prefix == f"{job.id}/360p/attempt-2"
    outputs = pipeline.settings.outputs_bucket
    listed = [
        o.object_name
        for o in pipeline.storage.client.list_objects(outputs, prefix=f"{job.id}/", recursive=True)
    ]
    assert listed and not [k for k in listed if "/attempt-1/" in k], listed
    assert not [k for k in listed if k.startswith(f"{job.id}/360p/") and "/attempt-2/" not in k]
    # What the job publishes is attempt 2's, and it plays: ffprobe reads it through the master.
    master = pipeline.storage.get_bytes(outputs, f"{job.id}/master.m3u8").decode()
    assert "360p/attempt-2/index.m3u8" in master, master
    view = pipeline.describe_job(done, live=False)
    assert "/360p/attempt-2/" in view["renditions"][0]["urls"]["playlist"]
    assert http.get(view["urls"]["master"], timeout=10).status_code == 200
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
         view["renditions"][0]["urls"]["playlist"]],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert abs(float(probe.stdout.strip()) - info.duration) < 0.2, probe.stdout
    conn = db.connect(pipeline.settings.postgres_dsn.get_secret_value())
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT attempt, from_state, to_state FROM state_changes"
            " WHERE job_id = %s AND rendition = '360p' ORDER BY id",
            (str(job.id),),
        )
        changes = cur.fetchall()
    conn.close()
    assert (2, "running", "succeeded") in [tuple(c) for c in changes], changes
    assert (1, "running", "succeeded") not in [tuple(c) for c in changes], changes


@pytest.mark.slow
def test_a_forged_death_report_does_not_stop_a_live_encode(
    pipeline: Pipeline,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The callback URL of the call running now is in the gateway's and queue-worker's logs;
    a failure report posted with it while the encode runs is refuted by the attempt's next
    heartbeat, and the encode ends succeeded, in its first attempt."""
    import threading

    from tests.clips import make_clip

    # Beats sooner than production's 10 s: the same logic, within a test's patience.
    settings = pipeline.settings.model_copy(
        update={"heartbeat_seconds": 0.3, "death_confirm_seconds": 2.3}
    )
    pipeline = Pipeline(settings, pipeline.store, pipeline.storage, pipeline.bus, pipeline.invoker)
    caplog.set_level("WARNING", logger="vtp.jobs.attempts")
    # Long enough that the encode runs for seconds after the report on any machine.
    clip = make_clip(tmp_path / "live.mp4", size="1280x720", seconds=8, audio=False)
    job = job_for_clip(pipeline, clip, ["720p"])
    outcome: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            pipeline.run_rendition(TranscodeTask(job_id=job.id, rendition="720p"), "call-live")
        )
    )
    worker.start()
    deadline = time.monotonic() + 30
    while pipeline.store.get(job.id).rendition("720p").state is not RenditionState.RUNNING:
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.05)
    pipeline.on_rendition_callback(
        str(job.id), "720p", function_status=502, call_id="call-live", body=b"forged"
    )
    # Recorded, not believed: the attempt still runs, and its next heartbeat drops the
    # report (said in the log) while it still encodes.
    assert pipeline.store.get(job.id).rendition("720p").state is RenditionState.RUNNING
    deadline = time.monotonic() + 20
    while not any("the report is dropped" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no heartbeat refuted the report"
        assert worker.is_alive(), f"the encode ended before a heartbeat: {outcome}"
        time.sleep(0.05)
    assert pipeline.store.get(job.id).rendition("720p").task().death_reported_at is None
    assert pipeline.store.confirm_deaths(0.0, job_id=job.id) == [], "the live one written off"
    worker.join(120)
    assert outcome.get("state") == "succeeded" and outcome.get("attempt") == 1, outcome


@pytest.mark.slow
def test_a_rendition_encoded_in_chunks_is_joined_seamlessly(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Split plans a 20 s source as three chunks of 8, 8 and 4 s; the stack's transcode
    function encodes each as its own call (through the gateway's queue, reporting to split
    with the chunk in its signed callback URL); fan-in proves the join and writes one
    playlist over the three chunks' folders. ffprobe of the master: every frame once, at
    a steady 25 fps across both boundaries, a keyframe every 2 s. The sound is encoded once,
    whole, as an audio rendition every variant names: decoded, it holds every sample of
    the 20 s, with no gap at the joins."""
    from tests.clips import make_clip
    from vtp.webhook import SourceObject

    bucket = quiet_bucket(pipeline)
    chunked = chunked_pipeline(pipeline)
    clip = make_clip(tmp_path / "twenty.mp4", size="640x360", seconds=20, rate=25)
    key = f"chunked/{time.time_ns()}.mp4"
    pipeline.storage.client.fput_object(bucket, key, str(clip))
    options = JobOptions(renditions=["360p"], formats=["hls", "dash"])
    job = chunked.submit(SourceObject(bucket=bucket, key=key), options).job
    tasks = job.rendition("360p").tasks
    assert [(t.chunk, t.start_s, t.end_s) for t in tasks] == [(0, 0, 8), (1, 8, 16), (2, 16, 20)]
    assert [r.name for r in job.renditions] == ["360p", "audio"]
    assert job.rendition("360p").spec.audio_bitrate is None  # the chunks carry no sound
    assert [(t.chunk, t.start_s) for t in job.rendition("audio").tasks] == [(0, None)]
    job = _ended(pipeline, job)
    assert job.state.value == "succeeded", job.error
    rend = job.rendition("360p")
    assert [(t.state, t.attempts) for t in rend.tasks] == [(TaskState.SUCCEEDED, 1)] * 3
    assert rend.output_prefix == f"{job.id}/360p" and rend.result is not None
    view = pipeline.describe_job(job, live=False)
    playlist = http.get(view["renditions"][0]["urls"]["playlist"], timeout=10).text
    assert [line for line in playlist.splitlines() if line.endswith(".m4s")] == [
        "chunk-0/attempt-1/seg_00001.m4s", "chunk-0/attempt-1/seg_00002.m4s",
        "chunk-1/attempt-1/seg_00003.m4s", "chunk-1/attempt-1/seg_00004.m4s",
        "chunk-2/attempt-1/seg_00005.m4s",
    ]  # fmt: skip
    frames = _frames(view["urls"]["master"])
    assert len(frames) == 500
    assert {round(b[0] - a[0], 4) for a, b in itertools.pairwise(frames)} == {0.04}
    keys = [t for t, key in frames if key]
    assert [round(k - keys[0], 3) for k in keys] == [2.0 * i for i in range(10)]
    assert rend.result["segments"] == 5 and rend.result["duration"] == pytest.approx(20.0)
    # Each chunk measured itself as it was encoded, on frames spread over all its segments;
    # the rendition's score is their frame-weighted mean, its parts every segment.
    chunk_scores = [t.result["quality_score"] for t in rend.tasks if t.result]
    assert len(chunk_scores) == 3 and all(60 < q <= 100 for q in chunk_scores)
    assert rend.result["quality_parts"] == 5 and rend.quality_metric == "vmaf"
    assert rend.quality_worst is not None and rend.quality_score is not None
    assert min(chunk_scores) <= rend.quality_score <= max(chunk_scores)
    assert rend.quality_worst <= min(chunk_scores) and rend.quality_flagged is False
    assert job.rendition("audio").quality_score is None  # sound has no VMAF

    master = http.get(view["urls"]["master"], timeout=10).text
    media = [line for line in master.splitlines() if line.startswith("#EXT-X-MEDIA:")]
    assert len(media) == 1 and 'TYPE=AUDIO,GROUP-ID="audio"' in media[0], master
    (variant,) = [line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF:")]
    assert 'AUDIO="audio"' in variant and 'CODECS="avc1.' in variant and ',mp4a.40.2"' in variant
    audio = job.rendition("audio")
    assert audio.state is RenditionState.SUCCEEDED and audio.result is not None
    peak = int(variant.split("BANDWIDTH=")[1].split(",")[0])
    assert peak == rend.result["peak_bitrate"] + audio.result["peak_bitrate"]
    # Decode the sound the player gets, through the master: every sample, once.
    pcm = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", view["urls"]["master"], "-map", "0:a:0", "-f", "s16le",
         "-ac", "1", "-ar", "48000", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    samples = len(pcm) // 2
    # 20 s, plus the encoder's 1024 priming samples and the last frame's padding (< 1024),
    # as one continuous encode gives; audio encoded per chunk would add a priming frame at
    # each of the two joins and fail this.
    assert 0 <= samples - 20 * 48000 < 2048, samples

    # Trick play over the chunks' segments: one byte range, the keyframe, of each of them.
    trick = http.get(view["renditions"][0]["urls"]["iframes"], timeout=10).text
    assert [line for line in trick.splitlines() if line.endswith(".m4s")] == [
        name for name in playlist.splitlines() if name.endswith(".m4s")
    ]
    assert trick.count("#EXT-X-BYTERANGE:") == 5 and "chunk-0/attempt-1/init.mp4" in trick

    # DASH over the same files: the chunks' segments, one SegmentURL each, in order, timed
    # by the join's own figures (five segments of 4 s at 12800 ticks a second).
    from tests.mpd_schema import schema_problems

    mpd = http.get(view["urls"]["dash"], timeout=10).text
    assert schema_problems(mpd) == []
    assert 'profiles="urn:mpeg:dash:profile:isoff-main:2011"' in mpd
    listed = [f"360p/{name}" for name in playlist.splitlines() if name.endswith(".m4s")]
    assert re.findall(r'<SegmentURL media="([^"]+)"', mpd)[:5] == listed
    assert '<Initialization sourceURL="360p/chunk-0/attempt-1/init.mp4"' in mpd
    assert re.findall(r'<S (?:t="0" )?d="(\d+)"', mpd)[:5] == ["51200"] * 5


@pytest.mark.slow
def test_av1_is_capped_and_chunked_like_h264(pipeline: Pipeline, tmp_path: Path) -> None:
    """SVT-AV1 keys where it is told and caps its constant quality: a grainy 12 s source
    planned in chunks of 8 and 4 s gives its AV1 rendition two chunks, joined into every
    frame once at 25 fps with a keyframe every 2 s on the H.264 rendition's grid, and a bit
    rate within the cap that grain would otherwise blow past."""
    from tests.clips import make_clip
    from vtp.webhook import SourceObject

    bucket = quiet_bucket(pipeline)
    chunked = chunked_pipeline(pipeline)
    clip = make_clip(tmp_path / "grain.mp4", size="640x360", seconds=12, rate=25,
                     extra=["-vf", "noise=alls=40:allf=t"])  # fmt: skip
    key = f"chunked/av1-{time.time_ns()}.mp4"
    pipeline.storage.client.fput_object(bucket, key, str(clip))
    options = JobOptions(renditions=["360p"], codecs=["h264", "av1"])
    job = chunked.submit(SourceObject(bucket=bucket, key=key), options).job
    for name in ("360p", "360p-av1"):
        spans = [(t.chunk, t.start_s, t.end_s) for t in job.rendition(name).tasks]
        assert spans == [(0, 0, 8), (1, 8, 12)], name
    job = _ended(pipeline, job, timeout=240)
    assert job.state.value == "succeeded", job.error
    view = pipeline.describe_job(job, live=False)
    grids = []
    for name in ("360p", "360p-av1"):
        (shown,) = [r for r in view["renditions"] if r["name"] == name]
        frames = _frames(shown["urls"]["playlist"])
        assert len(frames) == 300, name
        assert {round(b[0] - a[0], 4) for a, b in itertools.pairwise(frames)} == {0.04}, name
        grids.append([round(t - frames[0][0], 3) for t, key in frames if key])
    assert grids[0] == grids[1] == [2.0 * i for i in range(6)]
    av1 = job.rendition("360p-av1")
    assert av1.spec.crf is not None and av1.avg_bitrate is not None
    assert av1.avg_bitrate <= av1.spec.max_bitrate * 1.05, (av1.avg_bitrate, av1.spec.max_bitrate)


@pytest.mark.slow
def test_a_phone_video_at_a_varying_rate_is_chunked_on_the_output_grid(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """20 s of a phone's low-light video (20-30 fps frame by frame, 26 on average) in three
    chunks: encoded at 30 fps, each chunk exactly its 240 (240, 120) grid frames, joined with
    no gap or doubled frame, every flash on its second and every beep within 20 ms of it,
    across both joins. (With `-r` and the source's average rate, a chunk held a frame more
    than its range, and its retries failed the same way.)"""
    from tests import footage
    from vtp.webhook import SourceObject

    bucket = quiet_bucket(pipeline)
    chunked = chunked_pipeline(pipeline)
    clip = footage.flash_beep(tmp_path / "phone.mov", seconds=20, rate_pattern=footage.VFR_PHONE)
    key = f"chunked/{time.time_ns()}-phone.mov"
    pipeline.storage.client.fput_object(bucket, key, str(clip))
    job = chunked.submit(SourceObject(bucket=bucket, key=key), JobOptions(renditions=["360p"])).job
    assert job.source_info is not None and job.source_info.variable_frame_rate
    assert job.rendition("180p").spec.fps == 30.0
    assert [(t.start_s, t.end_s) for t in job.rendition("180p").tasks][:2] == [(0, 8), (8, 16)]
    job = _ended(pipeline, job)
    assert job.state.value == "succeeded", job.error
    assert [t.attempts for t in job.rendition("180p").tasks] == [1, 1, 1]
    view = pipeline.describe_job(job, live=False)
    urls = {r["name"]: r["urls"]["playlist"] for r in view["renditions"]}
    times = footage.frame_times(urls["180p"])
    assert len(times) == 600 and times[0] == 0.0
    assert {round(b - a, 4) for a, b in itertools.pairwise(times)} == {round(1 / 30, 4)}
    flashes = footage.flash_times(urls["180p"])
    assert [round(f, 3) for f in flashes] == [float(s) for s in range(1, 20)], flashes
    offsets = footage.sync_offsets(urls["180p"], urls["audio"])
    assert len(offsets) == 19 and max(map(abs, offsets)) <= 0.020, offsets


@pytest.mark.slow
def test_a_chunk_that_died_is_encoded_again_alone(pipeline: Pipeline, tmp_path: Path) -> None:
    """Chunk 1's worker dies mid-encode (its attempt written off as silent); its retry is the
    only re-encode: chunks 0 and 2 keep their first and only attempt, a redelivered call
    for chunk 0 is skipped as a duplicate, the zombie's late report is refused, and the job
    finishes joined from three chunks."""
    job = _silent_job_in_chunks(pipeline, tmp_path / "silent.mp4")

    def run(chunk: int, call: str) -> dict[str, object]:
        task = TranscodeTask(job_id=job.id, rendition="360p", chunk=chunk)
        return pipeline.run_rendition(task, call)

    assert run(0, "c0")["state"] == "succeeded"
    pipeline.store.begin_attempt(job.id, "360p", "c1-dies", chunk=1)  # ...and never reports
    time.sleep(0.2)
    (reaped,) = pipeline.store.reap_stale(0.1)
    assert (reaped.chunk, reaped.state) == (1, TaskState.RETRYING)
    # Held again at once: a retry past its back-off waits for a slot, and the stack's split
    # and sweeper fill slots after every call (they once sent it to the stack's transcode,
    # whose attempt was still running when this test looked).
    pipeline.store.record_dispatch(job.id, "360p", HELD, chunk=1)
    assert "skipped" in run(0, "c0")  # the queue delivered chunk 0's call again
    assert run(2, "c2")["state"] == "succeeded"
    assert run(1, "c1-again")["state"] == "succeeded"
    with pytest.raises(Conflict):
        pipeline.store.succeed_task(job.id, "360p", {}, call_id="c1-dies", attempt=1, chunk=1)
    done = pipeline.store.get(job.id)
    assert done.state.value == "succeeded", done.error
    assert [(t.chunk, t.attempts) for t in done.rendition("360p").tasks] == [(0, 1), (1, 2), (2, 1)]
    assert done.rendition("360p").result is not None
    assert done.rendition("360p").result["segments"] == 5


@pytest.mark.slow
def test_a_straggling_chunk_is_raced_by_a_backup_and_counted_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Chunk 1's encode stalls (its ffmpeg stopped, as on a starved node) while chunk 0 took
    a couple of seconds: the sweeper's round sends it a backup call, which the stack's
    transcode encodes into a folder of its own and records first. The stalled encode, let
    go, finds itself superseded and uploads nothing; the chunk succeeded once, from the
    backup, and the joined stream has every frame once."""
    import os
    import signal
    import threading

    settings = pipeline.settings.model_copy(
        update={"straggler_factor": 2.0, "straggler_min_seconds": 0.0}
    )
    racing = Pipeline(settings, pipeline.store, pipeline.storage, pipeline.bus, pipeline.invoker)
    job = _silent_job_in_chunks(pipeline, tmp_path / "slow.mp4")

    def run(chunk: int, call: str) -> dict[str, object]:
        return racing.run_rendition(TranscodeTask(job_id=job.id, rendition="360p", chunk=chunk),
                                    call)  # fmt: skip

    assert run(0, "c0")["state"] == "succeeded"
    first: dict[str, object] = {}
    slow = threading.Thread(target=lambda: first.update(run(1, "c1-slow")), daemon=True)
    slow.start()
    deadline = time.monotonic() + 30
    pids: list[int] = []
    while not pids:
        assert time.monotonic() < deadline, "chunk 1's ffmpeg never started"
        found = subprocess.run(["pgrep", "-P", str(os.getpid()), "-x", "ffmpeg"],
                               capture_output=True, text=True).stdout  # fmt: skip
        pids = [int(p) for p in found.split()]
        time.sleep(0.05)
    os.kill(pids[0], signal.SIGSTOP)
    try:
        while not (swept := racing.sweep())["backups"]:
            assert time.monotonic() < deadline, "chunk 1 never straggled"
            time.sleep(0.5)
        assert swept["backups"] == 1
        while (task := pipeline.store.get(job.id).rendition("360p").task(1)).state is (
            TaskState.RUNNING
        ):
            assert time.monotonic() < deadline + 60, task
            time.sleep(0.2)
    finally:
        os.kill(pids[0], signal.SIGCONT)
    slow.join(60)
    assert "superseded" in first, first
    assert task.state is TaskState.SUCCEEDED and task.backups == 1 and task.attempts == 1
    assert str((task.result or {})["output_prefix"]).endswith("/chunk-1/attempt-1-backup")
    assert racing.sweep()["backups"] == 0  # once per chunk
    assert run(2, "c2")["state"] == "succeeded"
    done = pipeline.store.get(job.id)
    assert done.state.value == "succeeded", done.error
    wins = [c for c in pipeline.store.history(job.id) if c.chunk == 1 and c.to_state == "succeeded"]
    assert len(wins) == 1 and wins[0].detail == "backup call won; c1-slow superseded"
    stalled = f"{job.id}/360p/chunk-1/attempt-1/"
    assert not list(pipeline.storage.client.list_objects(
        pipeline.settings.outputs_bucket, prefix=stalled, recursive=True))  # fmt: skip
    view = pipeline.describe_job(done, live=False)
    playlist = http.get(view["renditions"][0]["urls"]["playlist"], timeout=10).text
    assert "chunk-1/attempt-1-backup/seg_00003.m4s" in playlist.splitlines()
    frames = _frames(view["urls"]["master"])
    assert len(frames) == 500
    assert {round(b[0] - a[0], 4) for a, b in itertools.pairwise(frames)} == {0.04}


def _frames(url: str) -> list[tuple[float, bool]]:
    """(pts_time, key_frame) of every video frame of a stream, by ffprobe."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "frame=pts_time,key_frame", "-of", "csv=p=0", url],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    # ffprobe prints key_frame before pts_time, whatever order they are asked in.
    return [(float(t), k == "1") for k, t, *_ in (line.split(",") for line in probe.split())]


@pytest.mark.slow
def test_a_job_that_cannot_succeed_encodes_no_more_chunks(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """360p's first chunk is encoded; then the source is deleted and 720p's first chunk fails
    for good on it. The job cannot succeed, so it ends at once: the other four chunks are
    cancelled without a call reaching ffmpeg, and one that arrives is skipped."""
    job = _silent_job_in_chunks(
        pipeline, tmp_path / "gone.mp4", height=720, ladder=["360p", "720p"]
    )
    bucket, key = job.source.bucket, job.source.key

    def run(name: str, chunk: int) -> dict[str, object]:
        return pipeline.run_rendition(TranscodeTask(job_id=job.id, rendition=name, chunk=chunk),
                                      f"{name}-{chunk}")  # fmt: skip

    assert run("360p", 0)["state"] == "succeeded"
    pipeline.storage.client.remove_object(bucket, key)
    assert run("720p", 0)["state"] == "failed"
    done = pipeline.store.get(job.id)
    assert done.state.value == "failed"  # finished now, not after four more encodes
    assert done.error is not None and done.error.startswith("rendition 720p failed: the source")
    assert [(t.chunk, t.state, t.attempts) for t in done.rendition("360p").tasks] == [
        (0, TaskState.SUCCEEDED, 1), (1, TaskState.CANCELLED, 0), (2, TaskState.CANCELLED, 0),
    ]  # fmt: skip
    assert done.rendition("360p").state is RenditionState.CANCELLED
    assert "cannot succeed" in str(done.rendition("360p").task(2).error)
    assert "skipped" in run("360p", 1)


@pytest.mark.slow
def test_a_chunk_refused_the_same_way_twice_fails_at_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """A truncated upload whose index (at the front, as phones write it) promises 20 s: its
    second chunk decodes a few frames of the 200 it must hold. The first refusal may be a
    fault (a worker killed mid-write), so the chunk is tried again; the second, in the same
    words, is the source: the rendition fails there with the reason, its retry budget (3)
    not spent on a third encode."""
    from tests.clips import make_clip

    whole = make_clip(tmp_path / "whole.mp4", size="640x360", seconds=20, rate=25, audio=False,
                      extra=["-g", "50", "-movflags", "+faststart"])  # fmt: skip
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 4 // 10])
    bucket = quiet_bucket(pipeline)
    key = f"chunked/{time.time_ns()}-cut.mp4"
    pipeline.storage.client.fput_object(bucket, key, str(cut))
    src = SourceRef(bucket=bucket, key=key, etag=pipeline.storage.stat(bucket, key).etag)
    info = SourceInfo(duration=20.0, width=640, height=360, fps=25.0, has_audio=False,
                      video_codec="h264")  # fmt: skip
    chunks = plan_chunks(20.0, segment_s=4, chunk_s=8, threshold_s=0)
    job = record_job(
        pipeline, src, info, plan_ladder(info, pipeline.settings, ["360p"]), chunks=chunks
    )[0]

    def run(call: str) -> dict[str, object]:
        return pipeline.run_rendition(TranscodeTask(job_id=job.id, rendition="360p", chunk=1), call)

    first = run("c1-a")
    assert first["state"] == "retrying", first
    assert re.fullmatch(r"chunk 1: \d+ frames for 8s, not 200", str(first["error"])), first
    second = run("c1-b")
    assert second["state"] == "failed", second
    assert second["error"] == f"{first['error']} (the same on the previous attempt)"
    task = pipeline.store.get(job.id).rendition("360p").tasks[1]
    assert (task.state, task.attempts) == (TaskState.FAILED, 2)


def _silent_job_in_chunks(
    pipeline: Pipeline, clip: Path, *, height: int = 360, ladder: Sequence[str] = ("360p",)
) -> Job:
    """A job for a 20 s 25 fps source without sound in `quiet_bucket`, planned as chunks of
    8, 8 and 4 s, recorded but not dispatched: the test runs its tasks itself."""
    from tests.clips import make_clip

    width = height * 16 // 9
    make_clip(clip, size=f"{width}x{height}", seconds=20, rate=25, audio=False)
    bucket = quiet_bucket(pipeline)
    key = f"chunked/{time.time_ns()}-{clip.name}"
    pipeline.storage.client.fput_object(bucket, key, str(clip))
    info = SourceInfo(duration=20.0, width=width, height=height, fps=25.0, has_audio=False,
                      video_codec="h264")  # fmt: skip
    src = SourceRef(bucket=bucket, key=key, etag=pipeline.storage.stat(bucket, key).etag)
    chunks = plan_chunks(20.0, segment_s=4, chunk_s=8, threshold_s=0)
    plan = plan_ladder(info, pipeline.settings, list(ladder))
    return record_job(pipeline, src, info, plan, chunks=chunks)[0]


@pytest.mark.slow
def test_a_rendition_short_of_its_target_is_flagged(pipeline: Pipeline, tmp_path: Path) -> None:
    """A target no encode under the cap can reach (VMAF 99.9 for grain): the job still
    succeeds, and the rendition's measured score is flagged in its row and in status."""
    from tests.clips import make_clip
    from vtp.webhook import SourceObject

    bucket = quiet_bucket(pipeline)
    strict = Pipeline(
        pipeline.settings.model_copy(
            update={"input_buckets": [bucket], "quality_targets": {"360p": 99.9}}
        ),
        pipeline.store,
        pipeline.storage,
        pipeline.bus,
        pipeline.invoker,
    )
    clip = make_clip(tmp_path / "grain.mp4", size="640x360", seconds=2, rate=25,
                     extra=["-vf", "noise=alls=30:allf=t"])  # fmt: skip
    key = f"flagged/{time.time_ns()}.mp4"
    pipeline.storage.client.fput_object(bucket, key, str(clip))
    job = strict.submit(SourceObject(bucket=bucket, key=key), JobOptions(renditions=["360p"])).job
    assert job.rendition("360p").spec.quality_target == 99.9
    job = _ended(pipeline, job)
    assert job.state.value == "succeeded", job.error
    rend = job.rendition("360p")
    assert rend.quality_flagged is True and rend.quality_score is not None
    assert rend.quality_score < 99.9 - pipeline.settings.quality_margin
    shown = pipeline.describe_job(job, live=False)["renditions"][0]["quality"]
    assert shown["flagged"] is True and shown["target"] == 99.9
