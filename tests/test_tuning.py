"""Per-title rate control and quality measurement (vtp.media: tuning, quality): the search on
its own, then real samples of lavfi clips served by the stack's S3 server, their choice
checked against a real encode measured with ffmpeg."""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

import pytest

from tests.inprocess import quiet_bucket
from vtp.media import measure
from vtp.media.encode import encode_rendition
from vtp.media.ladder import plan_ladder
from vtp.media.probe import probe_source
from vtp.media.quality import quality_record
from vtp.media.tuning import bracketed, final_crf, knee_aim, next_crf, sample_positions, tune
from vtp.models import RenditionSpec
from vtp.pipeline import Pipeline
from vtp.settings import Settings


# --- the search, pure ----------------------------------------------------------------------
def test_samples_fit_the_budget_and_the_keyframe_grid() -> None:
    s = Settings()
    assert s.quality_sample_share == 0.02
    assert sample_positions(90.0, s) == [], "1.8 s of budget: not even one 2 s sample"
    assert len(sample_positions(100.0, s)) == 1
    ten_minutes = sample_positions(600.0, s)
    assert len(ten_minutes) == 3
    assert all(start % s.gop_seconds == 0 and seconds == 2.0 for start, seconds in ten_minutes)
    assert ten_minutes[0][0] < 200 < ten_minutes[1][0] < 400 < ten_minutes[2][0]
    assert sum(sec for _, sec in ten_minutes) <= 0.02 * 600
    # Never past the end, even for a source barely longer than one sample.
    assert sample_positions(2.5, Settings(quality_sample_share=1.0)) == [(0.0, 2.0)]


def test_next_probe_brackets_the_target_then_stops() -> None:
    target = 93.0  # VMAF
    # Both first probes pass: go up, at most six factors at a time.
    up = next_crf([(19, 98.0, 900), (27, 95.0, 400)], target, 16, 36)
    assert up is not None and 27 < up <= 33
    # Bracketed between a pass and a fail: in between.
    mid = next_crf([(19, 98.0, 900), (27, 95.0, 400), (33, 90.0, 250)], target, 16, 36)
    assert mid is not None and 27.5 <= mid <= 32.5
    # Bracketed within one factor: done.
    assert next_crf([(29, 93.2, 330), (30, 92.8, 300)], target, 16, 36) is None
    # Neither passes and quality does not rise with bits (the VBV cap holds them): done.
    assert next_crf([(19, 70.0, 828), (27, 70.05, 828)], target, 16, 36) is None
    # Neither passes, and 3.5x the bits buy 3 points (grain): not worth probing further.
    assert next_crf([(19, 70.0, 393), (27, 67.0, 111)], target, 16, 36) is None
    # Neither passes but more bits help: go down, along the line, at most to crf_min.
    assert next_crf([(19, 88.0, 900), (27, 68.0, 400)], target, 16, 36) == 17.0
    assert next_crf([(19, 70.3, 900), (27, 70.0, 400)], target, 16, 36) is None  # 0.26 a 2x
    assert next_crf([(19, 83.0, 900), (27, 68.0, 400)], target, 16, 36) == 16.0
    # At the limits: nothing further.
    assert next_crf([(30, 95.0, 300), (36, 94.0, 200)], target, 16, 36) is None


def test_final_choice_is_interpolated_or_a_measured_probe() -> None:
    target = 93.0
    chosen = final_crf([(19, 98.0, 900), (27, 95.0, 400), (33, 90.0, 250)], target)
    assert 27 < chosen < 33
    assert abs((95.0 + (chosen - 27) * (90.0 - 95.0) / 6) - target) < 0.1
    assert final_crf([(19, 98.0, 900), (27, 95.0, 400)], target) == 27, "highest passing"
    # Nothing passes: as many bits as still buy quality, and no more.
    assert final_crf([(19, 70.0, 828), (27, 70.05, 828)], target) == 27  # the cap holds them
    assert final_crf([(19, 70.0, 393), (27, 67.0, 111)], target) == 27  # grain: not worth it
    assert final_crf([(16, 83.0, 900), (19, 80.0, 700), (27, 68.0, 400)], target) == 16


