"""Probe, encode, master playlist and poster against real clips served over HTTP.

Clips are generated with lavfi (testsrc2 + sine) into a temporary directory and served by a
local HTTP server with range support, the way S3 serves a presigned URL. Outputs are checked
with ffprobe.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vtp.errors import FfmpegError, InvalidRequest, InvalidSource, StorageError
from vtp.media.encode import RenditionResult, encode_rendition, parse_media_playlist, peak_bitrate
from vtp.media.ffmpeg import Progress
from vtp.media.ladder import plan_ladder
from vtp.media.playlist import MasterEntry, make_poster, master_playlist
from vtp.media.probe import probe_source
from vtp.models import SourceInfo
from vtp.settings import Settings

# Short GOPs and segments so a 4 s clip has several of each.
FAST = Settings(segment_seconds=2.0, gop_seconds=1.0, ffprobe_timeout_seconds=30)


# --- a range-capable static file server, like S3 behind a presigned URL -------------------


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with `Range` support (ffmpeg seeks in MP4s) and records every path."""

    requested: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requested.append(self.path)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match and match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Server:
    root: Path
    base: str
    requested: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        # A query string like a presigned URL's, to prove it never reaches logs or reasons.
        return f"{self.base}/{name}?X-Amz-Signature=not-for-logs"


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
        check=True,
        timeout=120,
    )


def _av(size: str, seconds: float, *, rate: int = 30, audio: bool = True) -> list[str]:
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    return args


H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("media")
    requested: list[str] = []
    handler = type(
        "Handler",
        (_RangeHandler,),
        {"requested": requested, "__init__": _bind_directory(root)},
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    srv = Server(root=root, base=f"http://127.0.0.1:{httpd.server_address[1]}", requested=requested)
    _make_clips(srv)
    yield srv
    httpd.shutdown()
    httpd.server_close()


def _bind_directory(root: Path) -> Callable[..., None]:
    def __init__(self: http.server.SimpleHTTPRequestHandler, *args: Any, **kwargs: Any) -> None:
        http.server.SimpleHTTPRequestHandler.__init__(self, *args, directory=str(root), **kwargs)

    return __init__


def _make_clips(srv: Server) -> None:
    d = srv.root
    aac = ["-c:a", "aac", "-b:a", "96k"]
    _ffmpeg(*_av("960x540", 4), *H264, *aac, str(d / "src540.mp4"))
    _ffmpeg(*_av("640x360", 3), *H264, *aac, str(d / "land360.mp4"))
    _ffmpeg(*_av("360x640", 2, audio=False), *H264, str(d / "portrait.mp4"))
    # A phone-style rotated file: 640x360 coded, shown upright as 360x640.
    _ffmpeg("-display_rotation", "90", "-i", str(d / "land360.mp4"), "-c", "copy",
            str(d / "rotated.mp4"))  # fmt: skip
    # PAL widescreen DV style: 720x576 coded with 16:15 pixels, shown 768x576.
    _ffmpeg(*_av("720x576", 1, rate=25, audio=False), *H264, "-vf", "setsar=16/15",
            str(d / "anamorphic.mp4"))  # fmt: skip
    _ffmpeg(*_av("1600x900", 1, audio=False), *H264, str(d / "big.mp4"))
    _ffmpeg(*_av("320x240", 1), *H264, *aac, str(d / "clip.mkv"))
    _ffmpeg(*_av("320x240", 1), *H264, *aac, str(d / "clip.ts"))
    _ffmpeg(*_av("320x240", 1, rate=25), "-c:v", "mpeg2video", "-c:a", "mp2", str(d / "clip.mpg"))
    _ffmpeg(*_av("320x240", 1), "-c:v", "mpeg4", "-c:a", "mp3", str(d / "clip.avi"))
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
            "-c:a", "aac", str(d / "audio.m4a"))  # fmt: skip
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x320:rate=1", "-frames:v", "1",
            str(d / "cover.png"))  # fmt: skip
    _ffmpeg("-i", str(d / "audio.m4a"), "-i", str(d / "cover.png"), "-map", "0", "-map", "1",
            "-c:a", "copy", "-c:v", "png", "-disposition:v:0", "attached_pic",
            str(d / "cover.m4a"))  # fmt: skip
    (d / "text.mp4").write_text("this is a text file pretending to be a video\n" * 20)
    # Playlists and concat lists that would pull in a real, valid clip if they were followed.
    target = d / "land360.mp4"
    hls = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:VOD\n"
        f"#EXTINF:3.0,\nfile://{target}\n"
        f"#EXTINF:3.0,\n{srv.base}/canary-hls.mp4\n#EXT-X-ENDLIST\n"
    )
    (d / "playlist.m3u8").write_text(hls)
    (d / "playlist.mp4").write_text(hls)  # the same, disguised by its name
    concat = f"ffconcat version 1.0\nfile 'file://{target}'\nfile '{srv.base}/canary-concat.mp4'\n"
    (d / "list.ffconcat").write_text(concat)
    (d / "list.mp4").write_text(concat)
    shutil.copy(target, d / "canary-hls.mp4")
    shutil.copy(target, d / "canary-concat.mp4")


