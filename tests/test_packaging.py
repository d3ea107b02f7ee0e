"""One job, every viewer: its sound tracks as renditions with their languages, loudness
normalised, and a DASH manifest over the very segments the HLS playlists list. Encoded by
the stack's real functions; checked with ffprobe, ffmpeg's own loudness meter and the DASH
schema."""

from __future__ import annotations

import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from minio import Minio

from tests.api import http
from tests.manual import submit
from tests.mpd_schema import schema_problems
from tests.test_pipeline import MANUAL_BUCKET, ffprobe
from tests.test_pipeline import s3 as s3  # the same fixture: a client with MANUAL_BUCKET made
from vtp.media import loudness
from vtp.media.encode import parse_media_playlist

NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
TARGET = -16.0


def _two_track_clip(path: Path) -> Path:
    """6 s of picture with two sound tracks: English, quiet (about -52 LUFS), and French,
    louder (about -28), titled; and an English mov_text subtitle stream."""
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:01,000 --> 00:00:03,000\nHello\n\n2\n00:00:04,000 --> "
                   "00:00:05,500\nWorld\n")  # fmt: skip
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=6",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=6,volume=0.03",
         "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=48000:duration=6,volume=0.5",
         "-i", str(srt),
         "-map", "0", "-map", "1", "-map", "2", "-map", "3",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-c:s", "mov_text",
         "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=fre",
         "-metadata:s:a:1", "handler_name=Version française", "-metadata:s:s:0", "language=eng",
         "-disposition:a:0", "default", "-disposition:a:1", "0",
         str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path


def _master_lines(view: dict[str, Any], prefix: str) -> list[str]:
    master = http.get(view["urls"]["master"], timeout=10).text
    return [line for line in master.splitlines() if line.startswith(prefix)]


