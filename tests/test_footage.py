"""tests/footage.py makes what it says it makes, and its helpers measure what they say.

The pipeline's sync and timestamp tests trust both: a generator whose VFR came out constant,
or a helper that reads 0 where the file says 80 ms, would let a broken pipeline pass. Each
claim is checked here against ffprobe or against a deliberate, known error. No stack: these
tests only run ffmpeg and ffprobe.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.footage import (
    SURROUND_TONES,
    VFR_ALTERNATING,
    VFR_PHONE,
    _Cadence,
    anamorphic_pal,
    audio_only,
    beep_times,
    broadcast_ts,
    ffprobe,
    flash_beep,
    flash_times,
    frame_times,
    interlaced_25i,
    mark_times,
    matroska_layout,
    media_recorder_webm,
    negative_start,
    ntsc_rates,
    pair_offsets,
    phone_vfr,
    rotated_portrait,
    start_times,
    surround_51,
    sync_offsets,
    tone_frequencies,
)

approx = pytest.approx


def intervals(path: Path) -> set[float]:
    """The distinct frame durations (s, to 0.1 ms) of the first video stream."""
    times = frame_times(path)
    return {round(b - a, 4) for a, b in itertools.pairwise(times)}


def streams(path: Path, *entries: str) -> list[dict[str, Any]]:
    show = ",".join(("codec_type", *entries))
    found: list[dict[str, Any]] = ffprobe(path, "-show_entries", f"stream={show}")["streams"]
    return found


def stream(path: Path, kind: str, *entries: str) -> dict[str, Any]:
    return next(s for s in streams(path, *entries) if s["codec_type"] == kind)


# --- the marks themselves -----------------------------------------------------------------------


def test_marks_every_period_after_the_first():
    assert mark_times(3) == [1.0, 2.0]
    assert mark_times(3.5, 0.5) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert mark_times(3, at=10.0) == [11.0, 12.0]


def test_cadence_starts_each_period_with_a_frame_and_never_runs_fast():
    phone = _Cadence.of(VFR_PHONE, 1.0)
    assert phone.tick_rate == 120 and phone.ticks[0] == 0
    steps = {b - a for a, b in itertools.pairwise((*phone.ticks, phone.period_ticks))}
    assert steps == {4, 5, 6}  # 1/30, 1/24, 1/20 s
    alternating = _Cadence.of(VFR_ALTERNATING, 1.0)
    last = alternating.period_ticks - alternating.ticks[-1]
    assert last == 8  # the remainder folded into the last interval, not a 1/40 s frame
    assert _Cadence.of((30,), 1.0).constant and not phone.constant


# --- flash_beep ---------------------------------------------------------------------------------


def test_constant_rate_source_has_its_marks_in_sync(tmp_path):
    clip = flash_beep(tmp_path / "cfr.mp4", seconds=3)
    assert intervals(clip) == {0.0333}
    flashes, beeps = flash_times(clip), beep_times(clip)
    assert flashes == approx(mark_times(3), abs=1e-6)
    assert beeps == approx(mark_times(3), abs=1e-4)
    assert pair_offsets(flashes, beeps) == approx([0.0, 0.0], abs=0.001)


@pytest.mark.parametrize("suffix", [".mov", ".mp4", ".mkv"])
def test_phone_cadence_is_really_variable(tmp_path, suffix):
    clip = flash_beep(tmp_path / f"vfr{suffix}", seconds=3, rate_pattern=VFR_PHONE)
    if suffix == ".mkv":  # Matroska counts in milliseconds
        assert intervals(clip) == {0.033, 0.034, 0.041, 0.042, 0.05}
    else:
        assert intervals(clip) == {0.0333, 0.0417, 0.05}
        assert stream(clip, "video", "time_base")["time_base"] == "1/600"
    assert stream(clip, "video", "profile")["profile"] == "High"
    flashes, beeps = flash_times(clip), beep_times(clip)
    assert flashes == approx([1.0, 2.0], abs=1e-3)  # on kept frames, exactly
    assert pair_offsets(flashes, beeps) == approx([0.0, 0.0], abs=0.001)


@pytest.mark.parametrize("offset", [0.08, -0.08])
@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".webm"])
def test_a_deliberate_offset_is_measured(tmp_path, suffix, offset):
    """The sound moved by `offset` in the file: the beeps are found that much off the flashes,
    which stay on the marks, whatever the container does with the sound's start."""
    clip = flash_beep(tmp_path / f"off{suffix}", seconds=3, offset=offset, rate_pattern=(30, 24))
    flashes, beeps = flash_times(clip), beep_times(clip)
    assert flashes == approx(mark_times(3), abs=1e-3)
    assert beeps == approx([t + offset for t in mark_times(3)], abs=1e-3)
    assert pair_offsets(flashes, beeps) == approx([offset, offset], abs=0.005)