def ffprobe(path: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", *args, str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def keyframe_times(path: Path) -> list[float]:
    data = ffprobe(
        path, "-select_streams", "v:0", "-skip_frame", "nokey", "-show_entries", "frame=pts_time"
    )
    return [round(float(f["pts_time"]), 3) for f in data["frames"]]


def streams(path: Path, kind: str) -> list[dict[str, Any]]:
    return [s for s in ffprobe(path, "-show_streams")["streams"] if s["codec_type"] == kind]


# --- probe ------------------------------------------------------------------------------------


def test_probe_landscape_clip_with_audio(server):
    info = probe_source(server.url("land360.mp4"), FAST)
    assert (info.width, info.height) == (640, 360)
    assert info.duration == pytest.approx(3.0, abs=0.05)
    assert info.fps == pytest.approx(30.0)
    assert info.has_audio and info.audio_codec == "aac"
    assert info.video_codec == "h264"
    assert info.format_name.startswith("mov,mp4")
    assert info.size_bytes == (server.root / "land360.mp4").stat().st_size
    assert info.rotation == 0


def test_probe_silent_portrait_clip(server):
    info = probe_source(server.url("portrait.mp4"), FAST)
    assert (info.width, info.height) == (360, 640)
    assert not info.has_audio and info.audio_codec is None


def test_probe_rotated_clip_reports_display_size(server):
    info = probe_source(server.url("rotated.mp4"), FAST)
    assert info.rotation in (90, 270)
    assert (info.width, info.height) == (360, 640)


def test_probe_non_square_pixels_report_display_size(server):
    info = probe_source(server.url("anamorphic.mp4"), FAST)
    assert (info.width, info.height) == (768, 576)
    assert info.fps == 25.0


@pytest.mark.parametrize("name", ["clip.mkv", "clip.ts", "clip.mpg", "clip.avi"])
def test_probe_accepts_the_common_containers(server, name):
    info = probe_source(server.url(name), FAST)
    assert (info.width, info.height) == (320, 240)
    assert info.has_audio


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("text.mp4", "not a media file"),
        ("playlist.m3u8", "'hls' format"),
        ("playlist.mp4", "'hls' format"),
        ("list.ffconcat", "'concat' format"),
        ("list.mp4", "'concat' format"),
    ],
)
def test_probe_refuses_hostile_and_non_video_files(server, name, reason):
    with pytest.raises(InvalidSource) as caught:
        probe_source(server.url(name), FAST)
    assert reason in caught.value.reason
    assert caught.value.http_status == 422
    assert "not-for-logs" not in caught.value.reason
    # Nothing a playlist or list pointed at was fetched.
    assert not [p for p in server.requested if "canary" in p]