def _ended(gateway: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    """The job's view through status once it has ended (or as it is at `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        view = http.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10)
        job: dict[str, Any] = view.json()
        if job["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


@pytest.fixture(scope="module")
def packaged(gateway: str, s3: Minio, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The job's view through status, once it has ended: asked for by a manual job."""
    clip = _two_track_clip(tmp_path_factory.mktemp("packaging") / "tracks.mp4")
    key = f"packaging/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    # A caption file beside it: German, SubRip.
    srt = clip.with_name("de.srt")
    srt.write_text("1\n00:00:00,500 --> 00:00:02,000\nHallo\n\n2\n00:00:04,000 --> "
                   "00:00:05,000\nWelt\n", encoding="utf-8")  # fmt: skip
    s3.fput_object(MANUAL_BUCKET, f"{key}.de.srt", str(srt))
    job_id = submit(gateway, MANUAL_BUCKET, key, ["360p"], formats=["hls", "dash"],
                    loudness=TARGET,
                    captions=[{"key": f"{key}.de.srt", "language": "de"}])  # fmt: skip
    return _ended(gateway, job_id)


@pytest.mark.slow
def test_every_sound_track_is_a_rendition_with_its_language(packaged: dict[str, Any]) -> None:
    assert packaged["state"] == "succeeded", packaged["error"]
    tracks = [r for r in packaged["renditions"] if r["kind"] == "audio"]
    assert [(r["name"], r["track"], r["language"], r["label"], r["default"]) for r in tracks] == [
        ("audio", 0, "en", "English", True),
        ("audio-2", 1, "fr", "Version française", False),
    ]
    media = _master_lines(packaged, "#EXT-X-MEDIA:TYPE=AUDIO")
    assert len(media) == 2, media
    assert 'NAME="English",LANGUAGE="en",DEFAULT=YES,AUTOSELECT=YES' in media[0]
    assert 'NAME="Version française",LANGUAGE="fr",DEFAULT=NO,AUTOSELECT=YES' in media[1]
    (variant,) = _master_lines(packaged, "#EXT-X-STREAM-INF:")
    assert 'AUDIO="audio"' in variant and ',mp4a.40.2"' in variant
    # Each track is a sound stream of its own, in the one format every player decodes.
    for r in tracks:
        (stream,) = ffprobe(r["urls"]["playlist"])["streams"]
        assert (stream["codec_type"], stream["channels"], stream["sample_rate"]) == (
            "audio", 2, "48000"
        )  # fmt: skip


@pytest.mark.slow
def test_loudness_is_normalised_to_the_target_and_the_measurement_recorded(
    packaged: dict[str, Any],
) -> None:
    for r in (r for r in packaged["renditions"] if r["kind"] == "audio"):
        recorded = r["loudness"]
        assert recorded["target"] == TARGET
        before = recorded["measured"]["integrated"]
        # What the player gets, measured with the same EBU R128 meter.
        after = _measured(r["urls"]["playlist"])
        assert abs(after.integrated - TARGET) <= 1.0, (r["name"], before, after)
        assert after.true_peak <= loudness.TRUE_PEAK_DBTP + 0.5
    quiet, loud = (
        r["loudness"]["measured"]["integrated"]
        for r in packaged["renditions"]
        if r["kind"] == "audio"
    )
    assert quiet < -45 < -30 < loud, "the two tracks differed before, by more than 15 LU"


def _measured(url: str) -> loudness.Loudness:
    log = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostats", "-i", url, "-af",
         "loudnorm=I=-16:print_format=json", "-f", "null", "-"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stderr  # fmt: skip
    return loudness.parse(log)


def _hls_keys(view: dict[str, Any]) -> set[str]:
    """Every media object the HLS playlists refer to: init segments and segments."""
    keys = set()
    for r in view["renditions"]:
        url = r["urls"]["playlist"]
        init, segments = parse_media_playlist(http.get(url, timeout=10).text)
        assert init or r["kind"] == "text", r  # WebVTT: one file, no init segment
        for uri in [*([init] if init else []), *(name for name, _ in segments)]:
            keys.add(urlsplit(urljoin(url, uri)).path)
    return keys


def _mpd_keys(url: str, mpd: ET.Element) -> set[str]:
    """Every media object the MPD refers to, SegmentTemplate expanded over its timeline."""
    keys = set()
    for rep in mpd.iterfind(".//d:Representation", NS):
        base = rep.find("d:BaseURL", NS)
        if base is not None and base.text:  # a subtitle track: its whole WebVTT file
            keys.add(urlsplit(urljoin(url, base.text)).path)
            continue
        template = rep.find("d:SegmentTemplate", NS)
        if template is not None:
            keys.add(urlsplit(urljoin(url, template.attrib["initialization"])).path)
            count = sum(1 + int(s.get("r", "0")) for s in template.iterfind(".//d:S", NS))
            first = int(template.attrib["startNumber"])
            media = template.attrib["media"]
            for n in range(first, first + count):
                name = media.replace("$Number%05d$", f"{n:05d}")
                keys.add(urlsplit(urljoin(url, name)).path)
            continue
        segments = rep.find("d:SegmentList", NS)
        assert segments is not None, ET.tostring(rep)
        init = segments.find("d:Initialization", NS)
        assert init is not None
        keys.add(urlsplit(urljoin(url, init.attrib["sourceURL"])).path)
        for s in segments.iterfind("d:SegmentURL", NS):
            keys.add(urlsplit(urljoin(url, s.attrib["media"])).path)
    return keys


@pytest.mark.slow
def test_dash_indexes_the_same_segments_as_hls(packaged: dict[str, Any]) -> None:
    """One stored copy: every object the MPD names is one the HLS playlists name, and the
    other way round; the MPD is valid against the DASH schema, with the tracks' languages."""
    url = packaged["urls"]["dash"]
    response = http.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/dash+xml")
    assert schema_problems(response.text) == []
    mpd = ET.fromstring(response.content)  # noqa: S314 (our own output, just validated)
    assert _mpd_keys(url, mpd) == _hls_keys(packaged)
    sets = mpd.findall(".//d:AdaptationSet", NS)
    assert [(a.get("contentType"), a.get("lang")) for a in sets] == [
        ("video", None), ("audio", "en"), ("audio", "fr"), ("text", "en"), ("text", "de")
    ]  # fmt: skip
    roles = [a.find("d:Role", NS) for a in sets[1:]]
    assert [r.get("value") for r in roles if r is not None] == [
        "main", "alternate", "subtitle", "subtitle"
    ]  # fmt: skip
    # The durations the MPD gives are the segments' own, to the tick.
    video = sets[0].find(".//d:SegmentTemplate", NS)
    assert video is not None
    ticks = sum(
        int(s.attrib["d"]) * (1 + int(s.get("r", "0"))) for s in video.iterfind(".//d:S", NS)
    )
    assert ticks / int(video.attrib["timescale"]) == pytest.approx(6.0, abs=0.001)
    for key in _mpd_keys(url, mpd):
        got = http.get(urljoin(url, key), timeout=10)
        assert got.status_code == 200 and got.content, key


@pytest.mark.slow
def test_each_iframe_byte_range_decodes_to_one_keyframe(
    packaged: dict[str, Any], tmp_path: Path
) -> None:
    """Trick play from the segments themselves: the master names the I-frame playlist, and
    each of its byte ranges, behind the init segment, is exactly one keyframe, at the time
    its segment starts."""
    (line,) = _master_lines(packaged, "#EXT-X-I-FRAME-STREAM-INF:")
    assert 'RESOLUTION=640x360,CODECS="avc1.' in line and "mp4a" not in line
    video = packaged["renditions"][0]
    url = video["urls"]["iframes"]
    assert line.endswith(f'URI="{url.rsplit("/", 3)[-3]}/{url.rsplit("/", 3)[-2]}/iframes.m3u8"')
    text = http.get(url, timeout=10).text
    assert "#EXT-X-I-FRAMES-ONLY" in text
    init = http.get(urljoin(url, parse_media_playlist(text)[0] or ""), timeout=10).content
    entries = re.findall(r"#EXTINF:([\d.]+),\n#EXT-X-BYTERANGE:(\d+)@(\d+)\n(\S+)", text)
    assert len(entries) == 2  # 6 s: segments of 4 and 2 s
    at = 0.0
    for seconds, length, offset, uri in entries:
        start, size = int(offset), int(length)
        got = http.get(urljoin(url, uri), timeout=10,
                           headers={"Range": f"bytes={start}-{start + size - 1}"})  # fmt: skip
        assert got.status_code == 206 and len(got.content) == size
        probe = tmp_path / f"{uri}.mp4"
        probe.write_bytes(init + got.content)
        frames = ffprobe(str(probe), "-count_frames", "-show_frames", "-select_streams", "v:0")
        (frame,) = frames["frames"]
        assert frame["key_frame"] == 1 and frame["pict_type"] == "I"
        assert abs(float(frame["pts_time"]) - at) < 0.2
        at += float(seconds)


@pytest.mark.slow
def test_the_storyboard_covers_the_duration_on_sprite_sheets(
    packaged: dict[str, Any], tmp_path: Path
) -> None:
    """A thumbnail every 4 s (the segment grid), 160 px wide, on a 10x10 sheet: the cues
    run back to back from 0 to the end, each pointing into the sheet, and each thumbnail
    is that moment's picture (testsrc2 draws a moving pattern: they differ)."""
    url = packaged["urls"]["storyboard"]
    text = http.get(url, timeout=10).text
    assert text.startswith("WEBVTT\n")
    cues = re.findall(
        r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n"
        r"(\S+)#xywh=(\d+),(\d+),(\d+),(\d+)",
        text,
    )
    times = [
        (int(c[0]) * 3600 + int(c[1]) * 60 + int(c[2]) + int(c[3]) / 1000,
         int(c[4]) * 3600 + int(c[5]) * 60 + int(c[6]) + int(c[7]) / 1000)
        for c in cues
    ]  # fmt: skip
    assert [round(s, 3) for s, _ in times] == [0.0, 4.0]
    assert times[0][1] == times[1][0] and times[-1][1] == pytest.approx(6.0, abs=0.05)
    sheet_url = urljoin(url, cues[0][8])
    assert {c[8] for c in cues} == {"storyboard/sheet-001.jpg"}
    sheet = tmp_path / "sheet.jpg"
    sheet.write_bytes(http.get(sheet_url, timeout=10).content)
    (stream,) = ffprobe(str(sheet))["streams"]
    assert (stream["width"], stream["height"]) == (1600, 900)
    boxes = [tuple(int(v) for v in c[9:]) for c in cues]
    assert boxes == [(0, 0, 160, 90), (160, 0, 160, 90)]
    # The two thumbnails are different pictures: crop each and compare their pixels.
    crops = []
    for x, y, w, h in boxes:
        crops.append(subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(sheet), "-vf", f"crop={w}:{h}:{x}:{y}",
             "-f", "rawvideo", "-pix_fmt", "gray", "-"],
            capture_output=True, check=True, timeout=30,
        ).stdout)  # fmt: skip
    assert len(crops[0]) == 160 * 90 and crops[0] != crops[1]
    assert max(crops[1]) > 64, "a picture, not the black padding of an empty cell"