def test_a_late_sound_stream_starts_late(tmp_path):
    """In mkv the first sound packet is at the offset; in mp4 the AAC priming packet before
    it is kept (behind an edit list), so it starts 1024 samples earlier."""
    mkv = flash_beep(tmp_path / "late.mkv", seconds=2, offset=0.08)
    assert start_times(mkv) == {"video": 0.0, "audio": 0.08, "format": 0.0}
    mp4 = flash_beep(tmp_path / "late.mp4", seconds=2, offset=0.08)
    assert start_times(mp4)["audio"] == approx(0.08 - 1024 / 48000, abs=1e-6)


def test_phone_vfr_makes_a_short_phone_clip(tmp_path):
    clip = phone_vfr(tmp_path / "phone.mov", seconds=3)
    video = stream(clip, "video", "codec_name", "profile", "time_base", "avg_frame_rate")
    audio = stream(clip, "audio", "codec_name", "sample_rate", "channels")
    assert (video["codec_name"], video["profile"], video["time_base"]) == ("h264", "High", "1/600")
    assert (audio["codec_name"], audio["sample_rate"], audio["channels"]) == ("aac", "48000", 2)
    assert len(intervals(clip)) > 1


@pytest.mark.slow
def test_phone_vfr_stays_in_sync(tmp_path):
    clip = phone_vfr(tmp_path / "phone30.mov", seconds=30)
    duration = float(ffprobe(clip, "-show_entries", "format=duration")["format"]["duration"])
    assert duration == approx(30, abs=0.1)
    assert intervals(clip) == {0.0333, 0.0417, 0.05}
    offsets = sync_offsets(clip)
    assert len(offsets) == 29
    assert max(abs(o) for o in offsets) < 0.001


# --- MediaRecorder WebM -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["vp8", "vp9"])
def test_media_recorder_webm_has_no_duration_and_no_cues(tmp_path, codec):
    clip = media_recorder_webm(tmp_path / "rec.webm", seconds=3, codec=codec)
    fmt = ffprobe(clip, "-show_entries", "format=duration,format_name")["format"]
    assert fmt["format_name"] == "matroska,webm"
    assert fmt.get("duration", "N/A") == "N/A"
    layout = matroska_layout(clip)
    assert not layout.has_cues and not layout.has_duration and not layout.tags_duration
    assert not layout.segment_size_known
    assert layout.timestamp_scale == 1_000_000  # milliseconds
    assert [s["codec_name"] for s in streams(clip, "codec_name")] == [codec, "opus"]
    assert len(intervals(clip)) > 1
    assert sync_offsets(clip) == approx([0.0, 0.0], abs=0.001)


def test_matroska_layout_sees_cues_and_duration_where_they_are(tmp_path):
    """The counter-check: the same muxer writing a file it can seek in writes both."""
    layout = matroska_layout(flash_beep(tmp_path / "seekable.webm", seconds=2))
    assert layout.has_cues and layout.has_duration and layout.segment_size_known


# --- broadcast ----------------------------------------------------------------------------------


@pytest.mark.parametrize("audio_codec", ["aac", "mp2"])
def test_broadcast_ts_starts_at_its_clock(tmp_path, audio_codec):
    clip = broadcast_ts(tmp_path / "cap.ts", seconds=3, audio_codec=audio_codec)
    assert start_times(clip) == {"video": 10.0, "audio": 10.0, "format": 10.0}
    assert ffprobe(clip, "-show_entries", "format=format_name")["format"]["format_name"] == "mpegts"
    # beep_times reads the stream's own times: raw PCM alone would put them at 1 and 2 s.
    assert flash_times(clip) == approx(mark_times(3, at=10.0), abs=1e-3)
    assert beep_times(clip) == approx(mark_times(3, at=10.0), abs=1e-3)