@pytest.mark.parametrize("name", ["audio.m4a", "cover.m4a"])
def test_probe_takes_sound_alone_as_a_source_of_sound(server, name):
    """A voice memo, and a song with its cover art (a still, not a video): sources of sound
    alone, with no picture size or rate, not refusals."""
    info = probe_source(server.url(name), FAST)
    assert (info.has_video, info.has_audio) == (False, True)
    assert (info.width, info.height, info.fps, info.video_codec) == (0, 0, 0, "")
    assert info.audio_codec == "aac" and info.duration > 0
    assert [t.index for t in info.audio_tracks] == [0]


def test_probe_limits(server):
    url = server.url("land360.mp4")
    cases = {
        "longer than": Settings(max_duration_seconds=2),
        "pixels": Settings(max_pixels=320 * 240),
        "fps": Settings(max_fps=25),
        "bytes": Settings(max_source_bytes=1000),
    }
    for words, settings in cases.items():
        with pytest.raises(InvalidSource) as caught:
            probe_source(url, settings)
        assert words in caught.value.reason, caught.value.reason
    # A size from storage is checked before ffprobe opens anything.
    before = len(server.requested)
    with pytest.raises(InvalidSource, match="bytes"):
        probe_source(url, FAST, size_bytes=FAST.max_source_bytes + 1)
    assert len(server.requested) == before


def test_probe_missing_object_is_a_storage_error(server):
    with pytest.raises(StorageError) as caught:
        probe_source(server.url("missing.mp4"), FAST)
    assert "404" in caught.value.reason
    assert "not-for-logs" not in caught.value.reason


def test_probe_refuses_local_paths(server):
    with pytest.raises(InvalidRequest):
        probe_source(str(server.root / "land360.mp4"), FAST)


# --- encode -----------------------------------------------------------------------------------


@dataclass
class Encoded:
    source: SourceInfo
    out: Path
    results: dict[str, RenditionResult]
    progress: list[Progress]


@pytest.fixture(scope="module")
def encoded(server, tmp_path_factory) -> Encoded:
    """Two renditions (360p HLS, 540p HLS + MP4) of one 960x540 source with audio."""
    url = server.url("src540.mp4")
    source = probe_source(url, FAST)
    specs = plan_ladder(source, FAST)
    assert [s.name for s in specs] == ["360p", "540p"]
    out = tmp_path_factory.mktemp("encoded")
    progress: list[Progress] = []
    results = {}
    for spec in specs:
        formats = ("hls", "mp4") if spec.name == "540p" else ("hls",)
        results[spec.name] = encode_rendition(
            url,
            source,
            spec,
            out / spec.name,
            formats=formats,
            settings=FAST,
            on_progress=progress.append if spec.name == "540p" else None,
        )
    return Encoded(source=source, out=out, results=results, progress=progress)


def test_renditions_have_the_planned_size_and_the_source_duration(encoded):
    for name, (width, height) in {"360p": (640, 360), "540p": (960, 540)}.items():
        playlist = encoded.out / name / "index.m3u8"
        (video,) = streams(playlist, "video")
        assert (video["width"], video["height"]) == (width, height)
        assert video["codec_name"] == "h264" and video["profile"] == "High"
        assert video["pix_fmt"] == "yuv420p"
        assert video.get("sample_aspect_ratio", "1:1") == "1:1"
        result = encoded.results[name]
        assert (result.width, result.height) == (width, height)
        assert result.duration == pytest.approx(encoded.source.duration, abs=0.1)
        duration = float(ffprobe(playlist, "-show_format")["format"]["duration"])
        assert duration == pytest.approx(encoded.source.duration, abs=0.1)


def test_audio_is_aac_stereo_48k(encoded):
    for name in ("360p", "540p"):
        (audio,) = streams(encoded.out / name / "index.m3u8", "audio")
        assert audio["codec_name"] == "aac" and audio["profile"] == "LC"
        assert audio["channels"] == 2 and audio["sample_rate"] == "48000"
        assert encoded.results[name].codecs.endswith(",mp4a.40.2")


