"""The output timeline and colour plan (vtp.media.timeline, vtp.media.colour): pure
arithmetic and filter strings; tests/test_devices.py runs them on real footage."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from vtp.media import colour, timeline
from vtp.models import SourceInfo

NTSC = Fraction(30000, 1001)


def test_chunks_hold_exactly_the_grid_frames_of_their_range() -> None:
    """At 29.97 fps no frame falls on a 48 s boundary: frame 1438 is at 47.98 s, 1439 at
    48.01 s. Each belongs to the chunk its time rounds into, so consecutive chunks share
    no frame and miss none, whatever the rate."""
    assert timeline.grid_frame(48.0, NTSC) == 1439  # 1438.56 rounds up: 48.01 s
    assert timeline.grid_frame(96.0, NTSC) == 2877  # 2877.12 rounds down: 95.996 s
    bounds = [0.0, 48.0, 96.0, 130.0]
    counts = [timeline.chunk_frames(a, b, NTSC) for a, b in itertools.pairwise(bounds)]
    assert counts == [1439, 1438, 1019]
    assert sum(counts) == timeline.grid_frame(130.0, NTSC)


def test_a_chunk_decodes_from_a_second_before_its_start_on_the_files_clock() -> None:
    assert timeline.chunk_seek(48.0) == 47.0
    assert timeline.chunk_seek(0.0) == 0.0
    # A picture starting 40 ms into the file: the chunk's 48 s are the file's 48.04 s.
    assert timeline.chunk_seek(48.0, origin_s=0.04) == 47.04


def test_the_video_filter_moves_the_picture_to_0_and_picks_frames_on_the_grid() -> None:
    chain = timeline.video_timing_filter(NTSC, start_s=48.0, origin_s=10.04)
    assert chain == (
        "setpts=PTS-10.040000/TB,tpad=stop_mode=clone:stop_duration=0.5,"
        "fps=fps=30000/1001:start_time=48.014633333:round=near,setpts=PTS-STARTPTS"
    )
    assert timeline.video_timing_filter(Fraction(25)).startswith("tpad=")  # nothing to move
    assert timeline.audio_timing_filter(10.04) == (
        "asetpts=PTS-10.040000/TB,aresample=async=1:first_pts=0"
    )


def _source(**fields: object) -> SourceInfo:
    base: dict[str, object] = {
        "duration": 2.0, "width": 1920, "height": 1080, "fps": 25.0, "has_audio": False,
        "video_codec": "hevc",
    }  # fmt: skip
    return SourceInfo.model_validate(base | fields)


@pytest.mark.parametrize(
    ("fields", "conversion"),
    [
        ({"color_transfer": "smpte2084", "dynamic_range": "pq"}, "pq"),
        ({"color_transfer": "arib-std-b67", "dynamic_range": "hlg"}, "hlg"),
        ({"color_matrix": "bt709"}, None),
        ({}, None),  # untagged HD: BT.709, as players take it
        ({"color_matrix": "smpte170m", "width": 720, "height": 480}, "bt601"),
        ({"width": 720, "height": 576}, "bt601"),  # untagged SD: BT.601
    ],
)
def test_each_source_gets_the_conversion_its_picture_needs(
    fields: dict[str, object], conversion: str | None
) -> None:
    assert colour.conversion_for(_source(**fields)) == conversion


def test_hdr_is_tone_mapped_in_linear_light_counted_in_sdr_white() -> None:
    chain = ",".join(colour.scale_filters("pq", 1280, 720))
    assert chain == (
        "zscale=w=1280:h=720:f=bicubic:tin=smpte2084:pin=bt2020:min=bt2020nc:rin=tv"
        ":t=linear:p=bt709:npl=203,format=gbrpf32le,tonemap=tonemap=mobius:param=0.5:desat=0,"
        "zscale=t=bt709:m=bt709:r=tv,format=yuv420p"
    )
    assert colour.output_tags("sdr")[1::2] == ["bt709", "bt709", "bt709", "tv"]
    assert colour.output_tags("hlg")[1::2] == ["bt2020", "arib-std-b67", "bt2020nc", "tv"]


def test_a_source_of_sound_alone_has_no_picture_and_a_video_source_has_one() -> None:
    sound = SourceInfo(duration=2.0, width=0, height=0, fps=0, has_audio=True, has_video=False,
                       video_codec="")  # fmt: skip
    assert sound.picture_origin == 0.0
    with pytest.raises(ValueError, match="picture size"):
        _source(width=0)
    with pytest.raises(ValueError, match="a picture or a sound"):
        SourceInfo(duration=2.0, width=0, height=0, fps=0, has_audio=False, has_video=False,
                   video_codec="")  # fmt: skip
