"""An encode that measures itself (vtp.media.measure): which frames it scores, that its
scores are what a separate comparison of the same output and source gives, and that a
measurement that fails never costs the encode (vtp.pipeline.transcode)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.inprocess import quiet_bucket
from vtp.media import measure
from vtp.media.encode import HLS_PLAYLIST, RenditionResult, encode_rendition, reference_filters
from vtp.media.ladder import plan_ladder
from vtp.media.probe import probe_source
from vtp.media.quality import compare, upscaled
from vtp.models import SourceInfo
from vtp.pipeline import Pipeline
from vtp.pipeline.transcode import _measured
from vtp.settings import Settings


def test_a_short_clip_scores_a_handful_of_frames_a_long_one_a_bounded_share() -> None:
    """`quality_measure_share` of the frames, never fewer than three nor more than
    `quality_measure_max_frames`: a 2 s clip scores 3 of its 60 (each with the frame before
    it), 10 s every twentieth, 30 s every 37th."""
    s = Settings()
    assert s.quality_measure_share == 0.05
    logs = Path("/tmp")
    short = measure.plan(60, 30.0, logs=logs, settings=s, pixel_format="yuv420p",
                         display=(1920, 1080), size=(640, 360))  # fmt: skip
    assert short.step == 20 and short.display == (1920, 1080)
    assert short.frames_per_part == 4 * 30  # a segment's frames
    long = measure.plan(900, 30.0, logs=logs, settings=s, pixel_format="yuv420p",
                        display=(1920, 1080), size=(1920, 1080))  # fmt: skip
    assert long.step == 37 and long.display is None, "the largest rung is its own display"
    ten = measure.plan(300, 30.0, logs=logs, settings=s, pixel_format="yuv420p",
                       display=None, size=(1920, 1080))  # fmt: skip
    assert ten.step == 20
    tiny = measure.plan(4, 25.0, logs=logs, settings=s, pixel_format="yuv420p",
                        display=None, size=(640, 360))  # fmt: skip
    assert tiny.step == 2
    # Above 1080p, pictures are compared at 1080p: the model's screen, and bounded memory.
    uhd = measure.plan(900, 30.0, logs=logs, settings=s, pixel_format="yuv420p",
                       display=(3840, 2160), size=(3840, 2160))  # fmt: skip
    assert uhd.compared == (1920, 1080) and uhd.display is None
    args = uhd.output_args()
    assert "scale=1920:1080" in args[args.index("-filter_complex") + 1]
    # The loopback decoder's own options come before `-dec`: one thread.
    assert args[args.index("-dec") - 2 : args.index("-dec")] == ["-threads", "1"]
    hd = measure.plan(900, 30.0, logs=logs, settings=s, pixel_format="yuv420p",
                      display=(3840, 2160), size=(1280, 720))  # fmt: skip
    assert hd.compared is None and hd.display == (1920, 1080)
    # A bounded sample: 30 s at 30 fps scores 25 frames (every 37th from the first), not
    # 45; a minute, as many. The display comparison takes every second one of them; a 2 s
    # clip's three are all compared at the display size too.
    assert s.quality_measure_max_frames == 24
    assert (hd.step, hd.display_every, hd.display_step) == (37, 2, 74)
    minute = measure.plan(1800, 30.0, logs=logs, settings=s, pixel_format="yuv420p",
                          display=None, size=(1280, 720))  # fmt: skip
    assert minute.step == 75
    assert short.display_every == 1
    graph = hd.output_args()[hd.output_args().index("-filter_complex") + 1]
    assert r"[vtp_d2]select=expr=not(mod(n+1\,4))+not(mod(n\,4))," in graph, graph
    assert r"[vtp_d1]select=expr=not(mod(n\,2))[vtp_s1]" in graph, "SSIM: scored frames only"
    # The pairs: the scored frame and the one before it, nothing else.
    assert short.select == r"select=expr=not(mod(n+1\,20))+not(mod(n\,20))"
    with pytest.raises(ValueError, match="plain path"):
        measure.plan(60, 30.0, logs=Path("/tmp/a:b"), settings=s, pixel_format="yuv420p",
                     display=None, size=(640, 360)).output_args()  # fmt: skip


@pytest.fixture(scope="module")
def source(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, SourceInfo]:
    """4 s of moving detail with grain at 1280x720, 25 fps: a picture coding visibly
    loses, so the scores spread out."""
    path = tmp_path_factory.mktemp("measure") / "grain.mp4"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=s=1280x720:r=25:d=4", "-vf", "noise=alls=10:allf=t",
         "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", str(path)],
        check=True,
    )  # fmt: skip
    bucket = quiet_bucket(pipeline)
    key = f"measure/{time.time_ns()}/grain.mp4"
    pipeline.storage.client.fput_object(bucket, key, str(path))
    url = pipeline.storage.presigned_get(bucket, key, expires=600)
    return url, probe_source(url, pipeline.settings)


def test_an_encode_measures_what_a_separate_comparison_measures(
    pipeline: Pipeline, source: tuple[str, SourceInfo], tmp_path: Path
) -> None:
    """The 360p rung of a 720p source, encoded at a high factor, measures itself at its
    size and scaled up to 720p (on every second scored frame); the output and the source
    compared afterwards, on the same frames, by a second ffmpeg, score the same."""
    url, info = source
    s = pipeline.settings.model_copy(update={"quality_measure_share": 0.1})
    spec = next(r for r in plan_ladder(info, s) if r.name == "360p")
    spec = spec.model_copy(update={"crf": 34.0})
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    m = measure.plan(100, spec.fps, logs=logs, settings=s, pixel_format="yuv420p",
                     display=(1280, 720), size=(spec.width, spec.height))  # fmt: skip
    result = encode_rendition(url, info, spec, out, settings=s, measure=m)
    own, shown = m.read()
    assert m.step == 10 and own.frames == 10, own  # frames 0, 10, ... 90 of 100
    assert m.display_step == 20 and shown is not None and shown.frames == 5, shown
    assert own.parts == 1 and result.segments == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(result.files), "no log uploaded"
    assert 20 < shown.score < own.score < 99, (own, shown)
    assert own.ssim is not None and 0.5 < own.ssim < 1

    settings = s.model_copy(update={"quality_vmaf_subsample": m.step})
    inputs = ["-i", str(out / HLS_PLAYLIST), "-i", url]
    alone = compare(inputs, "[0:v]setpts=PTS-STARTPTS",
                    f"[1:V:0]{reference_filters(spec)},setpts=PTS-STARTPTS",
                    cwd=tmp_path, timeout=120, settings=settings)  # fmt: skip
    assert alone.numbers == [10 * i for i in range(10)]
    assert abs(sum(alone.vmaf) / len(alone.vmaf) - own.score) < 0.1, (alone.vmaf, own)
    # The source is the display size: scaled up, the rendition is compared with it as is.
    every_second = s.model_copy(update={"quality_vmaf_subsample": m.display_step})
    seen = compare(inputs, f"[0:v]{upscaled(1280, 720)},setpts=PTS-STARTPTS",
                   "[1:V:0]setpts=PTS-STARTPTS", cwd=tmp_path, timeout=120,
                   settings=every_second, log_name="up.json")  # fmt: skip
    assert seen.numbers == [20 * i for i in range(5)]
    assert abs(sum(seen.vmaf) / len(seen.vmaf) - shown.score) < 0.1, (seen.vmaf, shown)


def test_a_measurement_that_fails_never_costs_the_encode(
    pipeline: Pipeline, source: tuple[str, SourceInfo], tmp_path: Path
) -> None:
    """libvmaf cannot write its log (its folder is gone): the encode runs again without
    measuring, succeeds, and its record says why it has no score."""
    url, info = source
    s = pipeline.settings
    spec = next(r for r in plan_ladder(info, s) if r.name == "360p")
    out = tmp_path / "out"
    size = (spec.width, spec.height)
    m = measure.plan(100, spec.fps, logs=tmp_path / "gone", settings=s,
                     pixel_format="yuv420p", display=None, size=size)  # fmt: skip
    runs: list[bool] = []

    def encode(with_m: measure.Measurement | None) -> RenditionResult:
        runs.append(with_m is not None)
        return encode_rendition(url, info, spec, out, settings=s, measure=with_m)

    result, record = _measured(encode, m, threading.Event(), spec, s)
    assert isinstance(result, RenditionResult) and result.segments == 1
    assert record["quality_metric"] == "vmaf" and "quality_score" not in record
    assert record["quality_error"], record
    assert runs == [True, False], runs  # the run that measured failed; the next did not
    # A scratch folder no filter option can name (TMPDIR with a colon): measured never,
    # encoded all the same.
    odd = measure.plan(100, spec.fps, logs=tmp_path / "a:b", settings=s,
                       pixel_format="yuv420p", display=None, size=size)  # fmt: skip
    runs.clear()
    result, record = _measured(encode, odd, threading.Event(), spec, s)
    assert runs == [True, False] and "plain path" in record["quality_error"], record
    assert (out / HLS_PLAYLIST).is_file()


@pytest.mark.slow
def test_encodes_with_their_sound_measure_themselves_on_one_busy_core(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """A rung whose segments carry the sound, measuring itself, three at a time on one
    core: with the sound fed by a filter graph of its own, ffmpeg's scheduler held the
    picture back for it while the measurement waited for the encoder, and about one such
    run in five never ended. Every run must end, measured, well within its stall limit."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.clips import make_clip

    s = pipeline.settings.model_copy(update={"ffmpeg_stall_seconds": 8.0, "x264_preset": "medium"})
    clip = make_clip(tmp_path / "sound.mp4", size="640x360", seconds=2, rate=25)
    bucket = quiet_bucket(pipeline)
    key = f"measure/{time.time_ns()}/sound.mp4"
    pipeline.storage.client.fput_object(bucket, key, str(clip))
    url = pipeline.storage.presigned_get(bucket, key, expires=600)
    info = probe_source(url, s)
    assert info.has_audio
    spec = next(r for r in plan_ladder(info, s) if r.name == "360p")
    spec = spec.model_copy(update={"audio_in_segments": True})

    def run(i: int) -> float:
        logs = tmp_path / f"logs-{i}"
        logs.mkdir()
        m = measure.plan(50, spec.fps, logs=logs, settings=s, pixel_format="yuv420p",
                         display=(1280, 720), size=(spec.width, spec.height))  # fmt: skip
        encode_rendition(url, info, spec, tmp_path / f"out-{i}", settings=s, measure=m,
                         formats=("hls", "mp4") if i % 2 else ("hls",))  # fmt: skip
        return m.read()[0].score

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # ffmpeg inherits it
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            scores = list(pool.map(run, range(9)))
    finally:
        os.sched_setaffinity(0, cpus)
    assert all(60 < score <= 100 for score in scores), scores