def test_h264_stops_at_the_knee_even_where_the_target_is_reachable() -> None:
    """The natural clip's 1080p first probes (bench/quality.py): 6.2x the bits buy 4.2
    points, 1.6 a doubling. The target (95) is reachable, but the aim is the knee below
    it, where the last doubling still bought 2 points; steeper curves keep their target."""
    natural = [(19, 95.41, 7_230_000), (27, 91.18, 1_161_000)]
    aim, ceiling = knee_aim(natural, 95.0)
    assert 92.0 < aim < 94.0 and ceiling is None
    chosen = final_crf([*natural, (23.5, 93.1, 2_500_000)], aim)
    assert 23 < chosen < 27, "between the probes that bracket the knee"
    # The same clip's 720p and 360p, and a still picture's 1080p: the target holds.
    assert knee_aim([(19, 95.35, 2_892_000), (27, 89.56, 669_000)], 94.0) == (94.0, None)
    assert knee_aim([(19, 94.41, 888_000), (27, 88.70, 246_000)], 90.0) == (90.0, None)
    assert knee_aim([(19, 95.88, 2_891_000), (27, 92.39, 1_826_000)], 95.0) == (95.0, None)
    # Both probes pass: the target holds, whatever the curve.
    assert knee_aim([(19, 97.0, 900_000), (27, 96.9, 300_000)], 95.0) == (95.0, None)
    # Grain: the knee lies below the cheapest probe, which is where the search stops.
    assert knee_aim([(19, 70.0, 393), (27, 67.0, 111)], 93.0) == (67.0, 27)
    # The cap holds the bits: no richer factor is worth anything.
    assert knee_aim([(19, 70.0, 828), (27, 70.05, 828)], 93.0) == (70.05, 27)


def test_another_codec_reaches_for_h264s_picture_without_deciding_again() -> None:
    """HEVC's probes of the natural 1080p rung: 1.8 points a doubling. H.264 stopped on that
    rule; another codec aims at what H.264 shows and keeps going down for it."""
    hevc = [(19, 94.96, 5_092_000), (27, 89.99, 754_000)]
    assert next_crf(hevc, 95.5, 16, 36) is None, "H.264's own rule: not worth it"
    more = next_crf(hevc, 95.5, 16, 36, worth=False)
    assert more is not None and 16 <= more < 19
    assert final_crf(hevc, 95.5) == 27 and final_crf(hevc, 95.5, worth=False) == 19
    # Every probe passes the aim: not bracketed, the search goes on further out.
    av1 = [(19, 96.6, 207_000), (27, 96.0, 158_000), (33, 92.6, 111_000)]
    assert not bracketed(av1, 90.0) and bracketed(av1, 93.0)
    out = next_crf(av1, 90.0, 16, 36)
    assert out is not None and 33 < out <= 36


def test_quality_record_flags_a_shortfall_beyond_the_margin() -> None:
    from vtp.media.quality import QualityScore

    good = QualityScore(score=94.0, worst=91.0, frames=50, parts=1, ssim=0.985)
    bad = QualityScore(score=88.0, worst=80.0, frames=50, parts=1)
    kept = quality_record(good, None, target=95.0, margin=3.0)
    assert kept["quality_flagged"] is False and kept["quality_metric"] == "vmaf"
    assert kept["quality_ssim"] == 0.985
    record = quality_record(bad, None, target=95.0, margin=3.0)
    assert record["quality_flagged"] is True and record["quality_display"] == 88.0


def test_vmaf_targets_are_per_rung_and_validated() -> None:
    s = Settings()
    assert s.target_for("1080p") == 95.0 and s.target_for("360p") < s.target_for("720p")
    assert s.target_for("999p") == s.quality_target
    with pytest.raises(ValueError, match="not a VMAF"):
        Settings(quality_targets={"360p": 0.985})


def test_a_spec_planned_before_rate_control_by_quality_keeps_its_bitrate_target() -> None:
    """Jobs recorded before 0008 have specs without a factor: they are encoded as planned
    then, at their bit-rate target, with the preset of the time."""
    from vtp.media.encode import encode_args, rate_control_args
    from vtp.models import RenditionSpec, SourceInfo

    old = RenditionSpec.model_validate_json(
        '{"name": "360p", "function": "transcode-360p", "width": 640, "height": 360,'
        ' "fps": 30, "video_bitrate": 900000, "max_bitrate": 1350000, "buffer_size": 1800000}'
    )
    assert old.crf is None and old.preset is None
    assert rate_control_args(old) == ["-b:v", "900000", "-maxrate", "1350000",
                                      "-bufsize", "1800000"]  # fmt: skip
    info = SourceInfo(duration=2, width=640, height=360, fps=30, has_audio=False,
                      video_codec="h264")  # fmt: skip
    args = encode_args(info, old, Settings())
    assert args[args.index("-preset") + 1] == "veryfast"
    new = old.model_copy(update={"crf": 27.5, "preset": "medium"})
    assert rate_control_args(new)[:2] == ["-crf", "27.5"] and "-b:v" not in rate_control_args(new)