def test_keyframes_are_on_the_same_grid_in_every_rendition(encoded):
    grids = [keyframe_times(encoded.out / n / "index.m3u8") for n in ("360p", "540p")]
    assert grids[0] == grids[1]
    # One per gop_seconds, nothing else. Read through HLS, times carry the B-frame
    # composition delay (no edit list applies across fMP4 segments): the same in every
    # rendition, so only the spacing matters.
    assert [round(t - grids[0][0], 3) for t in grids[0]] == [0.0, 1.0, 2.0, 3.0]
    assert keyframe_times(encoded.out / "540p" / "540p.mp4") == [0.0, 1.0, 2.0, 3.0]


def test_segments_last_segment_seconds(encoded):
    for name, result in encoded.results.items():
        text = (encoded.out / name / "index.m3u8").read_text()
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and "#EXT-X-ENDLIST" in text
        assert '#EXT-X-MAP:URI="init.mp4"' in text
        init, segments = parse_media_playlist(text)
        assert init == "init.mp4"
        assert [s for s, _ in segments] == ["seg_00001.m4s", "seg_00002.m4s"]
        for _, duration in segments:
            assert duration == pytest.approx(FAST.segment_seconds, abs=0.05)
        assert result.segments == 2
        assert set(result.files) == {
            "index.m3u8",
            "init.mp4",
            "seg_00001.m4s",
            "seg_00002.m4s",
            "iframes.m3u8",  # trick play: byte ranges of the segments above
            *([f"{name}.mp4"] if name == "540p" else []),
        }
        on_disk = sorted(p.name for p in (encoded.out / name).iterdir())
        assert on_disk == result.files


def test_result_figures_and_codecs(encoded):
    for name, result in encoded.results.items():
        segment_bytes = sum(
            (encoded.out / name / f).stat().st_size for f in result.files if f.endswith(".m4s")
        )
        assert result.avg_bitrate == round(segment_bytes * 8 / result.duration)
        assert result.peak_bitrate >= result.avg_bitrate > 0
        assert result.size_bytes == sum(
            (encoded.out / name / f).stat().st_size for f in result.files
        )
        (video,) = streams(encoded.out / name / "index.m3u8", "video")
        assert result.codecs.startswith(f"avc1.6400{video['level']:02x}")
        assert RenditionResult.model_validate_json(result.model_dump_json()) == result
    assert encoded.results["360p"].codecs == "avc1.64001e,mp4a.40.2"  # High, level 3.0
    assert encoded.results["360p"].mp4 is None


def test_peak_bitrate_measures_a_short_tail_with_the_segment_before():
    # 4 s segments of 1 MB and 1.2 MB, then a 0.1 s tail holding one 50 kB keyframe.
    peak = peak_bitrate([4.0, 4.0, 0.1], [1_000_000, 1_200_000, 50_000])
    assert peak == 2_439_024  # the last 4.1 s: 1.25 MB; the 0.1 s tail alone would say 4 Mbit/s
    assert peak_bitrate([4.0, 2.0], [1_000_000, 900_000]) == 3_600_000  # 2 s: half a target
    # A tiny tail never dilutes the full segment before it (the merge once did: 14 bit/s).
    assert peak_bitrate([4.0, 1.0], [8, 1]) == 16
    assert peak_bitrate([0.04], [5_000]) == 1_000_000  # one frame: its own rate


def test_mp4_is_progressive(encoded):
    mp4 = encoded.out / "540p" / "540p.mp4"
    data = mp4.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart
    fmt = ffprobe(mp4, "-show_format")["format"]
    assert float(fmt["duration"]) == pytest.approx(encoded.source.duration, abs=0.1)
    assert len(streams(mp4, "audio")) == 1
    assert "tags" not in fmt or "title" not in fmt["tags"]


