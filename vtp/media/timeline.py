"""The output timeline every rendition shares: where its frames and its sound sit.

Players switch renditions segment by segment and play one sound track beside whichever
picture they show, so three things must hold in every encode, whole or chunked:

* **One frame grid.** Output frame k is presented at k / rate, from 0, whatever the source's
  own timing. A variable-frame-rate source (phones) is mapped onto the grid frame by frame:
  the `fps` filter gives output frame k the source frame shown at k / rate (rounded to the
  nearest grid point), so no frame is more than half an output frame from its source time.
  `-r` with `-fps_mode cfr` does not: it lets frames drift by up to two output frames
  before it duplicates or drops one, which is sound leading picture by 100 ms and more.
* **Chunks on that grid.** A chunk [start, end) holds exactly the grid frames
  round(start * rate) .. round(end * rate) - 1, wherever the source's frames fall (29.97 fps
  puts no frame on a 48 s boundary); the join checks exactly that (vtp.media.join).
* **Picture and sound start together, at 0.** Every encode reads time on one clock: the
  file's own (`CLOCK_ARGS`; left to itself, ffmpeg counts from a start that depends on the
  streams an encode maps, so a sound encoded alone would lose its offset to the picture).
  The picture's first frame is the origin (SourceInfo.picture_origin): both tracks move by
  it, the picture's first grid frame is at 0,
  and the sound is padded or trimmed to start at 0, which keeps an offset the source itself
  has between its tracks (an MPEG-TS whose sound starts 40 ms after its picture). The
  B-frame delay is put in an edit list's media time, not an empty edit
  (`-avoid_negative_ts disabled`): a player presents the first frame at 0, as it presents
  the first AAC sample after the encoder's priming.
"""

from __future__ import annotations

import math
from fractions import Fraction

# Timestamps as the file has them, in every encode, whole or from a seek. The cost: ffmpeg
# no longer smooths an MPEG-TS clock that jumps mid-file (a capture across a programme
# change); such a jump is kept, as silence and a held frame.
CLOCK_ARGS = ["-copyts"]

# How far before a chunk's start its decode begins: the frame shown at the chunk's first
# grid point may be a source frame from before the start (a variable-rate source's frame
# can last 100 ms and more). The decoder starts from the keyframe before anyway; this only
# runs a second more through the deinterlacer.
CHUNK_PREROLL_S = 1.0

# A source's picture may stop a little before its declared duration (its last frame's own
# duration unknown, the sound running on by a few frames): its last frame is held up to
# this long, so the last chunk holds the grid's frames up to the duration, as the plan
# and the join count them (`-t`, `-frames:v` end it exactly there). No longer: a truncated
# upload must come out short, and be refused as such.
END_HOLD_S = 0.5

# Sound: fill gaps with silence and trim overlaps (async=1: never stretch), from time 0. A
# broadcast capture loses packets; a source whose sound starts after its picture keeps the
# offset as silence, so lips stay on the sound.
AUDIO_TIMING_FILTER = "aresample=async=1:first_pts=0"


def frame_rate(fps: float) -> Fraction:
    """A rendition's constant frame rate, exactly (29.97002997 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


def grid_frame(seconds: float, rate: Fraction) -> int:
    """The grid frame a time belongs to: the nearest one (frame k covers k/rate +- half a
    frame). A chunk [start, end) holds the frames grid_frame(start) .. grid_frame(end) - 1."""
    return math.floor(seconds * rate + Fraction(1, 2))


def chunk_frames(start_s: float, end_s: float, rate: Fraction) -> int:
    """How many grid frames the part [start_s, end_s) of the source holds."""
    return grid_frame(end_s, rate) - grid_frame(start_s, rate)


def chunk_seek(start_s: float, origin_s: float = 0.0) -> float:
    """Where, on the file's clock (`-ss` before the input: from its first timestamp), a chunk
    starting at `start_s` on the output's begins to decode: a preroll before its start."""
    return round(max(0.0, origin_s + start_s - CHUNK_PREROLL_S), 3)


def audio_timing_filter(origin_s: float = 0.0) -> str:
    """The sound on the output's timeline: moved with the picture's origin (on the file's
    clock), then padded or trimmed to start at 0 (AUDIO_TIMING_FILTER)."""
    move = f"asetpts=PTS{-origin_s:+.6f}/TB," if origin_s else ""
    return move + AUDIO_TIMING_FILTER


def video_timing_filter(rate: Fraction, *, start_s: float = 0.0, origin_s: float = 0.0) -> str:
    """The filters that put frames on the grid, for an encode of the source from `start_s`
    (on the output timeline), read on the file's clock (`CLOCK_ARGS`), where the picture
    starts at `origin_s` (SourceInfo.picture_origin).

    Time is put on the output's timeline (-origin), the `fps` filter picks the frame for
    each grid point from the first one at or after `start_s` (its `start_time`, in whole
    frames, pads by holding the first frame if the source starts later), then the
    encode's own timestamps restart at 0, so every chunk's init segment and edit list are
    byte for byte the first chunk's; vtp.media.fmp4 moves its fragments to their place."""
    first = grid_frame(start_s, rate)
    origin = Fraction(first) / rate
    shift = f"setpts=PTS{-origin_s:+.6f}/TB," if origin_s else ""
    return (
        f"{shift}tpad=stop_mode=clone:stop_duration={END_HOLD_S:g},fps=fps={rate.numerator}/{rate.denominator}"
        f":start_time={float(origin):.9f}:round=near,setpts=PTS-STARTPTS"
    )
