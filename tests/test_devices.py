"""Footage as phones, browsers and broadcasters make it, through the stack: each source of
tests/footage.py uploaded to the bucket, its job run by the stack's functions, its outputs
measured as a player would read them (ffprobe, the flash and beep marks, SSIM against the
picture an HDR source was made from).

All the uploads go in at once and every test reads its own job: the stack encodes them side
by side, as it would a busy day's uploads.
"""

from __future__ import annotations

import itertools
import re
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from tests import footage
from tests.api import http
from tests.test_pipeline import ffprobe, s3, wait_for_job

__all__ = ["s3"]  # the bucket client fixture, shared with test_pipeline

pytestmark = pytest.mark.slow

# Sound and picture may differ by this much at any mark (viewers notice sound ahead of
# picture by about 45 ms): the bound, the source's own offset included.
SYNC_S = 0.020

SOUND_ALONE = ["voice.m4a", "song.mp3", "memo.aac", "take.wav", "master.flac", "call.opus",
               "tune.ogg"]  # fmt: skip

# Options an upload carries as its own metadata (vtp.options): DASH beside HLS.
METADATA: dict[str, dict[str, str | list[str] | tuple[str]]] = {
    "voice.m4a": {"vtp-formats": "hls,dash"},
    "hdr-pq.mov": {"vtp-hdr": "keep", "vtp-formats": "hls,dash"},
    "hdr10-boxes.mov": {"vtp-formats": "hls,mp4"},
}

Maker = Callable[[Path], Path]
CASES: dict[str, Maker] = {
    "phone-vfr.mov": lambda p: footage.flash_beep(p, seconds=4, rate_pattern=footage.VFR_PHONE),
    "sound-late.mp4": lambda p: footage.flash_beep(p, seconds=3, offset=0.08),
    "broadcast.ts": lambda p: footage.broadcast_ts(p, seconds=3, start=10.0, audio_delay=0.04),
    "broadcast-25i.ts": lambda p: footage.broadcast_ts(p, seconds=3, interlaced=True),
    "recorder.webm": lambda p: footage.media_recorder_webm(p, seconds=3),
    "edited.mp4": lambda p: footage.negative_start(p, seconds=5, cut=2.5),
    "film-23976.mp4": lambda p: footage.ntsc_rates(p, rate="24000/1001"),
    "tv-2997.mp4": lambda p: footage.ntsc_rates(p, rate="30000/1001"),
    "surround.mp4": lambda p: footage.surround_51(p),
    "pal-anamorphic.mp4": lambda p: footage.anamorphic_pal(p, sar="64/45"),
    "portrait.mov": lambda p: footage.rotated_portrait(p),
    **{name: (lambda p: footage.audio_only(p, seconds=2)) for name in SOUND_ALONE},
    "hdr-pq.mov": lambda p: footage.hdr_from_sdr(p, _sdr(p.parent), transfer="pq"),
    "hdr-hlg.mov": lambda p: footage.hdr_from_sdr(p, _sdr(p.parent), transfer="hlg"),
    # HDR10 with its metadata in the container too (mdcv, clli beside hvcC), as cameras do.
    "hdr10-boxes.mov": lambda p: _with_hdr10_boxes(
        p, footage.hdr_from_sdr(p.with_name("boxes-base.mov"), _sdr(p.parent), transfer="pq")
    ),
    # An iPhone's Dolby Vision: profile 8.4, its base layer HLG.
    "dolby-vision.mov": lambda p: footage.dolby_vision(
        p, footage.hdr_from_sdr(p.with_name("dv-base.mov"), _sdr(p.parent), transfer="hlg")
    ),
}


def _with_hdr10_boxes(path: Path, base: Path) -> Path:
    mdcv = struct.pack(">8H2I", 13250, 34500, 7500, 3000, 34000, 16000, 15635, 16450,
                       10_000_000, 1)  # fmt: skip
    with_mdcv = footage.add_entry_box(path.with_name("mdcv.mov"), base, b"mdcv", mdcv)
    return footage.add_entry_box(path, with_mdcv, b"clli", struct.pack(">2H", 1000, 400))


def _sdr(folder: Path) -> Path:
    """The SDR picture the HDR sources are made from (made once a session)."""
    return footage.sdr_picture(folder / "sdr.mkv")