def test_progress_reports_increase_and_end(encoded):
    times = [p.out_time for p in encoded.progress]
    assert len(times) >= 2
    assert times == sorted(times)
    assert encoded.progress[-1].done
    assert encoded.progress[-1].fraction(encoded.source.duration) == 1.0
    # The furthest position reported, somewhere in the encode: ffmpeg reports twice a second,
    # and its last block under -copyts has no time of its own (the end is `done`).
    assert 0 < times[-1] <= encoded.source.duration + 0.2


def test_silent_source_gives_silent_rendition(server, tmp_path):
    url = server.url("portrait.mp4")
    source = probe_source(url, FAST)
    (spec,) = plan_ladder(source, FAST)
    assert (spec.width, spec.height, spec.audio_bitrate) == (360, 640, None)
    result = encode_rendition(url, source, spec, tmp_path / spec.name, settings=FAST)
    playlist = tmp_path / spec.name / "index.m3u8"
    assert streams(playlist, "audio") == []
    (video,) = streams(playlist, "video")
    assert (video["width"], video["height"]) == (360, 640)
    assert "mp4a" not in result.codecs
    assert result.duration == pytest.approx(source.duration, abs=0.1)


def test_rotated_source_is_encoded_upright(server, tmp_path):
    url = server.url("rotated.mp4")
    source = probe_source(url, FAST)
    (spec,) = plan_ladder(source, FAST)
    encode_rendition(url, source, spec, tmp_path / spec.name, settings=FAST)
    (video,) = streams(tmp_path / spec.name / "index.m3u8", "video")
    assert (video["width"], video["height"]) == (360, 640)
    assert not video.get("side_data_list")  # no rotation left for the player to apply


def test_encode_replaces_what_a_previous_attempt_left(server, tmp_path):
    url = server.url("portrait.mp4")
    source = probe_source(url, FAST)
    (spec,) = plan_ladder(source, FAST)
    out = tmp_path / spec.name
    out.mkdir()
    (out / "seg_00009.m4s").write_bytes(b"stale")
    result = encode_rendition(url, source, spec, out, settings=FAST)
    assert not (out / "seg_00009.m4s").exists()
    assert sorted(p.name for p in out.iterdir()) == result.files


def test_encode_validates_formats_and_grid(server, tmp_path):
    url = server.url("portrait.mp4")
    source = probe_source(url, FAST)
    (spec,) = plan_ladder(source, FAST)
    with pytest.raises(InvalidRequest):
        encode_rendition(url, source, spec, tmp_path, formats=("dash",), settings=FAST)
    with pytest.raises(InvalidRequest):
        encode_rendition(url, source, spec, tmp_path, formats=("mp4",), settings=FAST)
    # Such settings never get this far: the function would not start with them.
    with pytest.raises(ValueError, match="multiple of gop_seconds"):
        Settings(segment_seconds=3, gop_seconds=2)
    # And if built around the check, the encoder still refuses before running ffmpeg.
    bad = FAST.model_copy(update={"segment_seconds": 3.0, "gop_seconds": 2.0})
    with pytest.raises(Exception, match="multiple of gop_seconds"):
        encode_rendition(url, source, spec, tmp_path, settings=bad)


# --- master playlist and poster ----------------------------------------------------------


def test_master_playlist_from_results(encoded):
    entries = [MasterEntry.from_result(r) for r in reversed(encoded.results.values())]
    text = master_playlist(entries)
    lines = text.splitlines()
    assert lines[:3] == ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    assert text.endswith("\n")
    inf = [line for line in lines if line.startswith("#EXT-X-STREAM-INF:")]
    uris = [line for line in lines if line and not line.startswith("#")]
    assert uris == ["360p/index.m3u8", "540p/index.m3u8"]  # sorted by bandwidth
    r360 = encoded.results["360p"]
    assert inf[0] == (
        f"#EXT-X-STREAM-INF:BANDWIDTH={r360.peak_bitrate},AVERAGE-BANDWIDTH={r360.avg_bitrate},"
        f'RESOLUTION=640x360,CODECS="{r360.codecs}",FRAME-RATE=30.000'
    )
    # ffmpeg reads the master playlist as one program per variant.
    master = encoded.out / "master.m3u8"
    master.write_text(text)
    heights = sorted(s["height"] for s in streams(master, "video"))
    assert heights == [360, 540]