@pytest.mark.slow
def test_subtitles_become_webvtt_renditions_with_their_languages(
    packaged: dict[str, Any],
) -> None:
    """The source's mov_text stream and the job's SubRip file: two WebVTT renditions in the
    master's SUBTITLES group, with their languages, none forced on the viewer, and their
    cues at the source's times."""
    texts = [r for r in packaged["renditions"] if r["kind"] == "text"]
    assert [
        (r["name"], r["track"], r["caption_key"], r["language"], r["label"]) for r in texts
    ] == [
        ("text-1", 0, None, "en", "English"),
        ("text-2", None, packaged["source"]["key"] + ".de.srt", "de", "German"),
    ]
    subs = _master_lines(packaged, "#EXT-X-MEDIA:TYPE=SUBTITLES")
    assert len(subs) == 2, subs
    assert 'NAME="English",LANGUAGE="en",DEFAULT=NO,AUTOSELECT=YES,FORCED=NO' in subs[0]
    assert 'LANGUAGE="de"' in subs[1]
    (variant,) = _master_lines(packaged, "#EXT-X-STREAM-INF:")
    assert 'SUBTITLES="subs"' in variant
    english = http.get(texts[0]["urls"]["subtitles"], timeout=10).text
    german = http.get(texts[1]["urls"]["subtitles"], timeout=10).text
    assert english.startswith("WEBVTT") and german.startswith("WEBVTT")
    assert "00:01.000 --> 00:03.000\nHello" in english and "World" in english
    assert "00:00.500 --> 00:02.000\nHallo" in german and "Welt" in german
    playlist = http.get(texts[0]["urls"]["playlist"], timeout=10).text
    assert "#EXTINF:6.0" in playlist and "subtitles.vtt" in playlist
    assert packaged["plan"].get("skipped_tracks") is None  # nothing was left out