@pytest.fixture(scope="module")
def jobs(gateway: str, s3: Minio, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case's finished job, by its file name; "notes.txt" is an upload of text."""
    folder = tmp_path_factory.mktemp("devices")
    prefix = f"devices/{time.time_ns()}"
    keys = {}
    for name, make in CASES.items():
        path = make(folder / name)
        keys[name] = f"{prefix}/{name}"
        s3.fput_object("uploads", keys[name], str(path), metadata=METADATA.get(name))
    notes = folder / "notes.txt"
    notes.write_text("meeting notes, not a video\n" * 20)
    keys["notes.txt"] = f"{prefix}/notes.txt"
    s3.fput_object("uploads", keys["notes.txt"], str(notes))
    return {name: wait_for_job(gateway, "uploads", key, timeout=300) for name, key in keys.items()}


def _done(jobs: dict[str, Any], name: str) -> dict[str, Any]:
    job: dict[str, Any] = jobs[name]
    assert job["state"] == "succeeded", job
    return job


def _video_url(job: dict[str, Any]) -> str:
    """The first video rendition's playlist."""
    return str(next(r for r in job["renditions"] if r["kind"] == "video")["urls"]["playlist"])


def _urls(job: dict[str, Any]) -> tuple[str, str]:
    """The first video rendition's playlist and the sound's."""
    sound = next(r for r in job["renditions"] if r["kind"] == "audio")
    return _video_url(job), sound["urls"]["playlist"]


def _video_stream(url: str) -> dict[str, Any]:
    return next(s for s in ffprobe(url)["streams"] if s["codec_type"] == "video")


def _frame_rate(job: dict[str, Any]) -> float:
    video = next(r for r in job["renditions"] if r["kind"] == "video")
    return float(video["fps"])


def _assert_on_the_grid(url: str, fps: float) -> list[float]:
    """The rendition's frames: from 0, one every 1/fps, none missing or doubled."""
    times = footage.frame_times(url)
    assert times and times[0] == pytest.approx(0.0, abs=1e-4), times[:3]
    steps = {round(b - a, 4) for a, b in itertools.pairwise(times)}
    assert steps == {round(1 / fps, 4)}, steps
    return times


# --- lip sync and timestamps ---------------------------------------------------------------


def test_a_phone_video_at_a_varying_rate_keeps_its_lips_on_its_sound(jobs: dict[str, Any]) -> None:
    """20-30 fps frame by frame: every output frame on one grid from 0, each flash within
    half an output frame of its source time, each beep within 20 ms of its flash."""
    job = _done(jobs, "phone-vfr.mov")
    video, sound = _urls(job)
    fps = _frame_rate(job)
    _assert_on_the_grid(video, fps)
    marks = footage.mark_times(4)
    flashes = footage.flash_times(video)
    assert len(flashes) == len(marks), flashes
    for flash, mark in zip(flashes, marks, strict=True):
        assert abs(flash - mark) <= 0.5 / fps + 1e-4, (flashes, marks)
    offsets = footage.sync_offsets(video, sound)
    assert len(offsets) == len(marks) and max(map(abs, offsets)) <= SYNC_S, offsets
    starts = footage.start_times(video)
    assert starts["video"] == pytest.approx(0.0, abs=1e-6), starts
    # The B-frame delay is the edit's media time, with no empty edit before it: players
    # that ignore empty edits (MSE in browsers) show the first frame at 0 too.
    ((media_time, _),) = _edits(video)
    assert media_time > 0
    ((priming, _),) = _edits(sound)
    assert priming == 1024  # the sound's: AAC's priming, hidden the same way


def _edits(playlist_url: str) -> list[tuple[int, int]]:
    """(media time, duration) of each entry of the edit list in a rendition's init segment;
    an empty edit has media time -1."""
    text = http.get(playlist_url, timeout=10).text
    uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
    assert uri, text
    init = http.get(playlist_url.rsplit("/", 1)[0] + "/" + uri.group(1), timeout=10).content
    at = init.index(b"elst")
    version, count = init[at + 4], int.from_bytes(init[at + 8 : at + 12], "big")
    width = 8 if version == 1 else 4
    entries, pos = [], at + 12
    for _ in range(count):
        duration = int.from_bytes(init[pos : pos + width], "big")
        media = int.from_bytes(init[pos + width : pos + 2 * width], "big", signed=True)
        entries.append((media, duration))
        pos += 2 * width + 4  # and the media rate
    return entries


def test_a_source_whose_sound_is_late_keeps_its_own_offset(jobs: dict[str, Any]) -> None:
    """The sound 80 ms after the picture in the source: the pipeline neither adds to it nor
    'fixes' it."""
    job = _done(jobs, "sound-late.mp4")
    offsets = footage.sync_offsets(*_urls(job))
    assert len(offsets) == 2, offsets
    assert all(abs(o - 0.08) <= SYNC_S for o in offsets), offsets


def test_a_broadcast_capture_starting_at_10_s_starts_at_0_in_sync(jobs: dict[str, Any]) -> None:
    """MPEG-TS whose clock starts at 10 s, its sound 40 ms after its picture: the outputs
    start at 0, the marks where they were relative to the picture's start."""
    job = _done(jobs, "broadcast.ts")
    video, sound = _urls(job)
    fps = _frame_rate(job)
    _assert_on_the_grid(video, fps)
    flashes = footage.flash_times(video)
    assert [round(f, 3) for f in flashes] == [1.0, 2.0], flashes
    offsets = footage.sync_offsets(video, sound)
    assert len(offsets) == 2 and max(map(abs, offsets)) <= SYNC_S, offsets
    # The sound's first sample is at 0 too (the silence before the source's first one).
    assert footage.start_times(sound)["audio"] <= 0.0


def test_an_edited_file_starts_where_its_edit_list_says(jobs: dict[str, Any]) -> None:
    """Cut without re-encoding: frames before the cut are hidden by edit lists; none of
    them shows, and the marks keep their sync."""
    job = _done(jobs, "edited.mp4")
    video, sound = _urls(job)
    _assert_on_the_grid(video, _frame_rate(job))
    flashes = footage.flash_times(video)
    assert [round(f, 2) for f in flashes] == [0.5, 1.5], flashes
    offsets = footage.sync_offsets(video, sound)
    assert len(offsets) == 2 and max(map(abs, offsets)) <= SYNC_S, offsets


def test_a_browser_recording_without_duration_or_index_is_encoded(jobs: dict[str, Any]) -> None:
    """MediaRecorder WebM: no Duration, no Cues. Its length is found by reading it; it is
    encoded whole, in sync."""
    job = _done(jobs, "recorder.webm")
    video, sound = _urls(job)
    info = ffprobe(video)
    assert float(info["format"]["duration"]) == pytest.approx(3.0, abs=0.1)
    offsets = footage.sync_offsets(video, sound)
    assert len(offsets) == 2 and max(map(abs, offsets)) <= SYNC_S, offsets


# --- what already worked, kept -------------------------------------------------------------


def test_interlaced_25i_is_deinterlaced_and_stays_25p(jobs: dict[str, Any]) -> None:
    job = _done(jobs, "broadcast-25i.ts")
    video, _ = _urls(job)
    assert _frame_rate(job) == 25.0
    stream = _video_stream(video)
    assert stream.get("field_order", "progressive") == "progressive", stream
    _assert_on_the_grid(video, 25.0)


@pytest.mark.parametrize(("name", "fps"), [("film-23976.mp4", 24000 / 1001),
                                           ("tv-2997.mp4", 30000 / 1001)])  # fmt: skip
def test_ntsc_rates_are_kept_exactly(jobs: dict[str, Any], name: str, fps: float) -> None:
    job = _done(jobs, name)
    assert _frame_rate(job) == pytest.approx(fps, abs=1e-6)
    video, _ = _urls(job)
    times = _assert_on_the_grid(video, fps)
    assert len(times) == round(2.0 * fps)
    master = http.get(job["urls"]["master"], timeout=10).text
    assert f"FRAME-RATE={fps:.3f}" in master


def _band_level(url: str, channel: int, freq: float) -> float:
    """The RMS level (dBFS) of one output channel in a narrow band around `freq`."""
    out = subprocess.run(
        ["ffmpeg", "-v", "info", "-nostats", "-i", url, "-af",
         f"pan=mono|c0=c{channel},bandpass=f={freq}:width_type=q:w=20,astats=measure_perchannel=none",
         "-f", "null", "-"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stderr  # fmt: skip
    level = re.findall(r"RMS level dB: (-?[\d.]+|-inf)", out)
    return float(level[-1]) if level else float("-inf")


def test_surround_is_downmixed_to_stereo_with_its_dialogue(jobs: dict[str, Any]) -> None:
    """5.1: the centre channel (the dialogue) is heard in both channels of the stereo."""
    job = _done(jobs, "surround.mp4")
    _, sound = _urls(job)
    (stream,) = ffprobe(sound)["streams"]
    assert (stream["channels"], stream["sample_rate"]) == (2, "48000")
    centre = footage.SURROUND_TONES["FC"]
    for channel in (0, 1):
        assert _band_level(sound, channel, centre) > -40, channel
    assert _band_level(sound, 0, footage.SURROUND_TONES["FL"]) > _band_level(
        sound, 1, footage.SURROUND_TONES["FL"]
    )  # the left front stays on the left


def test_anamorphic_pal_becomes_square_pixels(jobs: dict[str, Any]) -> None:
    job = _done(jobs, "pal-anamorphic.mp4")
    stream = _video_stream(_video_url(job))
    assert stream.get("sample_aspect_ratio", "1:1") == "1:1"
    assert stream["width"] / stream["height"] == pytest.approx(16 / 9, abs=0.02)


def test_a_phone_held_upright_comes_out_upright(jobs: dict[str, Any]) -> None:
    job = _done(jobs, "portrait.mov")
    stream = _video_stream(_video_url(job))
    assert stream["height"] > stream["width"], stream


# --- HDR -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hdr-pq.mov", "hdr-hlg.mov", "dolby-vision.mov"])
def test_hdr_is_tone_mapped_to_the_sdr_picture_it_came_from(
    jobs: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """A phone's HDR video (10-bit HEVC, BT.2020, PQ or HLG; Dolby Vision 8.4 on an HLG base
    layer) of a known SDR picture: the H.264 rendition is that picture again (SSIM >= 0.90,
    far above ignoring the transfer), 8-bit and tagged BT.709 in its stream."""
    job = _done(jobs, name)
    sdr = _sdr(tmp_path)
    video = next(r for r in job["renditions"] if r["name"] == "360p")["urls"]["playlist"]
    stream = _video_stream(video)
    tags = (stream["pix_fmt"], stream.get("color_primaries"), stream.get("color_transfer"),
            stream.get("color_space"))  # fmt: skip
    assert tags == ("yuv420p", "bt709", "bt709", "bt709"), tags
    score = footage.ssim_against(video, sdr)
    naive = footage.ssim_against(_naive(tmp_path, name), sdr)
    assert score >= 0.90 and score >= naive + 0.05, (score, naive)


def test_an_sdr_mp4_of_hdr_says_nothing_of_hdr(jobs: dict[str, Any]) -> None:
    """ffmpeg copies a source's mastering display and light levels onto a track it encodes:
    the SDR rendition's progressive MP4 must not carry them (a player would take it for
    HDR); its picture is tagged BT.709."""
    job = _done(jobs, "hdr10-boxes.mov")
    rend = next(r for r in job["renditions"] if r["name"] == "360p")
    mp4 = http.get(rend["urls"]["mp4"], timeout=10).content
    assert b"mdcv" not in mp4 and b"clli" not in mp4
    info = footage.ffprobe(rend["urls"]["mp4"], "-select_streams", "v:0", "-show_entries",
                           "stream=color_transfer,color_primaries:stream_side_data")  # fmt: skip
    (stream,) = info["streams"]
    assert (stream["color_primaries"], stream["color_transfer"]) == ("bt709", "bt709")
    assert not stream.get("side_data_list"), stream


def _naive(folder: Path, name: str) -> Path:
    """The HDR source made 8-bit with no regard for its transfer: what the SDR rendition
    was before tone mapping."""
    source = CASES[name](folder / name)
    out = folder / f"naive-{name}.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-vf",
                    "scale=640:360,format=yuv420p", "-c:v", "libx264", "-crf", "18", str(out)],
                   check=True, timeout=120)  # fmt: skip
    return out


def test_hdr_kept_beside_the_sdr_ladder(jobs: dict[str, Any]) -> None:
    """`hdr: keep`: an HEVC Main 10 rendition in the source's PQ with its mastering display
    and light levels, listed VIDEO-RANGE=PQ in the master and with its transfer as an
    essential property in the MPD, beside the SDR one every player can play."""
    job = _done(jobs, "hdr-pq.mov")
    assert [r["name"] for r in job["renditions"] if r["kind"] == "video"] == ["360p", "360p-hdr"]
    hdr = next(r for r in job["renditions"] if r["name"] == "360p-hdr")
    assert (hdr["codec"], hdr["dynamic_range"]) == ("hevc", "pq")
    stream = _video_stream(hdr["urls"]["playlist"])
    assert (stream["profile"], stream["pix_fmt"]) == ("Main 10", "yuv420p10le")
    tags = (stream.get("color_primaries"), stream.get("color_transfer"), stream.get("color_space"))
    assert tags == ("bt2020", "smpte2084", "bt2020nc"), tags
    side = footage.ffprobe(
        hdr["urls"]["playlist"],
        "-select_streams",
        "v:0",
        "-read_intervals",
        "%+#1",
        "-show_frames",
        "-show_entries",
        "frame=side_data_list",
    )
    kinds = {d["side_data_type"]: d for d in side["frames"][0]["side_data_list"]}
    assert kinds["Content light level metadata"]["max_content"] == 1000
    assert kinds["Mastering display metadata"]["max_luminance"] == "10000000/10000"
    master = http.get(job["urls"]["master"], timeout=10).text
    variants = [line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF")]
    (pq,) = [v for v in variants if "VIDEO-RANGE=PQ" in v]
    assert 'CODECS="hvc1.2.' in pq and len(variants) == 2, master
    mpd = http.get(job["urls"]["dash"], timeout=10).text
    assert ('<EssentialProperty schemeIdUri="urn:mpeg:mpegB:cicp:TransferCharacteristics" '
            'value="16"') in mpd, mpd  # fmt: skip
    assert mpd.count("<AdaptationSet") == 2  # SDR video, HDR video (the source is silent)
    from tests.mpd_schema import schema_problems

    assert schema_problems(mpd) == []
    # The other HDR source asked for nothing: SDR only.
    assert [r["name"] for r in _done(jobs, "hdr-hlg.mov")["renditions"]] == ["360p"]


# --- sound alone, and what is not taken ----------------------------------------------------


@pytest.mark.parametrize("name", SOUND_ALONE)
def test_sound_alone_becomes_a_job_of_sound(jobs: dict[str, Any], name: str) -> None:
    """A voice memo, a podcast, a song: the sound rendition (AAC stereo 48 kHz) in an
    audio-only master, no picture, no poster."""
    job = _done(jobs, name)
    assert [(r["name"], r["kind"]) for r in job["renditions"]] == [("audio", "audio")]
    master = http.get(job["urls"]["master"], timeout=10).text
    (variant,) = [line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF")]
    assert 'CODECS="mp4a.40.2"' in variant and "RESOLUTION" not in variant, master
    assert "poster" not in job["urls"]
    info = ffprobe(job["renditions"][0]["urls"]["playlist"])
    (stream,) = info["streams"]
    assert (stream["codec_name"], stream["channels"], stream["sample_rate"]) == ("aac", 2, "48000")
    assert float(info["format"]["duration"]) == pytest.approx(2.0, abs=0.1)


def test_sound_alone_has_a_dash_manifest_of_sound(jobs: dict[str, Any]) -> None:
    from tests.mpd_schema import schema_problems

    job = _done(jobs, "voice.m4a")
    mpd = http.get(job["urls"]["dash"], timeout=10).text
    assert schema_problems(mpd) == []
    assert re.findall(r'contentType="(\w+)"', mpd) == ["audio"], mpd
    assert 'mediaPresentationDuration="PT2' in mpd, mpd


def test_an_upload_that_is_neither_video_nor_sound_is_answered(jobs: dict[str, Any]) -> None:
    job = jobs["notes.txt"]
    assert job["state"] == "failed"
    assert "'txt' file is neither video nor sound" in job["error"], job["error"]
