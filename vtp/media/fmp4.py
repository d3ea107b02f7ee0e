"""The few ISO BMFF (fragmented MP4) facts that joining chunks needs, read and written in
place: the track's timescale (init segment) and each fragment's base media decode time.

Why patch `tfdt` at all: ffmpeg's mp4 muxer starts every output's decode times at zero and
puts an offset such as `-output_ts_offset` in the init segment's edit list instead. A chunk
encoded from second 48 would then carry segments that say "I start at 0", and an init that
differs from its siblings'. Encoded without an offset, every chunk's init segment is byte
for byte the one the first chunk writes (checked when joining), and adding the chunk's start
(in the track's timescale) to each `tfdt` puts its segments where they belong on the
rendition's timeline, exactly as an encode of the whole source would have written them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from vtp.errors import FfmpegError


def _boxes(
    data: bytes | bytearray, start: int = 0, end: int | None = None
) -> Iterator[tuple[str, int, int]]:
    """(type, payload start, box end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise FfmpegError(f"malformed MP4 box {kind!r} at byte {at}")
        yield kind.decode("latin-1"), at + header, at + size
        at += size


def _spans(data: bytes | bytearray, path: list[str], start: int = 0, end: int | None = None
           ) -> Iterator[tuple[int, int]]:  # fmt: skip
    """(payload start, box end) of the boxes at `path` (e.g. moof/traf/tfdt)."""
    for kind, body, stop in _boxes(data, start, end):
        if kind == path[0]:
            if len(path) == 1:
                yield body, stop
            else:
                yield from _spans(data, path[1:], body, stop)


def _find(data: bytes | bytearray, path: list[str], start: int = 0, end: int | None = None
          ) -> Iterator[int]:  # fmt: skip
    """Payload starts of the boxes at `path`."""
    for body, _ in _spans(data, path, start, end):
        yield body


def track_timescale(init: Path) -> int:
    """The media timescale of the (single) track of an init segment (moov/trak/mdia/mdhd)."""
    data = init.read_bytes()
    for body in _find(data, ["moov", "trak", "mdia", "mdhd"]):
        version = data[body]
        # version(1) flags(3), then creation and modification times: 4 bytes each in
        # version 0, 8 in version 1; the timescale follows.
        (scale,) = struct.unpack_from(">I", data, body + 4 + (16 if version == 1 else 8))
        return int(scale)
    raise FfmpegError(f"{init.name} has no track timescale")


def decode_times(segment: Path) -> list[int]:
    """The base media decode time of each fragment of a media segment."""
    data = segment.read_bytes()
    times = []
    for body in _find(data, ["moof", "traf", "tfdt"]):
        version = data[body]
        fmt = ">Q" if version == 1 else ">I"
        times.append(int(struct.unpack_from(fmt, data, body + 4)[0]))
    return times


def shift_decode_times(segment: Path, ticks: int) -> None:
    """Add `ticks` to every fragment's base media decode time, in place. ffmpeg writes
    version-1 (64-bit) tfdt boxes; a version-0 one is refused rather than overflowed."""
    data = bytearray(segment.read_bytes())
    found = False
    for body in _find(data, ["moof", "traf", "tfdt"]):
        if data[body] != 1:
            raise FfmpegError(f"{segment.name}: a 32-bit tfdt cannot be moved safely")
        (value,) = struct.unpack_from(">Q", data, body + 4)
        struct.pack_into(">Q", data, body + 4, value + ticks)
        found = True
    if not found:
        raise FfmpegError(f"{segment.name} has no fragment to move")
    segment.write_bytes(bytes(data))


# trun flags (ISO/IEC 14496-12 8.8.8) and the sample flag of a non-keyframe.
_TRUN_DATA_OFFSET = 0x001
_TRUN_FIRST_SAMPLE_FLAGS = 0x004
_TRUN_SAMPLE_DURATION = 0x100
_TRUN_SAMPLE_SIZE = 0x200
_TRUN_SAMPLE_FLAGS = 0x400
_TRUN_SAMPLE_CTO = 0x800
_TFHD_DEFAULT_SAMPLE_FLAGS = 0x20
_NON_SYNC = 0x00010000


def fragments(segment: Path) -> list[tuple[int, int, bool]]:
    """(base decode time, sample count, first sample is a keyframe) of each fragment."""
    return _fragments(segment.read_bytes())


def _fragments(data: bytes) -> list[tuple[int, int, bool]]:
    out = []
    for traf_kind, traf, traf_end in _boxes(data):
        if traf_kind != "moof":
            continue
        for kind, body, stop in _boxes(data, traf, traf_end):
            if kind != "traf":
                continue
            base, count, default_flags, first_flags = 0, 0, 0, None
            for sub, sbody, _ in _boxes(data, body, stop):
                version_flags = struct.unpack_from(">I", data, sbody)[0]
                flags = version_flags & 0xFFFFFF
                if sub == "tfhd":
                    at = sbody + 8  # version/flags, track_ID
                    for bit, width in ((0x01, 8), (0x02, 4), (0x08, 4), (0x10, 4)):
                        if flags & bit:
                            at += width
                    if flags & _TFHD_DEFAULT_SAMPLE_FLAGS:
                        default_flags = struct.unpack_from(">I", data, at)[0]
                elif sub == "tfdt":
                    fmt = ">Q" if data[sbody] == 1 else ">I"
                    base = int(struct.unpack_from(fmt, data, sbody + 4)[0])
                elif sub == "trun":
                    (samples,) = struct.unpack_from(">I", data, sbody + 4)
                    count += samples
                    at = sbody + 8 + (4 if flags & _TRUN_DATA_OFFSET else 0)
                    if first_flags is None and flags & _TRUN_FIRST_SAMPLE_FLAGS:
                        first_flags = struct.unpack_from(">I", data, at)[0]
                    elif first_flags is None and flags & _TRUN_SAMPLE_FLAGS and samples:
                        at += 4 * bool(flags & _TRUN_FIRST_SAMPLE_FLAGS)
                        at += 4 * bool(flags & _TRUN_SAMPLE_DURATION)
                        at += 4 * bool(flags & _TRUN_SAMPLE_SIZE)
                        first_flags = struct.unpack_from(">I", data, at)[0]
            flags_of_first = default_flags if first_flags is None else first_flags
            out.append((base, count, not flags_of_first & _NON_SYNC))
    return out


# Visual sample entries whose 32-byte compressorname ffmpeg fills with its encoder's name.
_VISUAL_ENTRIES = {"avc1", "avc3", "hvc1", "hev1"}
# Offset of compressorname in a visual sample entry's payload (ISO/IEC 14496-12 12.1.3):
# reserved(6) data_reference_index(2) pre_defined/reserved(16) width height(4)
# resolutions(8) reserved(4) frame_count(2).
_COMPRESSORNAME_AT = 42
# ...then compressorname(32), depth(2), pre_defined(2): the entry's boxes start here.
_VISUAL_ENTRY_FIELDS = _COMPRESSORNAME_AT + 32 + 4


def drop_build_marks(init: Path) -> None:
    """Remove from an init segment what only says which ffmpeg wrote it, in place.

    ffmpeg puts its library versions in two places: the sample entry's compressorname
    (`Lavc59.37.100 libx264`) and the movie's user data (`udta/meta/ilst/©too`,
    `Lavf59.27.100`). Two transcode images with different ffmpeg builds, as during a rolling
    update in the middle of a long job, would then write init segments that differ only
    there, and a rendition's chunks could not share one. Without them, the init depends on
    the codec configuration alone (avcC: what a decoder needs), which is what the join
    compares. The movie's user data is metadata no player needs; a fragmented init has no
    sample offsets, so dropping a box from moov moves nothing that is referred to.
    """
    data = bytearray(init.read_bytes())
    for kind, body, end in list(_boxes(data)):
        if kind != "moov":
            continue
        start = body - 8
        if struct.unpack_from(">I", data, start)[0] != end - start:
            raise FfmpegError(f"{init.name}: a moov box with a 64-bit size is not handled")
        for entry, entries_end in _spans(data, ["trak", "mdia", "minf", "stbl", "stsd"], body, end):
            # version/flags(4) and entry_count(4), then the sample entries
            for sub, sbody, _ in _boxes(data, entry + 8, entries_end):
                if sub in _VISUAL_ENTRIES:
                    at = sbody + _COMPRESSORNAME_AT
                    data[at : at + 32] = bytes(32)
        user = [(b - 8, e) for k, b, e in _boxes(data, body, end) if k == "udta"]
        for ustart, uend in reversed(user):
            del data[ustart:uend]
        removed = sum(e - s for s, e in user)
        struct.pack_into(">I", data, start, end - start - removed)
        break
    init.write_bytes(bytes(data))


# Boxes of a visual sample entry that describe HDR (ISO/IEC 23001-8 / ISO BMFF: mastering
# display and content light; QuickTime's spellings).
HDR_ENTRY_BOXES = frozenset({"mdcv", "clli", "SmDm", "CoLL"})


def hide_entry_boxes(path: Path, kinds: frozenset[str] = HDR_ENTRY_BOXES) -> int:
    """Turn the `kinds` boxes of a file's video sample entries into `free` boxes, in place
    (same size: nothing after them moves), and say how many. ffmpeg 5.1 copies an HDR
    source's mastering display and light levels onto any track it encodes from it, so an
    SDR rendition's progressive MP4 would otherwise tell a player it is HDR."""
    data = bytearray(path.read_bytes())
    hidden = 0
    for body, end in _spans(data, ["moov", "trak", "mdia", "minf", "stbl", "stsd"]):
        for sub, sbody, send in _boxes(data, body + 8, end):
            if sub not in _VISUAL_ENTRIES:
                continue
            # the visual sample entry's fixed fields, then its boxes
            for kind, kbody, _ in _boxes(data, sbody + _VISUAL_ENTRY_FIELDS, send):
                if kind in kinds:
                    data[kbody - 4 : kbody] = b"free"
                    hidden += 1
    if hidden:
        path.write_bytes(bytes(data))
    return hidden


_TFHD_BASE_DATA_OFFSET = 0x01
_TFHD_DEFAULT_SAMPLE_SIZE = 0x10


def keyframe_range(segment: Path) -> tuple[int, int]:
    """(offset, length) of the bytes from a segment's first `moof` to the end of its first
    sample: the movie fragment header and the keyframe it starts with, which is what an
    HLS I-frame playlist's EXT-X-BYTERANGE addresses (with the init segment, those bytes
    decode to that one picture). FfmpegError when the segment has no fragment, or the
    first sample is not a keyframe."""
    data = segment.read_bytes()
    for kind, body, end in _boxes(data):
        if kind != "moof":
            continue
        moof = body - 8
        for traf, stop in _spans(data, ["traf"], body, end):
            base, default_size, size = moof, None, None
            for sub, sbody, _ in _boxes(data, traf, stop):
                flags = struct.unpack_from(">I", data, sbody)[0] & 0xFFFFFF
                if sub == "tfhd":
                    at = sbody + 8  # version/flags, track_ID
                    if flags & _TFHD_BASE_DATA_OFFSET:
                        (base,) = struct.unpack_from(">Q", data, at)
                    for bit, width in ((0x01, 8), (0x02, 4), (0x08, 4)):
                        at += width if flags & bit else 0
                    if flags & _TFHD_DEFAULT_SAMPLE_SIZE:
                        (default_size,) = struct.unpack_from(">I", data, at)
                elif sub == "trun":
                    if not flags & _TRUN_DATA_OFFSET:
                        raise FfmpegError(f"{segment.name}: a trun without a data offset")
                    (offset,) = struct.unpack_from(">i", data, sbody + 8)
                    at = sbody + 12 + (4 if flags & _TRUN_FIRST_SAMPLE_FLAGS else 0)
                    at += 4 if flags & _TRUN_SAMPLE_DURATION else 0
                    if flags & _TRUN_SAMPLE_SIZE:
                        (size,) = struct.unpack_from(">I", data, at)
                    else:
                        size = default_size
                    if size is None:
                        raise FfmpegError(f"{segment.name}: the first sample has no size")
                    start = base + offset
                    if not _fragments(data)[0][2]:
                        raise FfmpegError(f"{segment.name} does not start with a keyframe")
                    return moof, start + size - moof
        break
    raise FfmpegError(f"{segment.name} holds no movie fragment")


def single_sample_fragment(data: bytes) -> bytes:
    """A keyframe's byte range (`keyframe_range`: a moof and the start of its mdat, up to
    the end of the first sample) made a complete fragment of that one sample: its trun
    counts one sample and its mdat ends where the bytes do. Init segment plus such
    fragments is a valid fragmented MP4 of those pictures alone (a storyboard's source)."""
    out = bytearray(data)
    boxes = list(_boxes(out, 0, _first_box_end(out)))
    if not boxes or boxes[0][0] != "moof":
        raise FfmpegError("a keyframe range must start with its moof")
    _, body, moof_end = boxes[0]
    for trun in _find(out, ["traf", "trun"], body, moof_end):
        struct.pack_into(">I", out, trun + 4, 1)  # sample_count: the entries after it stay
    if len(out) < moof_end + 8 or out[moof_end + 4 : moof_end + 8] != b"mdat":
        raise FfmpegError("a keyframe range must go on with its mdat")
    struct.pack_into(">I", out, moof_end, len(out) - moof_end)
    return bytes(out)


def _first_box_end(data: bytes | bytearray) -> int:
    (size,) = struct.unpack_from(">I", data, 0)
    return min(int(size), len(data))
