"""Segment-parallel encoding, planned: which part of the source each chunk of a rendition
encodes. Pure, no I/O.

A chunk is a run of whole segments on the keyframe grid every rendition shares (segments of
`segment_seconds`, keyframes every `gop_seconds`), so a chunk starts where a segment starts,
its first segment keeps its number in the rendition (`first_segment`), and joining chunks
is listing their segments in order. The last chunk absorbs a tail shorter than half a chunk
(a 2-second chunk after 48-second ones would cost a call and an encoder start for nothing).
A source no longer than the threshold stays one task, encoded whole.
"""

from __future__ import annotations

import math
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

# Float seconds from a probe: a duration within this of a boundary is on it.
_EPS = 1e-6


class ChunkRange(BaseModel):
    """The part of the source one chunk encodes: [start_s, end_s), and the number of its
    first segment in the rendition's playlist (1 for the first chunk)."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    start_s: float = Field(ge=0)
    end_s: float
    first_segment: int = Field(ge=1)

    @model_validator(mode="after")
    def _not_empty(self) -> ChunkRange:
        if self.end_s <= self.start_s:
            raise ValueError(f"chunk {self.index} is empty ({self.start_s:g}-{self.end_s:g}s)")
        return self

    @property
    def duration(self) -> float:
        return self.end_s - self.start_s

    @classmethod
    def on_grid(cls, index: int, start_s: float, end_s: float, segment_s: float) -> ChunkRange:
        """The chunk [start_s, end_s) of a rendition cut in `segment_s` segments: its first
        segment's number follows from where it starts."""
        first = round(start_s / segment_s) + 1
        return cls(index=index, start_s=start_s, end_s=end_s, first_segment=first)


def plan_chunks(
    duration: float, *, segment_s: float, chunk_s: float, threshold_s: float
) -> list[ChunkRange]:
    """The chunks of a rendition of a `duration`-second source; [] when it is encoded whole
    (no longer than `threshold_s`, or too short for two chunks)."""
    if segment_s <= 0 or chunk_s < segment_s:
        raise ValueError("a chunk is at least one segment long")
    per_chunk = round(chunk_s / segment_s)
    if abs(per_chunk * segment_s - chunk_s) > _EPS:
        raise ValueError(f"chunk length {chunk_s:g}s is not a whole number of segments")
    if duration <= threshold_s or duration <= 0:
        return []
    count = math.floor(duration / chunk_s + _EPS)  # full chunks
    # What is left after them: its own chunk if at least half a chunk long, else the last
    # full chunk's.
    if duration - count * chunk_s >= chunk_s / 2 - _EPS:
        count += 1
    if count < 2:
        return []
    chunks = []
    for i in range(count):
        first = i * per_chunk
        start = first * segment_s
        end = duration if i == count - 1 else min(duration, (first + per_chunk) * segment_s)
        chunks.append(ChunkRange.on_grid(i, start, end, segment_s))
    return chunks


# What a second of source costs a single-threaded encoder, roughly, from the figures of
# bench/chunked_encoding.py (x264, 1080p25 source): decoding the source is paid by every
# rendition, then about a quarter second per output megapixel; sound alone is cheap.
_DECODE_S_PER_S = 0.2
_ENCODE_S_PER_MPX_S = 0.25
_AUDIO_S_PER_S = 0.1


def estimated_cost(seconds: float, *, width: int, height: int, audio_only: bool) -> float:
    """Encoder seconds one task is expected to take, to order the dispatch (not a promise)."""
    if audio_only:
        return seconds * _AUDIO_S_PER_S
    return seconds * (_DECODE_S_PER_S + _ENCODE_S_PER_MPX_S * width * height / 1e6)


def longest_first(tasks: list[tuple[float, T]]) -> list[T]:
    """Tasks by expected cost, the costliest first (Graham's LPT rule): the queue hands them
    out in order, so a long task dispatched last would start when the others are nearly done
    and end long after them. With chunks, the sound (one task over the whole source) is
    often the longest: a 10-minute film's takes about three 48-second 1080p chunks. Ties
    keep their order (chunks in sequence, so playback can start early)."""
    return [t for _, t in sorted(tasks, key=lambda ct: -ct[0])]
