"""Ladder planning: pure decisions from a SourceInfo, no ffmpeg involved."""

from __future__ import annotations

import pytest

from vtp.errors import InvalidRequest
from vtp.media.ladder import KNOWN_RUNGS, h264_level, output_fps, plan_ladder, video_bitrate
from vtp.models import RenditionSpec, SourceInfo
from vtp.settings import Settings


def source(width: int, height: int, *, fps: float = 30.0, audio: bool = True) -> SourceInfo:
    return SourceInfo(
        duration=10.0,
        width=width,
        height=height,
        fps=fps,
        has_audio=audio,
        video_codec="h264",
        audio_codec="aac" if audio else None,
    )


@pytest.fixture
def settings() -> Settings:
    return Settings()


def sizes(specs: list[RenditionSpec]) -> list[tuple[str, int, int]]:
    return [(s.name, s.width, s.height) for s in specs]


def test_1080p_source_gets_the_default_ladder(settings):
    specs = plan_ladder(source(1920, 1080), settings)
    assert sizes(specs) == [
        ("360p", 640, 360),
        ("720p", 1280, 720),
        ("1080p", 1920, 1080),
    ]
    assert [s.function for s in specs] == [
        "transcode-360p",
        "transcode-720p",
        "transcode-1080p",
    ]
    rates = [s.video_bitrate for s in specs]
    assert rates == sorted(rates) and len(set(rates)) == 3
    # In the range of Apple's HLS authoring ladder for H.264 at 30 fps.
    assert 600_000 <= rates[0] <= 1_200_000
    assert 2_500_000 <= rates[1] <= 3_500_000
    assert 5_000_000 <= rates[2] <= 7_000_000
    for spec in specs:
        # Constant quality under the model's figure as VBV cap, two seconds of buffer.
        assert spec.crf == settings.default_crf and spec.preset == settings.x264_preset
        assert spec.max_bitrate == spec.video_bitrate
        assert spec.buffer_size == 2 * spec.max_bitrate
        assert spec.quality_target == settings.target_for(spec.name)
        assert spec.profile == "high"
        assert spec.fps == 30.0
        assert spec.audio_bitrate is not None
    assert [s.level for s in specs] == ["3.0", "3.1", "4.0"]


def test_540p_source_keeps_its_own_size_as_the_top_rung(settings):
    specs = plan_ladder(source(960, 540), settings)
    assert sizes(specs) == [("360p", 640, 360), ("540p", 960, 540)]
    # A custom rung is encoded by the function of the next default rung up.
    assert specs[1].function == "transcode-720p"


def test_portrait_source_is_named_by_its_short_side(settings):
    specs = plan_ladder(source(1080, 1920), settings)
    assert sizes(specs) == [
        ("360p", 360, 640),
        ("720p", 720, 1280),
        ("1080p", 1080, 1920),
    ]


def test_odd_dimensions_become_even_without_upscaling(settings):
    specs = plan_ladder(source(853, 479), settings)
    assert sizes(specs) == [("360p", 642, 360), ("478p", 852, 478)]
    for spec in specs:
        assert spec.width % 2 == 0 and spec.height % 2 == 0
        assert spec.width <= 853 and spec.height <= 479
    # One pixel above a rung is not worth a second rendition of the same size.
    assert sizes(plan_ladder(source(641, 361), settings)) == [("360p", 640, 360)]


def test_source_below_every_rung_gets_one_rendition_at_its_size(settings):
    specs = plan_ladder(source(320, 240), settings)
    assert sizes(specs) == [("240p", 320, 240)]
    assert specs[0].function == "transcode-360p"


def test_requested_subset(settings):
    assert sizes(plan_ladder(source(1920, 1080), settings, ["720p"])) == [("720p", 1280, 720)]
    specs = plan_ladder(source(1920, 1080), settings, ["1080p", "360p", "360p"])
    assert [s.name for s in specs] == ["360p", "1080p"]


def test_requested_rung_above_the_source_is_replaced_by_the_source_size(settings):
    specs = plan_ladder(source(1920, 1080), settings, ["360p", "1440p"])
    assert sizes(specs) == [("360p", 640, 360), ("1080p", 1920, 1080)]
    assert specs[1].function == "transcode-1080p"


def test_known_rungs_outside_the_defaults_use_a_deployed_function(settings):
    specs = plan_ladder(source(3840, 2160), settings, ["480p", "2160p"])
    assert [(s.name, s.function) for s in specs] == [
        ("480p", "transcode-720p"),
        ("2160p", "transcode-1080p"),
    ]
    assert specs[1].level == "5.1"


@pytest.mark.parametrize("requested", [["720p", "4k"], ["540p"], ["720"]])
def test_unknown_rendition_names_are_refused(settings, requested):
    with pytest.raises(InvalidRequest) as caught:
        plan_ladder(source(1920, 1080), settings, requested)
    for name in KNOWN_RUNGS:
        assert name in caught.value.reason
    assert caught.value.http_status == 400


def test_empty_request_is_refused(settings):
    with pytest.raises(InvalidRequest):
        plan_ladder(source(1920, 1080), settings, [])


def test_silent_source_has_no_audio_bitrate(settings):
    specs = plan_ladder(source(1280, 720, audio=False), settings)
    assert [s.audio_bitrate for s in specs] == [None, None]


def test_audio_bitrates_grow_with_the_rung(settings):
    specs = plan_ladder(source(1920, 1080), settings)
    assert [s.audio_bitrate for s in specs] == [96_000, 128_000, 160_000]