def test_master_playlist_formatting_and_order():
    def entry(name: str, bandwidth: int, fps: float) -> MasterEntry:
        return MasterEntry(
            name=name,
            bandwidth=bandwidth,
            average_bandwidth=bandwidth // 2,
            width=1280,
            height=720,
            codecs="avc1.64001f",
            fps=fps,
        )

    text = master_playlist([entry("b", 3_000_000, 30000 / 1001), entry("a", 900_000, 25)])
    assert "FRAME-RATE=29.970" in text and "FRAME-RATE=25.000" in text
    assert text.index("a/index.m3u8") < text.index("b/index.m3u8")
    with pytest.raises(ValidationError):
        entry("../evil\n#EXT", 1, 30)
    with pytest.raises(ValidationError):
        MasterEntry(
            name="x",
            bandwidth=1,
            average_bandwidth=1,
            width=2,
            height=2,
            codecs='avc1"',
            fps=30,
        )
    with pytest.raises(InvalidRequest):
        master_playlist([])


def test_poster_is_a_jpeg_from_the_video(server, tmp_path):
    url = server.url("src540.mp4")
    source = probe_source(url, FAST)
    poster = make_poster(url, source, tmp_path / "job" / "poster.jpg", FAST)
    assert poster.read_bytes()[:3] == b"\xff\xd8\xff"
    (image,) = streams(poster, "video")
    assert image["codec_name"] == "mjpeg"
    assert (image["width"], image["height"]) == (960, 540)  # never upscaled


def test_poster_is_at_most_1280_wide(server, tmp_path):
    url = server.url("big.mp4")
    source = probe_source(url, FAST)
    poster = make_poster(url, source, tmp_path / "poster.jpg", FAST)
    (image,) = streams(poster, "video")
    assert (image["width"], image["height"]) == (1280, 720)


# --- every length, from one frame to several segments -------------------------------------

PRODUCTION_GRID = Settings(segment_seconds=4.0, gop_seconds=2.0, ffprobe_timeout_seconds=30)


@pytest.mark.parametrize(
    "seconds",
    [1 / 25, 0.5, 1.99, 2.0, 4.0, 5.3, 8.04, 9.0],
    ids=["one-frame", "half-second", "under-a-gop", "one-gop", "one-segment",
         "two-segments-short-tail", "two-segments-one-frame-tail", "three-segments"],
)  # fmt: skip
def test_any_length_encodes(server, tmp_path, seconds):
    """The real 5.3 s 720p25 clip (two segments, the last short) crashed every transcode in
    peak_bitrate; every length must give a valid rendition and honest figures."""
    name = f"len-{seconds:.2f}.mp4"
    _ffmpeg(*_av("640x360", seconds, rate=25), *H264, "-c:a", "aac", str(server.root / name))
    url = server.url(name)
    source = probe_source(url, PRODUCTION_GRID)
    (spec,) = plan_ladder(source, PRODUCTION_GRID, ["360p"])
    result = encode_rendition(url, source, spec, tmp_path / "out", settings=PRODUCTION_GRID)
    playlist = (tmp_path / "out" / "index.m3u8").read_text()
    extinf = [float(line[8:].split(",")[0]) for line in playlist.splitlines()
              if line.startswith("#EXTINF:")]  # fmt: skip
    on_disk = sorted((tmp_path / "out").glob("seg_*.m4s"))
    assert result.segments == len(extinf) == len(on_disk) >= 1, playlist
    assert all(d == pytest.approx(4.0, abs=0.05) for d in extinf[:-1]), extinf  # 4 s segments
    assert 0 < extinf[-1] <= 4.0 + 0.05
    assert sum(extinf) == pytest.approx(source.duration, abs=0.1)
    assert result.duration == pytest.approx(source.duration, abs=0.1)
    assert 0 < result.avg_bitrate <= result.peak_bitrate
    (video,) = streams(tmp_path / "out" / "index.m3u8", "video")
    assert (video["width"], video["height"]) == (640, 360)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=10_000_000), min_size=1, max_size=12),
    st.floats(min_value=0.001, max_value=4.0),
)
def test_peak_bitrate_is_the_densest_stretch(sizes, tail):
    """Whole 4 s segments (a 4 s target duration) and a last one of any length: never an
    error, never below the average, at least the rate of every segment half a target long or
    more, and itself the rate of a real stretch of the stream at least half a target long
    (a short tail, mostly one keyframe, is never measured alone) unless the whole video is
    shorter: what RFC 8216 asks of BANDWIDTH."""
    half_target = 2.0 if len(sizes) > 1 or tail >= 3.5 else 0.5 * max(1, round(tail))
    durations = [4.0] * (len(sizes) - 1) + [tail]
    peak = peak_bitrate(durations, sizes)

    def rate(i: int, j: int) -> float:
        return sum(sizes[i:j]) * 8 / sum(durations[i:j])

    n = len(sizes)
    assert peak >= round(rate(0, n)) - 1  # never below the average
    for i in range(n):
        if durations[i] >= half_target:
            assert peak >= round(rate(i, i + 1)) - 1, i
    shortest = min(half_target, sum(durations))
    stretches = {
        round(rate(i, j))
        for i in range(n)
        for j in range(i + 1, n + 1)
        if sum(durations[i:j]) >= shortest - 1e-9
    }
    assert peak in stretches