def test_the_sound_of_a_chunked_job_has_no_picture_figures() -> None:
    from vtp.media.ladder import audio_renditions
    from vtp.models import RenditionEstimate, SourceInfo

    info = SourceInfo(duration=600, width=1280, height=720, fps=25, has_audio=True,
                      video_codec="h264")  # fmt: skip
    estimate = RenditionEstimate(metric="vmaf", quality=95.0, bitrate=1, size_bytes=1,
                                 encode_cpu_seconds=1)  # fmt: skip
    tuned = [s.model_copy(update={"estimate": estimate}) for s in plan_ladder(info, Settings())]
    audio = audio_renditions(tuned, info, max_tracks=8)[-1]
    assert audio.audio_only and audio.estimate is None and audio.crf is None
    assert audio.quality_target is None


# --- on real clips -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def settings(pipeline: Pipeline) -> Settings:
    """Sampling half of an 8 s clip: two samples of 2 s, encoded at the test stacks' preset
    (tests/stackenv.py): the search is the same whatever the preset's speed."""
    return pipeline.settings.model_copy(
        update={"quality_sample_share": 0.5, "ffmpeg_threads": 1, "x264_preset": "veryfast"}
    )


@pytest.fixture(scope="module")
def one_sample(settings: Settings) -> Settings:
    """One sample of 2 s from an 8 s clip: what a test of the choice between rungs needs,
    at half the encodes."""
    return settings.model_copy(update={"quality_sample_share": 0.25})


def _upload(pipeline: Pipeline, tmp: Path, name: str, source: str, vf: str | None = None) -> str:
    path = tmp / f"{name}.mp4"
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source]
    args += ["-vf", vf] if vf else []
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", str(path)]
    subprocess.run(args, check=True)
    bucket = quiet_bucket(pipeline)
    key = f"tuning/{time.time_ns()}/{name}.mp4"
    pipeline.storage.client.fput_object(bucket, key, str(path))
    return pipeline.storage.presigned_get(bucket, key, expires=600)


@pytest.mark.slow
def test_harder_content_gets_more_bits_and_the_prediction_holds(
    pipeline: Pipeline, settings: Settings, tmp_path: Path
) -> None:
    """Flat shapes get a higher factor than the same shapes under fine grain; the chosen
    factor, encoded for real over the whole clip, measures near the prediction."""
    easy_url = _upload(pipeline, tmp_path, "easy", "testsrc2=s=640x360:r=25:d=8")
    grain = "noise=alls=8:allf=t"
    hard_url = _upload(pipeline, tmp_path, "grain", "testsrc2=s=640x360:r=25:d=8", grain)
    plans = {}
    for name, url in (("easy", easy_url), ("grain", hard_url)):
        info = probe_source(url, settings)
        plan = tune(url, info, plan_ladder(info, settings, ["360p"]), settings)
        assert plan.note is None, plan.note
        assert len(plan.samples) == 2 and plan.sampling_cpu_seconds > 0
        plans[name] = (info, url, plan.specs[0])
    easy, grain_spec = plans["easy"][2], plans["grain"][2]
    assert easy.crf is not None and grain_spec.crf is not None
    assert settings.crf_min <= grain_spec.crf < easy.crf <= settings.crf_max
    assert easy.estimate and grain_spec.estimate
    assert easy.estimate.bitrate < grain_spec.estimate.bitrate
    assert 2 <= len(easy.estimate.probes) <= 4

    info, url, spec = plans["easy"]
    out, logs = tmp_path / "easy-out", tmp_path / "easy-logs"
    logs.mkdir()
    quarter = {"quality_measure_share": 0.25, "quality_measure_max_frames": 50}
    m = measure.plan(200, spec.fps, logs=logs, settings=settings.model_copy(update=quarter),
                     pixel_format="yuv420p", display=None,
                     size=(spec.width, spec.height))  # fmt: skip
    result = encode_rendition(url, info, spec, out, settings=settings, measure=m)
    own, shown = m.read()
    # A quarter of the frames, every fourth, over both 100-frame segments.
    assert shown is None and m.step == 4 and own.frames == 50 and own.parts == 2
    assert own.metric == "vmaf" and own.ssim is not None and 0.9 < own.ssim <= 1
    # The samples hold exactly their frames (no held end frames, which once made every
    # probe 1.5x the bits and a point over what the rendition shows).
    assert abs(own.score - easy.estimate.quality) < 1.5, (own, easy.estimate)
    assert 0.8 < result.avg_bitrate / easy.estimate.bitrate < 1.25, (result, easy.estimate)


