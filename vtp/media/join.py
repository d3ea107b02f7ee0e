"""Joining a chunked rendition (vtp.media.chunks): proof that its chunks make one seamless stream,
then its playlist.

The defects distributed encoders are known for sit at the joins: chunks out of order, a
missing or doubled frame, a gap or an overlap in the timestamps, a segment that does not
start on a keyframe, segments that need another init segment than the playlist names. Each
is checked here from the segments themselves (vtp.media.fmp4: decode times, sample counts,
keyframe flags), before any playlist names them; a problem names its chunk, so that chunk
alone is encoded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from pydantic import BaseModel, ConfigDict

from vtp.media import iframes
from vtp.media.encode import HLS_PLAYLIST, ChunkResult, RenditionResult, peak_bitrate
from vtp.media.iframes import IFrame
from vtp.models import RenditionSpec

__all__ = [
    "JoinProblem", "check_chunk", "check_join", "iframe_playlist", "joined_result",
    "media_playlist",
]  # fmt: skip


class JoinProblem(BaseModel):
    """Why a chunk cannot join its rendition as it is."""

    model_config = ConfigDict(frozen=True)

    chunk: int
    reason: str


def check_chunk(chunk: ChunkResult, *, fps: Fraction) -> list[str]:
    """Why one chunk, on its own, does not fit its place: its frame count, its placement and
    the continuity of its segments, their numbers and keyframes. The encoding chunk checks
    this itself, so a bad encode is retried before it is ever recorded as done."""
    ticks_per_frame = Fraction(chunk.timescale) / fps
    if ticks_per_frame.denominator != 1:
        return [f"timescale {chunk.timescale} cannot time {fps} fps"]
    step = int(ticks_per_frame)
    reasons = []
    want = round(chunk.end_s * fps) - round(chunk.start_s * fps)
    frames = sum(s.frames for s in chunk.segments)
    if frames != want:
        reasons.append(f"{frames} frames for {chunk.end_s - chunk.start_s:g}s, not {want}")
    # Held to its own planned start: with its frame count exact, that is continuity across
    # the boundaries too, and a short chunk is blamed alone instead of it and the next one.
    expected_time = round(chunk.start_s * fps) * step
    expected_number = chunk.first_segment
    for seg in chunk.segments:
        number = int(seg.name.rsplit("_", 1)[-1].split(".")[0])
        if number != expected_number:
            reasons.append(f"segment {seg.name} where segment {expected_number} belongs")
        if seg.decode_time != expected_time:
            gap = (seg.decode_time - expected_time) / chunk.timescale
            what = "a gap" if gap > 0 else "an overlap"
            reasons.append(f"{what} of {abs(gap):.3f}s before {seg.name}")
        if not seg.keyframe_first:
            reasons.append(f"{seg.name} does not start on a keyframe")
        expected_number = number + 1
        expected_time = seg.decode_time + seg.frames * step
    return reasons


def check_join(
    chunks: Sequence[ChunkResult], *, fps: Fraction, source_duration: float
) -> list[JoinProblem]:
    """Every reason the chunks, in plan order, do not make one stream; [] when they do.

    * each chunk passes `check_chunk`: exactly the frames of its range at the rendition's
      constant rate, at its planned place on the timeline, its decode times running on
      without a gap or an overlap, segment numbers following on, every segment starting
      with a keyframe; which together make every boundary seamless;
    * chunks are in plan order and every one's init segment is byte for byte the first
      chunk's, the one the playlist names for all of them;
    * the whole lasts as long as the source, within one frame.
    """
    if not chunks:
        return [JoinProblem(chunk=0, reason="no chunks")]
    first = chunks[0]
    problems: list[JoinProblem] = []
    total_frames = 0
    for i, chunk in enumerate(chunks):
        reasons = check_chunk(chunk, fps=fps)
        if chunk.index != i:
            reasons.append(f"chunk {chunk.index} is in place {i}")
        if chunk.init_sha256 != first.init_sha256 or chunk.timescale != first.timescale:
            reasons.append("its init segment differs from the first chunk's")
        problems += [JoinProblem(chunk=chunk.index, reason=r) for r in reasons]
        total_frames += sum(s.frames for s in chunk.segments)
    duration = total_frames / fps
    if abs(duration - source_duration) > 1 / fps + 1e-6:
        last = chunks[-1].index
        problems.append(
            JoinProblem(
                chunk=last,
                reason=f"the chunks last {float(duration):.3f}s, the source {source_duration:.3f}s",
            )
        )
    return problems


def media_playlist(chunks: Sequence[ChunkResult], *, prefixes: Sequence[str] = ()) -> str:
    """The rendition's HLS media playlist over its chunks' segments, in order, all against
    the first chunk's init segment; `prefixes[i]` is where chunk i's files are, relative to
    the playlist ("" by default)."""
    if not chunks:
        raise ValueError("a playlist needs at least one chunk")
    where = list(prefixes) or [""] * len(chunks)
    segments = [(where[i], s) for i, c in enumerate(chunks) for s in c.segments]
    target = max(1, round(max(s.seconds for _, s in segments)))
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-MEDIA-SEQUENCE:{chunks[0].first_segment}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{where[0]}{chunks[0].init}"',
    ]
    for prefix, seg in segments:
        lines += [f"#EXTINF:{seg.seconds:.6f},", f"{prefix}{seg.name}"]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def iframe_playlist(chunks: Sequence[ChunkResult], *, prefixes: Sequence[str] = ()) -> str | None:
    """The rendition's I-frame playlist (vtp.media.iframes) over its chunks' segments, as
    `media_playlist` lists them; None when a chunk was encoded before its keyframes'
    byte ranges were recorded."""
    where = list(prefixes) or [""] * len(chunks)
    frames = _iframes(chunks, where)
    if frames is None:
        return None
    return iframes.playlist(frames, init=f"{where[0]}{chunks[0].init}",
                            first_number=chunks[0].first_segment)  # fmt: skip


def _iframes(chunks: Sequence[ChunkResult], where: Sequence[str]) -> list[IFrame] | None:
    """Each segment's keyframe as an I-frame, `where[i]` before chunk i's names; None when
    a chunk was encoded before its keyframes' byte ranges were recorded."""
    frames = []
    for prefix, c in zip(where, chunks, strict=True):
        for s in c.segments:
            if s.keyframe_offset is None or not s.keyframe_length:
                return None
            frames.append(
                IFrame(uri=f"{prefix}{s.name}", offset=s.keyframe_offset,
                       length=s.keyframe_length, seconds=s.seconds)
            )  # fmt: skip
    return frames


def joined_result(
    spec: RenditionSpec, chunks: Sequence[ChunkResult], *, fps: Fraction
) -> RenditionResult:
    """What the joined rendition is, as an encode of the whole would describe itself: its
    playlist, segment count and sizes, duration, average and peak bit rates (measured from
    the real segments, RFC 8216's way) and codecs."""
    segments = [s for c in chunks for s in c.segments]
    frames = sum(s.frames for s in segments)
    size = sum(s.size for s in segments)
    duration = float(frames / fps)
    keyframes = _iframes(chunks, [""] * len(chunks))
    trick = iframes.result_fields(keyframes) if keyframes else {}
    return RenditionResult(
        name=spec.name,
        files=[HLS_PLAYLIST],
        segments=len(segments),
        size_bytes=size + sum(c.init_size for c in chunks[:1]),
        duration=round(duration, 6),
        avg_bitrate=round(size * 8 / duration) if duration > 0 else 0,
        peak_bitrate=peak_bitrate([s.seconds for s in segments], [s.size for s in segments]),
        codecs=chunks[0].codecs,
        width=spec.width,
        height=spec.height,
        fps=spec.fps,
        timescale=chunks[0].timescale,
    ).model_copy(update=trick)