def test_frame_rates(settings):
    assert plan_ladder(source(1920, 1080, fps=120.0), settings)[0].fps == 60.0
    assert output_fps(100.0) == 50.0
    assert output_fps(29.6) == pytest.approx(30000 / 1001)  # phone VFR average snapped
    assert output_fps(23.976) == pytest.approx(24000 / 1001)
    assert output_fps(15.0) == 15.0
    fast = plan_ladder(source(1920, 1080, fps=60.0), settings)
    slow = plan_ladder(source(1920, 1080, fps=30.0), settings)
    for hi, lo in zip(fast, slow, strict=True):
        assert lo.video_bitrate < hi.video_bitrate < 2 * lo.video_bitrate
    assert fast[-1].level == "4.2"  # 1080p60 needs more macroblocks per second


def test_levels_fit_the_rendition():
    assert h264_level(640, 360, 30, 1_500_000, 2_000_000) == "3.0"
    assert h264_level(1280, 720, 30, 4_500_000, 6_000_000) == "3.1"
    assert h264_level(1280, 720, 60, 6_000_000, 8_000_000) == "3.2"
    assert h264_level(1920, 1080, 30, 9_000_000, 12_000_000) == "4.0"
    assert h264_level(3840, 2160, 60, 30_000_000, 40_000_000) == "5.2"


def test_bitrate_model_is_monotonic():
    assert video_bitrate(640, 360, 30) < video_bitrate(960, 540, 30) < video_bitrate(1280, 720, 30)
    assert video_bitrate(16, 16, 1) == 100_000  # floor


def test_custom_default_renditions_change_functions():
    settings = Settings(default_renditions=["480p", "1080p"])
    specs = plan_ladder(source(1280, 720), settings)
    assert [(s.name, s.function) for s in specs] == [
        ("480p", "transcode-480p"),
        ("720p", "transcode-1080p"),
    ]


def test_plan_is_deterministic(settings):
    src = source(1366, 768, fps=29.97)
    assert plan_ladder(src, settings) == plan_ladder(src, settings)


def test_the_cap_never_exceeds_what_the_source_holds(settings):
    """A 400 kbit/s 720p upload: the rendition at its own size may spend the source's rate
    plus the margin, not the model's 3 Mbit/s; a smaller rung gets it scaled by pixels."""
    low = source(1280, 720).model_copy(update={"video_bit_rate": 400_000})
    specs = {s.name: s for s in plan_ladder(low, settings)}
    assert specs["720p"].max_bitrate == round(400_000 * settings.source_bitrate_margin, -3)
    assert specs["360p"].max_bitrate < specs["720p"].max_bitrate
    assert specs["360p"].max_bitrate >= 100_000  # the floor
    # A generous upload leaves the model's cap in place.
    rich = source(1280, 720).model_copy(update={"video_bit_rate": 50_000_000})
    assert plan_ladder(rich, settings)[-1].max_bitrate == video_bitrate(1280, 720, 30.0)
    # A custom target per rung.
    tuned = Settings(quality_targets={"360p": 97.0})
    assert [s.quality_target for s in plan_ladder(low, tuned)] == [97.0, tuned.quality_target]
    assert Settings().target_for("720p") == 94.0, "the defaults are per rung"


# --- sound and subtitle tracks ------------------------------------------------------------
def _tracked_source() -> SourceInfo:
    from vtp.models import AudioTrack, TextTrack

    return SourceInfo(
        duration=60, width=1280, height=720, fps=25, has_audio=True, video_codec="h264",
        audio_tracks=[
            AudioTrack(index=0, codec="aac", language="en"),
            AudioTrack(index=1, codec="ac3", language="en", title="Commentary", default=True),
            AudioTrack(index=2, codec="aac", language="en"),
        ],
        text_tracks=[
            TextTrack(index=0, codec="hdmv_pgs_subtitle", language="en", text=False),
            TextTrack(index=1, codec="subrip", language="fr", text=True),
        ],
    )  # fmt: skip


def test_every_sound_track_is_an_audio_rendition_named_for_a_menu(settings):
    from vtp.media.ladder import audio_renditions

    source = _tracked_source()
    specs = audio_renditions(plan_ladder(source, settings), source, max_tracks=8, loudness=-16)
    audio = [s for s in specs if s.audio_only]
    assert [(s.name, s.audio_track, s.label, s.default_track) for s in audio] == [
        ("audio", 0, "English", False),
        ("audio-2", 1, "Commentary", True),  # the source's default disposition
        ("audio-3", 2, "English 2", False),  # names are unique in a menu
    ]
    assert all(s.loudness == -16 and s.audio_bitrate for s in audio)
    assert all(s.audio_bitrate is None for s in specs if not s.audio_only)
    capped = audio_renditions(plan_ladder(source, settings), source, max_tracks=1)
    assert [s.name for s in capped if s.audio_only] == ["audio"]


def test_bitmap_subtitles_are_skipped_with_the_reason_and_text_ones_kept(settings):
    from vtp.media.ladder import text_renditions
    from vtp.options import CaptionFile

    source = _tracked_source()
    captions = [CaptionFile(key="talk.de.srt", language="de")]
    specs, skipped = text_renditions(plan_ladder(source, settings), source, captions,
                                     max_tracks=8)  # fmt: skip
    assert [(s.name, s.text_track, s.caption_key, s.language, s.label) for s in specs] == [
        ("text-1", 1, None, "fr", "French"),
        ("text-2", None, "talk.de.srt", "de", "German"),
    ]
    assert all(s.text_only and s.kind == "text" and s.function == "transcode-360p" for s in specs)
    assert skipped == [
        "subtitle stream 0 (hdmv_pgs_subtitle, en) is a bitmap format: only text subtitles "
        "become WebVTT"
    ]
    _, over = text_renditions(plan_ladder(source, settings), source, captions, max_tracks=1)
    assert over[-1] == "caption file talk.de.srt: more than the 1 subtitle tracks a job gets"