@pytest.mark.slow
def test_hevc_and_av1_ladders_beside_h264(gateway: str, s3: Minio, tmp_path: Path) -> None:
    """A job asking for HEVC and AV1 as well: the same rung in each codec, on the same
    keyframe grid, each with the CODECS its decoder configuration says, in the master and
    in one DASH adaptation set per codec; each measured, each encode timed."""
    from tests.clips import make_clip

    clip = make_clip(tmp_path / "codecs.mp4", size="640x360", seconds=4, rate=25)
    key = f"packaging/codecs-{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    job_id = submit(gateway, MANUAL_BUCKET, key, ["360p"], formats=["hls", "dash"],
                    codecs=["hevc", "av1"])  # fmt: skip
    deadline = time.monotonic() + 240
    while (job := http.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10).json())[
        "state"
    ] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.5)  # fmt: skip
    assert job["state"] == "succeeded", job["error"]
    assert job["options_key"] == "renditions=360p;formats=dash,hls;codecs=av1,h264,hevc"
    videos = [r for r in job["renditions"] if r["kind"] == "video"]
    assert [(r["name"], r["codec"]) for r in videos] == [
        ("360p", "h264"), ("360p-hevc", "hevc"), ("360p-av1", "av1")
    ]  # fmt: skip
    master = http.get(job["urls"]["master"], timeout=10).text
    for r, (name, tag, prefix) in zip(
        videos, [("h264", "avc1", "avc1.64"), ("hevc", "hvc1", "hvc1.1.6.L"),
                 ("av1", "av01", "av01.0.")], strict=True
    ):  # fmt: skip
        (stream,) = ffprobe(r["urls"]["playlist"])["streams"]
        assert (stream["codec_name"], stream["codec_tag_string"]) == (name, tag)
        assert (stream["width"], stream["height"]) == (640, 360)
        packets = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
             "packet=pts_time,flags", "-of", "csv=p=0", r["urls"]["playlist"]],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
        keys = [round(float(p.split(",")[0]), 2) for p in packets if ",K" in p]
        assert [round(k - keys[0], 2) for k in keys] == [0.0, 2.0], (name, keys)
        (variant,) = [line for line in master.splitlines()
                      if line.startswith("#EXT-X-STREAM-INF") and "RESOLUTION=640x360" in line
                      and f'CODECS="{prefix}' in line]  # fmt: skip
        assert ',mp4a.40.2"' in variant
        assert r["quality"]["score"] > 60, r["quality"]
    assert set(job["encode_seconds"]) == {"h264", "hevc", "av1"}
    assert all(v > 0 for v in job["encode_seconds"].values())
    mpd = http.get(job["urls"]["dash"], timeout=10).text
    assert schema_problems(mpd) == []
    families = re.findall(r'<Representation id="360p[^"]*"[^>]* codecs="([a-z0-9]+)\.', mpd)
    assert families == ["avc1", "hvc1", "av01"]
    assert mpd.count('contentType="video"') == 3  # one adaptation set per codec


def test_a_missing_caption_file_is_refused_with_its_key(
    gateway: str, s3: Minio, tmp_path: Path
) -> None:
    from tests.clips import make_clip

    clip = make_clip(tmp_path / "c.mp4", size="320x180", seconds=1)
    key = f"packaging/missing-{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    body = {
        "bucket": MANUAL_BUCKET,
        "key": key,
        "captions": [{"key": "nope.srt", "language": "en"}],
    }
    r = http.post(f"{gateway}/function/split", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert f"caption file s3://{MANUAL_BUCKET}/nope.srt does not exist" in r.json()["error"]
    bad = http.post(f"{gateway}/function/split", timeout=60, json=body | {
        "captions": [{"key": "x.srt", "language": "not a language"}]})  # fmt: skip
    assert bad.status_code == 400 and "captions" in bad.json()["error"], bad.text