def _encoded_vmaf(url: str, spec: RenditionSpec, out: Path, settings: Settings) -> float:
    """The rendition `spec` encoded for real from `url`, measuring itself as it goes."""
    info = probe_source(url, settings)
    logs = out.with_name(out.name + "-logs")
    logs.mkdir(parents=True)
    # A quarter of its frames: the codecs are compared within 1.5 points.
    dense = settings.model_copy(
        update={"quality_measure_share": 0.25, "quality_measure_max_frames": 50}
    )
    m = measure.plan(200, spec.fps, logs=logs, settings=dense, pixel_format="yuv420p",
                     display=None, size=(spec.width, spec.height))  # fmt: skip
    encode_rendition(url, info, spec, out, settings=settings, measure=m)
    own, _ = m.read()
    return own.score


@pytest.mark.slow
def test_one_rung_shows_one_picture_in_every_codec(
    pipeline: Pipeline, one_sample: Settings, tmp_path: Path
) -> None:
    """Grain at 360p, aimed at VMAF 97: a doubling of x264's bits buys fewer than two points
    before it, so H.264 stops at the knee below the target and the plan says why. HEVC and
    AV1 aim at what H.264's rung shows, without a knee of their own (SVT-AV1, whose every
    first probe passes, is probed further out rather than left above it): encoded for real,
    the three renditions of the rung measure within 1.5 VMAF of one another."""
    from vtp.media.ladder import codec_ladders

    targets = {**one_sample.quality_targets, "360p": 97.0}
    settings = one_sample.model_copy(update={"quality_targets": targets})
    url = _upload(pipeline, tmp_path, "grain", "testsrc2=s=640x360:r=25:d=8",
                  "noise=alls=8:allf=t")  # fmt: skip
    info = probe_source(url, settings)
    h264 = tune(url, info, plan_ladder(info, settings, ["360p"]), settings)
    (spec,) = h264.specs
    assert spec.estimate is not None and spec.crf is not None
    assert h264.note and "360p aims at VMAF" in h264.note, h264.note
    shown = spec.estimate.quality
    assert shown < 96.5, spec.estimate
    renditions = [spec]
    for codec in ("hevc", "av1"):
        (rung,) = codec_ladders(h264.specs, ["h264", codec])[1:]
        assert rung.quality_target == round(shown, 2)
        plan = tune(url, info, [rung], settings, prune=False)
        assert plan.note is None, "the knee is H.264's, decided once"
        (tuned,) = plan.specs
        assert tuned.estimate is not None
        assert abs(tuned.estimate.quality - shown) < 1.0, (codec, tuned.estimate, shown)
        renditions.append(tuned)
    scores = {
        r.codec: _encoded_vmaf(url, r, tmp_path / f"out-{r.codec}", settings) for r in renditions
    }
    assert max(scores.values()) - min(scores.values()) <= 1.5, scores


@pytest.mark.slow
def test_a_rung_with_nothing_more_to_show_is_dropped(
    pipeline: Pipeline, one_sample: Settings, tmp_path: Path
) -> None:
    """A 720p upload that is a 180p picture blown up: 360p scaled up shows the same, so the
    720p rung is dropped and the plan says why; asked for by name, it is kept."""
    url = _upload(
        pipeline,
        tmp_path,
        "soft",
        "testsrc2=s=320x180:r=25:d=8",
        "scale=1280:720:flags=bilinear",
    )
    settings = one_sample
    info = probe_source(url, settings)
    ladder = plan_ladder(info, settings)
    assert [s.name for s in ladder] == ["360p", "720p"]
    plan = tune(url, info, ladder, settings)
    assert len(plan.samples) == 1
    assert [s.name for s in plan.specs] == ["360p"]
    assert [p.name for p in plan.pruned] == ["720p"]
    assert "360p scaled up to 1280x720" in plan.pruned[0].reason
    kept = tune(url, info, ladder, settings, prune=False)
    assert [s.name for s in kept.specs] == ["360p", "720p"] and not kept.pruned


@pytest.mark.slow
def test_sharp_detail_keeps_every_rung(
    pipeline: Pipeline, one_sample: Settings, tmp_path: Path
) -> None:
    url = _upload(pipeline, tmp_path, "sharp", "testsrc2=s=1280x720:r=25:d=8")
    info = probe_source(url, one_sample)
    plan = tune(url, info, plan_ladder(info, one_sample), one_sample)
    assert len(plan.samples) == 1
    assert [s.name for s in plan.specs] == ["360p", "720p"] and not plan.pruned


