"""The storyboard: thumbnails every few seconds on sprite sheets, indexed by a WebVTT file
of `#xywh=` cues (the convention players' seek-bar previews read: JW Player, Video.js,
Mux, Vidstack).

It is made from the I-frames the smallest video rendition already has (vtp.media.iframes): their
byte ranges, turned into one-sample fragments behind its init segment (vtp.media.fmp4), are a
small fragmented MP4 of exactly the pictures wanted, already decodable on their own. So
no source is decoded again and nothing but those keyframes is read: a few percent of one
small rendition's bytes, and one ffmpeg run that decodes a picture per thumbnail.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vtp.media import fmp4
from vtp.media.ffmpeg import run_ffmpeg
from vtp.media.iframes import IFrame

log = logging.getLogger(__name__)

VTT = "storyboard.vtt"
FOLDER = "storyboard"
SHEET_PATTERN = "sheet-%03d.jpg"
COLUMNS = ROWS = 10  # 100 thumbnails a sheet: 400 s at the default 4 s
JPEG_QUALITY = 5  # mjpeg qscale: small pictures, a little softness is fine


class Thumbnail(BaseModel):
    model_config = ConfigDict(frozen=True)

    start: float = Field(ge=0)
    end: float = Field(gt=0)
    sheet: str
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


def pick(frames: Sequence[IFrame], every_s: float) -> list[tuple[float, float, IFrame]]:
    """(start, end, frame) of the I-frames to show, one each `every_s` seconds or as near as
    the segment grid allows; each stands until the next one, the last to the end."""
    starts, at = [], 0.0
    for f in frames:
        starts.append((at, f))
        at += f.seconds
    total = at
    chosen: list[tuple[float, IFrame]] = []
    for start, f in starts:
        if not chosen or start - chosen[-1][0] >= every_s - 1e-6:
            chosen.append((start, f))
    ends = [s for s, _ in chosen[1:]] + [total]
    return [(s, e, f) for (s, f), e in zip(chosen, ends, strict=True)]


def build(
    init: bytes,
    ranges: Sequence[bytes],
    times: Sequence[tuple[float, float]],
    out_dir: Path,
    *,
    source_size: tuple[int, int],
    width: int,
    timeout: float,
) -> list[Thumbnail]:
    """Render the thumbnails of `ranges` (keyframe byte ranges, in order, shown over
    `times`) onto sheets in `out_dir`; where each one is."""
    src_w, src_h = source_size
    height = max(2, round(width * src_h / src_w / 2) * 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = out_dir / "keyframes.mp4"
    with pictures.open("wb") as f:
        f.write(init)
        for data in ranges:
            f.write(fmp4.single_sample_fragment(data))
    args = [
        "-i",
        pictures.name,
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        "-fps_mode",
        "passthrough",  # one thumbnail per picture, whatever the time between them
        "-vf",
        f"scale={width}:{height},setsar=1,tile={COLUMNS}x{ROWS}",
        "-q:v",
        str(JPEG_QUALITY),
        "-f",
        "image2",
        "-start_number",
        "1",
        SHEET_PATTERN,
    ]
    run_ffmpeg(args, timeout=timeout, cwd=out_dir)
    pictures.unlink()
    per_sheet = COLUMNS * ROWS
    thumbnails = []
    for i, (start, end) in enumerate(times):
        cell = i % per_sheet
        thumbnails.append(
            Thumbnail(
                start=start,
                end=end,
                sheet=SHEET_PATTERN % (i // per_sheet + 1),
                x=(cell % COLUMNS) * width,
                y=(cell // COLUMNS) * height,
                width=width,
                height=height,
            )
        )
    missing = {t.sheet for t in thumbnails} - {p.name for p in out_dir.glob("sheet-*.jpg")}
    if missing:
        raise ValueError(f"ffmpeg wrote no {', '.join(sorted(missing))}")
    return thumbnails


def webvtt(thumbnails: Sequence[Thumbnail], *, folder: str = FOLDER) -> str:
    """The WebVTT index: one cue per thumbnail, its sheet and rectangle as a media
    fragment (`sheet-001.jpg#xywh=160,0,160,90`), relative to the VTT file."""
    lines = ["WEBVTT", ""]
    for t in thumbnails:
        lines += [
            f"{_timestamp(t.start)} --> {_timestamp(t.end)}",
            f"{folder}/{t.sheet}#xywh={t.x},{t.y},{t.width},{t.height}",
            "",
        ]
    return "\n".join(lines)


def _timestamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"
