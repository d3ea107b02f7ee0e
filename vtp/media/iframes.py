"""Trick play: a rendition's I-frame playlist (RFC 8216 4.3.3.6, EXT-X-I-FRAMES-ONLY).

A player scrubbing or fast-forwarding wants one picture every few seconds, not the
segments around it. Every segment already starts with an IDR frame on the shared grid, so
the I-frame playlist needs no media of its own: each entry is a byte range of an existing
segment, from its movie fragment header to the end of that first picture (vtp.media.fmp4
keyframe_range), decodable with the rendition's init segment. One picture per segment is
what can be addressed that way: later keyframes of a segment sit mid-fragment, and their
header is the fragment's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vtp.media import fmp4

IFRAME_PLAYLIST = "iframes.m3u8"


class IFrame(BaseModel):
    """One picture of the playlist: where its bytes are, and how long it stands for."""

    model_config = ConfigDict(frozen=True)

    uri: str = Field(description="its segment, relative to the playlist")
    offset: int = Field(ge=0)
    length: int = Field(gt=0)
    seconds: float = Field(gt=0, description="until the next I-frame: its segment's length")


def scan(out_dir: Path, segments: Sequence[tuple[str, float]]) -> list[IFrame]:
    """The I-frame of each (file, seconds) segment written in `out_dir`."""
    frames = []
    for name, seconds in segments:
        offset, length = fmp4.keyframe_range(out_dir / name)
        frames.append(IFrame(uri=name, offset=offset, length=length, seconds=seconds))
    return frames


def playlist(frames: Sequence[IFrame], *, init: str, first_number: int = 1) -> str:
    """The I-frame playlist over `frames`, against the init segment `init`."""
    if not frames:
        raise ValueError("an I-frame playlist needs at least one frame")
    target = max(1, round(max(f.seconds for f in frames)))
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-MEDIA-SEQUENCE:{first_number}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-I-FRAMES-ONLY",
        f'#EXT-X-MAP:URI="{init}"',
    ]
    for f in frames:
        lines += [f"#EXTINF:{f.seconds:.6f},", f"#EXT-X-BYTERANGE:{f.length}@{f.offset}", f.uri]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def result_fields(frames: Sequence[IFrame]) -> dict[str, object]:
    """What a rendition's result records of its I-frame playlist: its name, and the peak
    and average bit/s of the I-frame stream (EXT-X-I-FRAME-STREAM-INF BANDWIDTH and
    AVERAGE-BANDWIDTH): each picture's bytes over the time it stands for."""
    peak = max(round(f.length * 8 / f.seconds) for f in frames)
    total = sum(f.seconds for f in frames)
    average = round(sum(f.length for f in frames) * 8 / total)
    return {"iframes": IFRAME_PLAYLIST, "iframe_bandwidth": peak,
            "iframe_average_bandwidth": average}  # fmt: skip


def parse(text: str) -> tuple[str | None, list[IFrame]]:
    """The init segment and the frames of an I-frame playlist `playlist` wrote."""
    init: str | None = None
    frames: list[IFrame] = []
    seconds: float | None = None
    span: tuple[int, int] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith('#EXT-X-MAP:URI="'):
            init = line[len('#EXT-X-MAP:URI="') :].split('"', 1)[0]
        elif line.startswith("#EXTINF:"):
            seconds = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line.startswith("#EXT-X-BYTERANGE:"):
            length, _, offset = line[len("#EXT-X-BYTERANGE:") :].partition("@")
            span = (int(offset), int(length))
        elif line and not line.startswith("#") and seconds is not None and span is not None:
            frames.append(IFrame(uri=line, offset=span[0], length=span[1], seconds=seconds))
            seconds = span = None
    return init, frames