def test_a_source_that_cannot_be_sampled_keeps_the_default_factor(
    pipeline: Pipeline, settings: Settings, tmp_path: Path
) -> None:
    """Too short, or gone by the time the samples are read: the job is planned all the
    same, at the default factor, and the plan says why."""
    url = _upload(pipeline, tmp_path, "short", "testsrc2=s=640x360:r=25:d=8")
    info = probe_source(url, settings)
    ladder = plan_ladder(info, settings, ["360p"])
    short = tune(url, info, ladder, settings.model_copy(update={"quality_sample_share": 0.1}))
    assert short.note and "too short" in short.note
    assert short.specs[0].crf == settings.default_crf and short.specs[0].estimate is None
    broken = tune(url.replace("/tuning/", "/gone/"), info, ladder, settings)
    assert broken.note and broken.note.startswith("sampling failed")
    assert broken.specs[0].crf == settings.default_crf
    off = tune(url, info, ladder, settings.model_copy(update={"quality_sampling": False}))
    assert off.note and "off" in off.note


@pytest.mark.slow
def test_each_codec_gets_its_own_factor_from_the_samples(
    pipeline: Pipeline, one_sample: Settings, tmp_path: Path
) -> None:
    """HEVC and AV1 rungs are searched with their own encoders on the same samples: each
    lands on a factor of its own scale whose prediction meets the target."""
    from vtp.media.codecs import crf_for
    from vtp.media.ladder import codec_ladders

    settings = one_sample
    url = _upload(pipeline, tmp_path, "codecs", "testsrc2=s=640x360:r=25:d=8")
    info = probe_source(url, settings)
    h264 = tune(url, info, plan_ladder(info, settings, ["360p"]), settings).specs
    target = settings.target_for("360p")
    for codec, scale in (("hevc", 51), ("av1", 63)):
        (rung,) = codec_ladders(h264, ["h264", codec])[1:]
        (spec,) = tune(url, info, [rung], settings, prune=False).specs
        assert spec.codec == codec and spec.estimate is not None
        assert spec.crf is not None and 0 < spec.crf <= scale
        # On x264's scale in the probes (what the search runs on), the encoder's own here.
        assert spec.crf in {crf_for(codec, p[0]) for p in spec.estimate.probes} or any(
            crf_for(codec, lo) <= spec.crf <= crf_for(codec, hi)
            for lo, hi in itertools.pairwise(sorted(p[0] for p in spec.estimate.probes))
        )
        # The same target as H.264's: equal quality, each codec at its own factor.
        assert spec.estimate.quality >= target - 1.0, (codec, spec.estimate)


def test_each_codec_searches_its_own_useful_range_and_h264s_picture() -> None:
    """x264's factor range carried to each codec's scale spans what that codec needs at
    equal VMAF (docs/quality.md); a rung H.264 cannot bring to its target (grain) has the
    other codecs aim at what H.264 shows, so one rung shows one picture."""
    from vtp.media.codecs import crf_for
    from vtp.media.ladder import codec_ladders
    from vtp.models import RenditionEstimate, SourceInfo

    s = Settings()
    assert crf_for("av1", s.crf_min) <= 24 and crf_for("av1", s.crf_max) == 63
    assert crf_for("hevc", s.crf_min) <= 17 and crf_for("hevc", s.crf_max) <= 51
    steps = [crf_for("av1", c) for c in range(16, 37)]
    assert steps == sorted(steps), "the search interpolates: the mapping must be monotonic"

    info = SourceInfo(duration=600, width=1920, height=1080, fps=25, has_audio=False,
                      video_codec="h264")  # fmt: skip
    ladder = plan_ladder(info, s)
    grain = RenditionEstimate(metric="vmaf", quality=88.6, bitrate=3_700_000, size_bytes=1,
                              encode_cpu_seconds=1)  # fmt: skip
    easy = grain.model_copy(update={"quality": 97.0})
    tuned = [ladder[0].model_copy(update={"estimate": easy}),
             *(r.model_copy(update={"estimate": grain}) for r in ladder[1:])]  # fmt: skip
    others = {r.name: r for r in codec_ladders(tuned, ["h264", "av1"]) if r.codec == "av1"}
    assert others["1080p-av1"].quality_target == 88.6
    assert others["360p-av1"].quality_target == s.target_for("360p"), "never above the target"