def test_broadcast_sound_starting_late_is_still_in_sync(tmp_path):
    clip = broadcast_ts(tmp_path / "late.ts", seconds=3, start=10.0, audio_delay=0.04)
    assert start_times(clip) == {"video": 10.0, "audio": approx(10.04, abs=1e-6), "format": 10.0}
    assert sync_offsets(clip) == approx([0.0, 0.0], abs=0.001)


def test_broadcast_ts_interlaced(tmp_path):
    clip = broadcast_ts(tmp_path / "25i.ts", seconds=2, interlaced=True)
    video = stream(clip, "video", "width", "height", "field_order", "r_frame_rate")
    assert video == {
        "codec_type": "video",
        "width": 720,
        "height": 576,
        "field_order": "tt",
        "r_frame_rate": "25/1",
    }
    assert sync_offsets(clip) == approx([0.0], abs=0.001)


# --- edited files -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["trim", "offset"])
def test_negative_start_has_negative_packets_behind_edit_lists(tmp_path, how):
    clip = negative_start(tmp_path / "edited.mp4", how=how)
    assert start_times(clip) == {"video": 0.0, "audio": 0.0, "format": 0.0}
    assert clip.read_bytes().count(b"elst") == 2  # an edit list per track
    for kind in ("v", "a"):
        first = ffprobe(clip, "-select_streams", kind, "-show_entries", "packet=pts_time,flags")
        packet = first["packets"][0]
        assert float(packet["pts_time"]) < 0 and "D" in packet["flags"]  # to be discarded
    flashes, beeps = flash_times(clip), beep_times(clip)
    assert flashes == approx([0.5, 1.5], abs=1e-3)  # the marks at 3 and 4 s, minus 2.5
    assert pair_offsets(flashes, beeps) == approx([0.0, 0.0], abs=0.001)


# --- sound only ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "codec", "format_name"),
    [
        (".m4a", "aac", "mov,mp4,m4a,3gp,3g2,mj2"),
        (".mp3", "mp3", "mp3"),
        (".aac", "aac", "aac"),
        (".wav", "pcm_s16le", "wav"),
        (".flac", "flac", "flac"),
        (".opus", "opus", "ogg"),
        (".ogg", "vorbis", "ogg"),
    ],
)
def test_audio_only_by_suffix(tmp_path, suffix, codec, format_name):
    clip = audio_only(tmp_path / f"sound{suffix}", seconds=1)
    found = streams(clip, "codec_name", "channels", "sample_rate")
    assert found == [
        {"codec_type": "audio", "codec_name": codec, "channels": 2, "sample_rate": "48000"}
    ]
    assert ffprobe(clip, "-show_entries", "format=format_name")["format"]["format_name"] == (
        format_name
    )
    assert list(tone_frequencies(clip).values()) == [approx(200, rel=0.1), approx(300, rel=0.1)]


def test_audio_only_mono(tmp_path):
    clip = audio_only(tmp_path / "mono.m4a", seconds=1, channels=1)
    assert streams(clip, "channels") == [{"codec_type": "audio", "channels": 1}]


@pytest.mark.parametrize("suffix", [".m4a", ".mp3"])
def test_beeps_in_sound_only_files_are_found_at_the_stream_times(tmp_path, suffix):
    """An mp3's LAME delay shows as a start time (23 ms at 48 kHz), and ffmpeg puts its
    samples after it: beep_times follows the file's timeline, not the raw sample count."""
    clip = audio_only(tmp_path / f"beeps{suffix}", seconds=2, period=0.5)
    start = start_times(clip)["audio"]
    assert start == (approx(1105 / 48000, abs=1e-5) if suffix == ".mp3" else 0.0)
    assert beep_times(clip) == approx([start + t for t in mark_times(2, 0.5)], abs=1e-3)