# --- headers that lie ------------------------------------------------------------------------


def _faststart(path: Path, seconds: float) -> bytes:
    _ffmpeg(*_av("320x240", seconds, rate=25, audio=False), *H264, "-movflags", "+faststart",
            str(path))  # fmt: skip
    return path.read_bytes()


def test_a_truncated_upload_fails_for_good(server, tmp_path):
    """The index at the front promises 5 s; the data holds about 1.5 s. Encoding it 'succeeded'
    with a short video before; now it fails, saying why, and is not retried."""
    whole = _faststart(server.root / "whole.mp4", 5)
    (server.root / "truncated.mp4").write_bytes(whole[: len(whole) * 3 // 10])
    url = server.url("truncated.mp4")
    source = probe_source(url, PRODUCTION_GRID)
    assert source.duration == pytest.approx(5.0, abs=0.1)
    (spec,) = plan_ladder(source, PRODUCTION_GRID, ["360p"])
    with pytest.raises((InvalidSource, FfmpegError)) as caught:
        encode_rendition(url, source, spec, tmp_path / "out", settings=PRODUCTION_GRID)
    err = caught.value
    assert isinstance(err, InvalidSource) or not err.transient, err.reason
    assert "truncated" in err.reason or "Invalid data" in err.reason, err.reason


def test_an_encode_never_outlasts_the_probed_duration(server, tmp_path):
    """A header that says 1 s over 5 s of pictures: what is encoded is what was checked
    against the duration cap, never more."""
    data = bytearray(_faststart(server.root / "five.mp4", 5))
    for box, at in ((b"mvhd", 20), (b"mdhd", 20), (b"tkhd", 24)):
        i = data.find(box)
        scale = int.from_bytes(data[i + 16 : i + 20], "big") if box != b"tkhd" else 1000
        data[i + at : i + at + 4] = scale.to_bytes(4, "big")  # one second
    (server.root / "lying.mp4").write_bytes(bytes(data))
    url = server.url("lying.mp4")
    source = probe_source(url, PRODUCTION_GRID)
    assert source.duration == pytest.approx(1.0, abs=0.05)
    (spec,) = plan_ladder(source, PRODUCTION_GRID, ["360p"])
    result = encode_rendition(url, source, spec, tmp_path / "out", settings=PRODUCTION_GRID)
    assert result.duration == pytest.approx(1.0, abs=0.1)
