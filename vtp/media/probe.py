"""Look at an uploaded source with ffprobe and decide whether we accept it.

Everything the rest of the pipeline assumes about a source is checked here, once, before any
job rows or transcodes exist: it is a container we accept, it has a real video stream (not just
cover art), a known positive duration, and it is within the size, duration, pixel and frame
rate limits. Rejections are `InvalidSource` with a reason a user can act on; failures to reach
the object are `StorageError` (worth retrying), anything else `FfmpegError`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from fractions import Fraction
from typing import Any

import langcodes

from vtp.errors import FfmpegError, FfmpegTimeout, InvalidSource, StorageError
from vtp.media import colour
from vtp.media.ffmpeg import FORMAT_WHITELIST, run_ffprobe, untrusted_input
from vtp.models import AudioTrack, SourceInfo, TextTrack
from vtp.settings import Settings

log = logging.getLogger(__name__)

# The smallest side a source may have: one H.264 macroblock. Below it the ladder has no rung to
# make (a 1x1 upload planned nothing and failed before anything was recorded).
MIN_SIDE = 16

_NOT_ON_WHITELIST = re.compile(r"\[(?P<fmt>[\w,]+)\] Format not on whitelist")
_PROTOCOL_REFUSED = re.compile(r"Protocol '(?P<proto>[^']+)' not on whitelist")
_UNREADABLE = (
    "Invalid data found when processing input",
    "moov atom not found",
    "could not find codec parameters",
    "Unsafe file name",
    "EBML header parsing failed",
    "Not a valid",
)
_UNREACHABLE = (
    "Server returned",
    "Connection refused",
    "Connection timed out",
    "Operation timed out",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
    "Network is unreachable",
    "Input/output error",
)


def probe_source(url: str, settings: Settings, *, size_bytes: int | None = None) -> SourceInfo:
    """Probe `url` (a presigned http(s) URL) and return what transcoding needs to know.

    `size_bytes` is the object size from storage, when known: an over-size object is refused
    before ffprobe opens it at all.
    """
    if size_bytes is not None:
        _check_size(size_bytes, settings)
    args = [
        "-v",
        "error",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        *untrusted_input(url),
    ]
    result = run_ffprobe(args, timeout=settings.ffprobe_timeout_seconds, check=False)
    if result.returncode != 0:
        raise _failure(result.stderr_tail)
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise InvalidSource("not a media file: ffprobe produced no readable description") from None
    if not isinstance(data, dict):
        raise InvalidSource("not a media file: ffprobe produced no readable description")
    scanned = None
    if _declared_duration(data) is None and _has_streams(data):
        scanned = scan_duration(url, settings)
        data = data | {"format": (data.get("format") or {}) | {"duration": str(scanned)}}
    info = source_info_from_probe(data, settings, size_bytes=size_bytes)
    if scanned is not None:
        info = info.model_copy(update={"seekable": False})
    if info.dynamic_range != "sdr":
        info = info.model_copy(update=hdr_metadata(url, settings, _first_video(data)))
    log.info(
        "source ok: %dx%d %.3f fps %.2fs %s/%s audio=%s",
        info.width,
        info.height,
        info.fps,
        info.duration,
        info.format_name,
        info.video_codec,
        info.audio_codec,
    )
    return info


def _declared_duration(data: dict[str, Any]) -> float | None:
    """The duration the header declares: the format's, else the first video stream's."""
    fmt = data.get("format") or {}
    streams = [s for s in data.get("streams") or [] if isinstance(s, dict)]
    video = next((s for s in streams if s.get("codec_type") == "video"), {})
    duration = _float(fmt.get("duration")) or _float(video.get("duration"))
    return duration if duration is not None and duration > 0 else None


def _has_streams(data: dict[str, Any]) -> bool:
    return any(isinstance(s, dict) and s.get("codec_type") in ("video", "audio")
               for s in data.get("streams") or [])  # fmt: skip


def _first_video(data: dict[str, Any]) -> dict[str, Any]:
    streams = [s for s in data.get("streams") or [] if isinstance(s, dict)]
    return next((s for s in streams if s.get("codec_type") == "video"), {})


def hdr_metadata(url: str, settings: Settings, stream: dict[str, Any]) -> dict[str, str]:
    """An HDR picture's static metadata in x265's notation (`mastering_display`,
    `content_light`, each only when present and sane): from the container (`mdcv`, `clli`:
    the stream's side data), else from its first frame's (HEVC's SEI messages, which
    ffprobe shows on frames, not on the stream)."""
    sides = list(stream.get("side_data_list") or [])
    kinds = {str(s.get("side_data_type", "")) for s in sides if isinstance(s, dict)}
    if not {"Mastering display metadata", "Content light level metadata"} <= kinds:
        args = ["-v", "error", "-select_streams", "V:0", "-read_intervals", "%+#1",
                "-show_frames", "-show_entries", "frame=side_data_list", "-of", "json",
                *untrusted_input(url)]  # fmt: skip
        result = run_ffprobe(args, timeout=settings.ffprobe_timeout_seconds, check=False)
        try:
            frames = json.loads(result.stdout or b"{}").get("frames") or []
        except (ValueError, AttributeError):
            frames = []
        sides += (frames[0].get("side_data_list") or []) if frames else []
    found: dict[str, str] = {}
    for side in sides:
        if not isinstance(side, dict):
            continue
        kind = str(side.get("side_data_type", ""))
        if kind == "Mastering display metadata" and "mastering_display" not in found:
            display = _mastering_display(side)
            if display:
                found["mastering_display"] = display
        elif kind == "Content light level metadata" and "content_light" not in found:
            cll, fall = _int(side.get("max_content")), _int(side.get("max_average"))
            if cll is not None and fall is not None and 0 <= fall <= cll <= 10_000:
                found["content_light"] = f"{cll},{fall}"
    return found


def _mastering_display(side: dict[str, Any]) -> str | None:
    """SMPTE ST 2086 as x265 wants it: chromaticities in 0.00002 units, luminance in
    0.0001 cd/m2 (the units HEVC's SEI stores them in)."""
    try:
        xy = {k: Fraction(str(side[k])) for k in (
            "green_x", "green_y", "blue_x", "blue_y", "red_x", "red_y",
            "white_point_x", "white_point_y")}  # fmt: skip
        top, bottom = Fraction(str(side["max_luminance"])), Fraction(str(side["min_luminance"]))
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    if not all(0 <= v <= 1 for v in xy.values()) or not 0 <= bottom < top <= 10_000:
        return None

    def c(name: str) -> int:
        return round(xy[name] * 50_000)

    return (f"G({c('green_x')},{c('green_y')})B({c('blue_x')},{c('blue_y')})"
            f"R({c('red_x')},{c('red_y')})WP({c('white_point_x')},{c('white_point_y')})"
            f"L({round(top * 10_000)},{round(bottom * 10_000)})")  # fmt: skip


def scan_duration(url: str, settings: Settings) -> float:
    """The duration of a source whose header does not declare one, from its packets: the
    end of the last one (its time plus its duration) after the first's start. A browser's
    MediaRecorder writes WebM as it records, so it never goes back to write a Duration
    or Cues; reading the file through is the only way to know its length. Bounded by
    `duration_scan_timeout_seconds` (the size was bounded before it was opened)."""
    args = ["-v", "error", "-show_entries", "packet=pts_time,duration_time",
            "-of", "csv=p=0", *untrusted_input(url)]  # fmt: skip
    try:
        result = run_ffprobe(args, timeout=settings.duration_scan_timeout_seconds)
    except FfmpegTimeout as exc:
        raise InvalidSource(
            "the file declares no duration, and reading it through to find one took "
            f"longer than {settings.duration_scan_timeout_seconds:g}s"
        ) from exc
    first: float | None = None
    end = 0.0
    for line in result.stdout.decode(errors="replace").splitlines():
        fields = line.split(",")
        pts = _float(fields[0]) if fields else None
        if pts is None:
            continue
        length = (_float(fields[1]) if len(fields) > 1 else None) or 0.0
        first = pts if first is None else min(first, pts)
        end = max(end, pts + length)
    if first is None or end - first <= 0:
        raise InvalidSource("the file declares no duration and holds no timed packet")
    log.info("no duration declared; read through: %.3fs", end - first)
    return round(end - first, 6)


def source_info_from_probe(
    data: dict[str, Any], settings: Settings, *, size_bytes: int | None = None
) -> SourceInfo:
    """Validate ffprobe's `-show_format -show_streams` JSON and turn it into a SourceInfo."""
    streams = [s for s in data.get("streams") or [] if isinstance(s, dict)]
    fmt = data.get("format") or {}
    if not streams and not fmt:
        raise InvalidSource("not a media file: no streams found")

    audio = [s for s in streams if s.get("codec_type") == "audio"]
    all_video = [s for s in streams if s.get("codec_type") == "video"]
    # Cover art, thumbnails and still images are "video" streams of one frame: not a video.
    video = [s for s in all_video if not _is_still(s)]
    if not video:
        if audio:
            # A voice memo, a podcast, a song with its cover art: a job of sound alone.
            return _audio_only(audio, fmt, settings, size_bytes)
        if all_video:
            raise InvalidSource("the file only contains a still picture, no video or sound")
        raise InvalidSource("the file has no video or sound stream")
    stream = video[0]  # the same stream `-map 0:V:0` picks when encoding

    codec = stream.get("codec_name")
    if not codec:
        raise InvalidSource("the video stream uses a codec ffmpeg cannot decode")
    coded_w, coded_h = _int(stream.get("width")), _int(stream.get("height"))
    if not coded_w or not coded_h or coded_w <= 0 or coded_h <= 0:
        raise InvalidSource("the video stream has no picture size")
    if min(coded_w, coded_h) < MIN_SIDE:
        raise InvalidSource(
            f"the video is {coded_w}x{coded_h}: too small to encode (H.264 renditions need at "
            f"least {MIN_SIDE} pixels a side)"
        )
    if coded_w * coded_h > settings.max_pixels:
        raise InvalidSource(
            f"the video is {coded_w}x{coded_h}, more than the {settings.max_pixels} pixels "
            "allowed per frame"
        )

    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    if fps is None:
        raise InvalidSource("the video has no known frame rate")
    if fps > settings.max_fps:
        raise InvalidSource(
            f"the video runs at {fps:.2f} fps, more than the {settings.max_fps:g} fps allowed"
        )

    duration = _checked_duration(_float(fmt.get("duration")) or _float(stream.get("duration")),
                                 settings)  # fmt: skip
    size = size_bytes if size_bytes is not None else _int(fmt.get("size"))
    if size is not None:
        _check_size(size, settings)

    rotation = _rotation(stream)
    width, height = _display_size(coded_w, coded_h, stream.get("sample_aspect_ratio"), rotation)

    return SourceInfo(
        duration=duration,
        width=width,
        height=height,
        fps=fps,
        has_audio=bool(audio),
        video_codec=str(codec),
        audio_codec=str(audio[0].get("codec_name") or "unknown") if audio else None,
        format_name=str(fmt.get("format_name") or ""),
        size_bytes=size,
        bit_rate=_int(fmt.get("bit_rate")),
        rotation=rotation,
        video_bit_rate=video_bit_rate(stream, audio, fmt, size, duration),
        video_start=_video_start(stream, fmt),
        start_time=_float(fmt.get("start_time")) or 0.0,
        variable_frame_rate=_variable(stream, fps),
        color_primaries=_tag(stream.get("color_primaries")),
        color_transfer=_tag(stream.get("color_transfer")),
        color_matrix=_tag(stream.get("color_space")),
        dynamic_range=colour.dynamic_range(_tag(stream.get("color_transfer"))),
        audio_tracks=[_audio_track(i, a) for i, a in enumerate(audio)],
        text_tracks=[
            _text_track(i, t)
            for i, t in enumerate(s for s in streams if s.get("codec_type") == "subtitle")
        ],
    )


def _checked_duration(duration: float | None, settings: Settings) -> float:
    if duration is None or duration <= 0:
        raise InvalidSource("the file has no known duration (empty or a live stream?)")
    if duration > settings.max_duration_seconds:
        raise InvalidSource(
            f"the file lasts {duration:.0f}s, longer than the "
            f"{settings.max_duration_seconds:.0f}s allowed"
        )
    return duration


def _audio_only(
    audio: list[dict[str, Any]], fmt: dict[str, Any], settings: Settings, size_bytes: int | None
) -> SourceInfo:
    """A source of sound alone (any picture in it a still: cover art)."""
    duration = _checked_duration(_float(fmt.get("duration")) or _float(audio[0].get("duration")),
                                 settings)  # fmt: skip
    size = size_bytes if size_bytes is not None else _int(fmt.get("size"))
    if size is not None:
        _check_size(size, settings)
    return SourceInfo(
        duration=duration,
        width=0,
        height=0,
        fps=0,
        has_video=False,
        has_audio=True,
        video_codec="",
        audio_codec=str(audio[0].get("codec_name") or "unknown"),
        format_name=str(fmt.get("format_name") or ""),
        size_bytes=size,
        bit_rate=_int(fmt.get("bit_rate")),
        audio_tracks=[_audio_track(i, a) for i, a in enumerate(audio)],
        # Sound alone: its time 0 is the sound's own start.
        start_time=_float(audio[0].get("start_time")) or _float(fmt.get("start_time")) or 0.0,
    )


def _variable(stream: dict[str, Any], average: float) -> bool:
    """Whether the frames come at varying intervals: the stream's base rate (the rate all
    its timestamps fit) is not its average. A WebM's millisecond clock or a phone's 600
    ticks a second give base rates like 1000 or 120 against an average near 30."""
    base = _rate(stream.get("r_frame_rate"))
    return base is not None and abs(base - average) > 0.015 * average


def _tag(value: object) -> str | None:
    """A colour tag as ffprobe names it; None for an absent or "unknown" one."""
    text = str(value or "").strip().lower()
    return text if text and text not in ("unknown", "reserved", "unspecified") else None


def _video_start(stream: dict[str, Any], fmt: dict[str, Any]) -> float:
    """How long after the file's first timestamp its picture starts (an MPEG-TS capture whose
    sound begins 40 ms before its first frame); 0 when either is unknown. Capped at a minute:
    a larger gap is a broken timestamp, not a source to pad."""
    first, start = _float(stream.get("start_time")), _float(fmt.get("start_time"))
    if first is None or start is None:
        return 0.0
    return round(min(max(first - start, 0.0), 60.0), 6)


# Subtitle codecs ffmpeg can turn into WebVTT: text with timing. The others are pictures
# (Blu-ray PGS, DVD and DVB bitmaps), which would need OCR.
TEXT_SUBTITLE_CODECS = frozenset(
    {"subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text", "microdvd", "subviewer",
     "subviewer1", "jacosub", "sami", "realtext", "mpl2", "pjs", "stl", "vplayer"}
)  # fmt: skip


def language_tag(raw: object) -> str | None:
    """A stream's language tag as BCP 47, which HLS's LANGUAGE and DASH's `lang` want:
    containers store ISO 639-2 (`eng`, `fre`), players expect `en`, `fr`. None for an
    absent, undetermined (`und`) or unreadable tag: no language is better than a wrong one."""
    text = str(raw or "").strip()
    if not text or len(text) > 35:
        return None
    try:
        tag = str(langcodes.standardize_tag(text))
    except (ValueError, langcodes.tag_parser.LanguageTagError):
        return None
    if tag in ("und", "zxx", "mul", "mis") or not langcodes.tag_is_valid(tag):
        return None
    return tag if _SAFE_TAG.fullmatch(tag) else None


_SAFE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")


def display_title(raw: object) -> str | None:
    """A track title fit for a player's menu and a playlist's quoted attribute: printable,
    without quotes, at most 64 characters (a title is the uploader's text, not ours)."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(raw or ""))
    text = " ".join(text.replace('"', "'").split())[:64].strip()
    return text or None


def _tags(stream: dict[str, Any]) -> dict[str, Any]:
    tags = stream.get("tags")
    return {str(k).lower(): v for k, v in tags.items()} if isinstance(tags, dict) else {}


def _disposition(stream: dict[str, Any], name: str) -> bool:
    flags = stream.get("disposition")
    return isinstance(flags, dict) and bool(_int(flags.get(name)))


def _audio_track(index: int, stream: dict[str, Any]) -> AudioTrack:
    tags = _tags(stream)
    channels = _int(stream.get("channels"))
    return AudioTrack(
        index=index,
        codec=str(stream.get("codec_name") or "unknown"),
        channels=channels if channels and channels > 0 else None,
        language=language_tag(tags.get("language")),
        title=_track_title(tags),
        default=_disposition(stream, "default"),
    )


# Handler names tools write when nobody named the track: not a title.
_GENERIC_HANDLER = re.compile(
    r"handler|core media|iso media|^\s*(sound|audio|video|text)\s*$", re.I
)


def _track_title(tags: dict[str, Any]) -> str | None:
    """A track's name: Matroska's `title`; MP4 keeps it as the track's handler name, unless
    that is a tool's generic one (`SoundHandler`, `Core Media Audio`)."""
    handler = str(tags.get("handler_name") or "")
    named = handler if handler and not _GENERIC_HANDLER.search(handler) else None
    return display_title(tags.get("title") or named)


def _text_track(index: int, stream: dict[str, Any]) -> TextTrack:
    tags = _tags(stream)
    codec = str(stream.get("codec_name") or "unknown")
    return TextTrack(
        index=index,
        codec=codec,
        language=language_tag(tags.get("language")),
        title=_track_title(tags),
        default=_disposition(stream, "default"),
        forced=_disposition(stream, "forced"),
        text=codec in TEXT_SUBTITLE_CODECS,
    )


# What an audio stream whose bit rate the file does not give is assumed to take.
_ASSUMED_AUDIO_BITRATE = 128_000


def video_bit_rate(
    stream: dict[str, Any],
    audio: list[dict[str, Any]],
    fmt: dict[str, Any],
    size: int | None,
    duration: float,
) -> int | None:
    """The source's video bit rate: the whole file's (its bytes over its duration, the
    figure a header cannot inflate without the bytes to back it) less its sound's, else the
    stream's own figure (MP4 states it; Matroska and WebM do not); None when neither is
    known. It caps the renditions' bit rates, so an overestimate only loosens the cap."""
    total = round(size * 8 / duration) if size and duration > 0 else _int(fmt.get("bit_rate"))
    if total is not None and total > 0:
        sound = sum(_int(a.get("bit_rate")) or _ASSUMED_AUDIO_BITRATE for a in audio)
        return max(total - sound, total // 10)
    declared = _int(stream.get("bit_rate"))
    return declared if declared and declared > 0 else None


def _failure(stderr_tail: str) -> Exception:
    """Map a failed ffprobe run to the exception that says whose fault it is."""
    if match := _NOT_ON_WHITELIST.search(stderr_tail):
        name = match.group("fmt").split(",")[0]
        allowed = FORMAT_WHITELIST.replace(",", ", ")
        return InvalidSource(
            f"the file is in the '{name}' format, which is not accepted (allowed: {allowed})"
        )
    if match := _PROTOCOL_REFUSED.search(stderr_tail):
        return InvalidSource(
            f"the file refers to other resources ({match.group('proto')}:), which is not allowed"
        )
    if any(marker in stderr_tail for marker in _UNREADABLE):
        return InvalidSource("not a media file, or a damaged one: ffprobe could not read it")
    if any(marker in stderr_tail for marker in _UNREACHABLE):
        return StorageError(f"could not read the source: {stderr_tail}")
    return FfmpegError(f"ffprobe failed: {stderr_tail or 'no error output'}")


def _check_size(size: int, settings: Settings) -> None:
    if size > settings.max_source_bytes:
        raise InvalidSource(
            f"the file is {size} bytes, more than the {settings.max_source_bytes} bytes allowed"
        )
    if size == 0:
        raise InvalidSource("the file is empty")


def _is_still(stream: dict[str, Any]) -> bool:
    disposition = stream.get("disposition") or {}
    return bool(
        disposition.get("attached_pic")
        or disposition.get("timed_thumbnails")
        or disposition.get("still_image")
    )


def _rotation(stream: dict[str, Any]) -> int:
    """Clockwise rotation a player applies, in degrees: 0, 90, 180 or 270.

    ffprobe reports the display matrix's angle counter-clockwise ("rotation" in side data);
    older files and tools use a clockwise "rotate" tag instead. Only right angles exist in
    practice; anything else is rounded to the nearest one.
    """
    degrees: float | None = None
    for side in stream.get("side_data_list") or []:
        if isinstance(side, dict) and _float(side.get("rotation")) is not None:
            degrees = -float(side["rotation"])
            break
    if degrees is None:
        degrees = _float((stream.get("tags") or {}).get("rotate"))
    if degrees is None:
        return 0
    return (round(degrees / 90) * 90) % 360


def _display_size(width: int, height: int, sample_aspect: object, rotation: int) -> tuple[int, int]:
    """Size as shown: non-square pixels stretched horizontally, then rotated."""
    sar = _ratio(sample_aspect)
    if sar is not None and sar > 0 and sar != 1:
        width = max(1, round(width * sar))
    if rotation % 180 == 90:
        width, height = height, width
    return width, height


def _ratio(value: object) -> Fraction | None:
    """'16:15' or '30000/1001' as a Fraction; None for 0, 'N/A', '0/0' and garbage."""
    if not isinstance(value, str):
        return None
    num, sep, den = value.replace(":", "/").partition("/")
    try:
        ratio = Fraction(int(num), int(den)) if sep else Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None
    return ratio if ratio > 0 else None


def _rate(value: object) -> float | None:
    ratio = _ratio(value)
    return float(ratio) if ratio is not None else None


def _float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: object) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None