def test_beep_times_follow_the_timestamps_across_a_gap(tmp_path):
    """A 200 ms hole in the sound's timestamps (FLAC in Matroska: samples and times exact):
    the beeps after it are found 200 ms later, where a player puts them, not where counting
    samples would."""
    beeps = audio_only(tmp_path / "beeps.wav", seconds=3, period=0.5, channels=1)
    clip = tmp_path / "gap.mkv"
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(beeps)]
    cmd += ["-af", r"asetpts=PTS+gte(T\,1.25)*0.2/TB", "-c:a", "flac", str(clip)]
    subprocess.run(cmd, check=True, timeout=60)
    assert beep_times(clip) == approx([0.5, 1.0, 1.7, 2.2, 2.7], abs=1e-3)


# --- the earlier cases --------------------------------------------------------------------------


def test_interlaced_25i(tmp_path):
    clip = interlaced_25i(tmp_path / "25i.mp4", seconds=1)
    video = stream(clip, "video", "width", "height", "field_order", "r_frame_rate")
    assert (video["width"], video["height"], video["field_order"]) == (720, 576, "tt")
    assert video["r_frame_rate"] == "25/1"


@pytest.mark.parametrize(("sar", "dar"), [("16/15", "4:3"), ("64/45", "16:9")])
def test_anamorphic_pal(tmp_path, sar, dar):
    clip = anamorphic_pal(tmp_path / "pal.mp4", sar=sar)
    video = stream(clip, "video", "width", "height", "sample_aspect_ratio", "display_aspect_ratio")
    assert (video["width"], video["height"]) == (720, 576)
    assert video["sample_aspect_ratio"] == sar.replace("/", ":")
    assert video["display_aspect_ratio"] == dar


def test_rotated_portrait_carries_a_display_matrix(tmp_path):
    clip = rotated_portrait(tmp_path / "upright.mp4")
    video = ffprobe(clip, "-select_streams", "v:0", "-show_streams")["streams"][0]
    assert (video["width"], video["height"]) == (1280, 720)
    [matrix] = video["side_data_list"]
    assert matrix["side_data_type"] == "Display Matrix"
    assert abs(matrix["rotation"]) == 90


def test_surround_51_has_a_tone_per_channel(tmp_path):
    clip = surround_51(tmp_path / "film.mp4")
    audio = stream(clip, "audio", "codec_name", "channels", "channel_layout")
    assert (audio["codec_name"], audio["channels"], audio["channel_layout"]) == ("aac", 6, "5.1")
    tones = tone_frequencies(clip)
    assert tones == {ch: approx(hz, rel=0.03) for ch, hz in SURROUND_TONES.items()}


@pytest.mark.parametrize("rate", ["24000/1001", "30000/1001"])
def test_ntsc_rates_are_exact(tmp_path, rate):
    clip = ntsc_rates(tmp_path / "ntsc.mp4", rate=rate, seconds=1)
    video = stream(clip, "video", "r_frame_rate", "avg_frame_rate")
    assert video["r_frame_rate"] == video["avg_frame_rate"] == rate


# --- the helpers read URLs and HLS too ----------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over http (no Range support: enough for HLS)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_helpers_measure_an_hls_playlist_over_http(served):
    """An HLS rendition of a source 80 ms out of sync, its segments copied (no re-encode): the
    helpers read the playlist's own timeline (ffmpeg's MPEG-TS starts at 1.4 s) and the
    same 80 ms."""
    root, base = served
    src = flash_beep(root / "src.mp4", seconds=4, offset=0.08)
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-c", "copy"]
    cmd += ["-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod", str(root / "v.m3u8")]
    subprocess.run(cmd, check=True, timeout=60)
    url = f"{base}/v.m3u8"
    # The muxer's 1.4 s is the first decoding time: the first frame is shown 2 frames later.
    start = start_times(url)["video"]
    assert start == approx(1.4 + 2 / 30, abs=1e-3)
    flashes, beeps = flash_times(url), beep_times(url)
    assert flashes == approx([start + t for t in mark_times(4)], abs=1e-3)
    assert pair_offsets(flashes, beeps) == approx([0.08] * 3, abs=0.005)
