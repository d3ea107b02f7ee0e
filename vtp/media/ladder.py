"""Plan the adaptive-bitrate ladder for a source: which renditions, at what size and bitrate.

Rungs are named by their short side ("720p" is 1280x720 landscape, 720x1280 portrait). The
plan never upscales: rungs above the source are dropped, and when the source sits between
rungs, a rung at the source's own short side is added so the best rendition keeps all of the
source's detail (a 540p upload gets 360p and 540p, not 360p alone).

Which function encodes a rung: a rung named in `settings.default_renditions` is encoded by
`transcode-<name>`, the function deployed for it. Any other rung (the source-sized one, or a
known rung that is requested but not deployed by default) is encoded by the function of the
smallest default rung at or above its height: that function's memory and CPU limits were sized
for at least that many pixels. Above every default rung, the largest default's function is
used.

Rate control is by quality: each rendition is encoded at a constant-rate factor (`crf`,
chosen per title from samples by vtp.media.tuning, else `settings.default_crf`) under a VBV cap.
The cap is the per-resolution bit-rate model below, and never more than the source's own
video bit rate scaled to the rendition's pixels (by the same model's exponents) with a
margin: a 400 kbit/s upload is not re-encoded into 600 kbit/s of the same picture.

The model's bitrates follow a bits-per-pixel fit fitted to Apple's HLS authoring ladder for H.264
(about 3 Mbit/s at 720p30, 6 Mbit/s at 1080p30): bitrate grows with pixel count to the power
0.85 (small pictures need more bits per pixel), and with frame rate to the power 0.6 (frames at
60 fps are more alike than at 30 fps, so doubling the rate costs about 1.5x, not 2x).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import langcodes

from vtp.errors import InvalidRequest, InvalidSource
from vtp.media import colour
from vtp.media.codecs import CAP_FACTOR, crf_for
from vtp.models import AudioTrack, RenditionSpec, SourceInfo
from vtp.options import CaptionFile
from vtp.settings import Settings

log = logging.getLogger(__name__)

# Short side in pixels of each rung a client may ask for.
KNOWN_RUNGS: dict[str, int] = {
    "360p": 360,
    "480p": 480,
    "720p": 720,
    "1080p": 1080,
    "1440p": 1440,
    "2160p": 2160,
}

# Output frame rates above this are halved (120 -> 60, 100 -> 50): HLS players and H.264
# levels in common use stop at 60 fps, and halving keeps motion even (every other frame).
MAX_OUTPUT_FPS = 60.0

# Broadcast and camera frame rates, exact.
STANDARD_RATES: tuple[Fraction, ...] = tuple(
    Fraction(n, d)
    for n, d in (
        (24000, 1001),
        (24, 1),
        (25, 1),
        (30000, 1001),
        (30, 1),
        (48, 1),
        (50, 1),
        (60000, 1001),
        (60, 1),
    )
)

REFERENCE_PIXELS = 1280 * 720
REFERENCE_BITRATE = 3_000_000  # 720p at 30 fps
PIXEL_EXPONENT = 0.85
FPS_EXPONENT = 0.6
MIN_VIDEO_BITRATE = 100_000
BUFSIZE_FACTOR = 2  # VBV buffer: two seconds at the cap


class _Level(NamedTuple):
    name: str
    max_frame_mbs: int  # macroblocks per frame
    max_mbs_per_second: int
    max_kbps: int  # MaxBR for Main; High allows 1.25x
    max_cpb_kbits: int  # MaxCPB for Main; High allows 1.25x


# H.264 Annex A, table A-1 (levels 3 and up; smaller pictures still fit level 3.0).
_LEVELS: tuple[_Level, ...] = (
    _Level("3.0", 1620, 40_500, 10_000, 10_000),
    _Level("3.1", 3600, 108_000, 14_000, 14_000),
    _Level("3.2", 5120, 216_000, 20_000, 20_000),
    _Level("4.0", 8192, 245_760, 20_000, 25_000),
    _Level("4.1", 8192, 245_760, 50_000, 62_500),
    _Level("4.2", 8704, 522_240, 50_000, 62_500),
    _Level("5.0", 22_080, 589_824, 135_000, 135_000),
    _Level("5.1", 36_864, 983_040, 240_000, 240_000),
    _Level("5.2", 36_864, 2_073_600, 240_000, 240_000),
    _Level("6.0", 139_264, 4_177_920, 240_000, 240_000),
    _Level("6.1", 139_264, 8_355_840, 480_000, 480_000),
    _Level("6.2", 139_264, 16_711_680, 800_000, 800_000),
)
_HIGH_PROFILE_FACTOR = 1.25


def plan_ladder(
    source: SourceInfo, settings: Settings, requested: Sequence[str] | None = None
) -> list[RenditionSpec]:
    """The renditions to encode for `source`, smallest first.

    `requested` names rungs from KNOWN_RUNGS (default: `settings.default_renditions`).
    Raises InvalidRequest for unknown names or an empty request.
    """
    names = _validated(requested if requested is not None else settings.default_renditions)
    heights = sorted({KNOWN_RUNGS[n] for n in names})
    short = min(source.width, source.height)
    short_even = short - short % 2

    kept = [h for h in heights if h <= short]
    if short_even < heights[-1] and short_even >= 2 and short_even not in kept:
        kept.append(short_even)  # the source sits below the top rung: keep its own size
    kept.sort()

    fps = output_fps(source.fps, variable=source.variable_frame_rate)
    default_heights = sorted(
        KNOWN_RUNGS[n] for n in settings.default_renditions if n in KNOWN_RUNGS
    ) or sorted(KNOWN_RUNGS[n] for n in names)
    specs = [_spec(source, h, fps, default_heights, settings) for h in kept]
    log.info(
        "ladder for %dx%d@%.3f: %s",
        source.width,
        source.height,
        source.fps,
        ", ".join(
            f"{s.name}={s.width}x{s.height} crf {s.crf:g} cap {s.max_bitrate // 1000}k"
            for s in specs
        ),
    )
    return specs


AUDIO_RENDITION = "audio"


def codec_ladders(specs: Sequence[RenditionSpec], codecs: Sequence[str]) -> list[RenditionSpec]:
    """The H.264 ladder and, for each other codec asked for, the same rungs in it
    (`720p-hevc`): the factor chosen for x264 carried over to the codec's scale, and the
    cap scaled by what the codec saves (vtp.media.codecs). Same sizes, same frame rate, same
    function: the rung's pixels are what its replicas were sized for.

    Each codec's rung aims at what the H.264 rung is predicted to show when that is below
    the rung's target (grain, a cap that holds it, or the knee H.264's search stopped at:
    vtp.media.tuning.knee_aim), and its own search does not decide again: the renditions of
    one rung then show the same picture, and the other codec does not spend bits H.264's
    viewers never get (a grain clip's 1080p was 88.6 in H.264, 91.7 in AV1 before), nor
    stop short where H.264 did not (the natural clip's 1080p, 95.3 in H.264, 89.9 in HEVC)."""
    out = list(specs)
    for codec in codecs:
        if codec == "h264":
            continue
        factor = CAP_FACTOR[codec]
        out += [
            s.model_copy(
                update={
                    "name": f"{s.name}-{codec}",
                    "codec": codec,
                    "crf": crf_for(codec, s.crf) if s.crf is not None else None,
                    "preset": None,  # the codec's own (settings.hevc_preset, av1_preset)
                    "max_bitrate": max(MIN_VIDEO_BITRATE, round(s.max_bitrate * factor)),
                    "video_bitrate": max(MIN_VIDEO_BITRATE, round(s.video_bitrate * factor)),
                    "buffer_size": max(MIN_VIDEO_BITRATE, round(s.buffer_size * factor)),
                    "estimate": None,  # the samples were x264's
                    "quality_target": _shown(s),
                }
            )
            for s in specs
        ]
    return out


def _shown(spec: RenditionSpec) -> float | None:
    """What an H.264 rung aims to show: its target, or its predicted quality where that is
    lower (nothing under the cap reached the target)."""
    if spec.quality_target is None or spec.estimate is None:
        return spec.quality_target
    return round(min(spec.quality_target, spec.estimate.quality), 2)


def hdr_renditions(specs: Sequence[RenditionSpec], source: SourceInfo) -> list[RenditionSpec]:
    """An HDR source's picture kept as it is, beside its SDR ladder: each H.264 rung again as
    HEVC Main 10 (`720p-hdr`) in the source's transfer (PQ or HLG) and BT.2020, carrying its
    mastering display and content light levels; [] for an SDR source. HEVC because it is
    what plays HDR in fMP4 on Apple's players and on TVs; 10 bits because 8 would band.
    Same sizes and rate as the SDR rungs, the x264 factor carried over to x265's scale,
    the cap scaled by HEVC's saving (as `codec_ladders`)."""
    if source.dynamic_range == "sdr":
        return []
    factor = CAP_FACTOR["hevc"]
    return [
        s.model_copy(
            update={
                "name": f"{s.name}-hdr",
                "codec": "hevc",
                "profile": "main10",
                "crf": crf_for("hevc", s.crf) if s.crf is not None else None,
                "preset": None,
                "max_bitrate": max(MIN_VIDEO_BITRATE, round(s.max_bitrate * factor)),
                "video_bitrate": max(MIN_VIDEO_BITRATE, round(s.video_bitrate * factor)),
                "buffer_size": max(MIN_VIDEO_BITRATE, round(s.buffer_size * factor)),
                "estimate": None,
                "color_conversion": None,
                "dynamic_range": source.dynamic_range,
                "mastering_display": source.mastering_display,
                "content_light": source.content_light,
            }
        )
        for s in specs
        if s.codec == "h264" and s.kind == "video"
    ]


def audio_renditions(
    specs: Sequence[RenditionSpec],
    source: SourceInfo,
    *,
    max_tracks: int,
    loudness: float | None = None,
    muxed_mp4: bool = False,
) -> list[RenditionSpec]:
    """The ladder with its sound as renditions of their own: the video rungs without sound,
    and one audio rendition per sound track of the source (up to `max_tracks`), each
    encoded once for the whole duration, which every video variant refers to (an HLS audio
    group, a DASH audio adaptation set). That is what DASH players need (dash.js plays no
    muxed representations), what lets a player offer the languages, and it stores and
    encodes the sound once instead of once per rung; a chunked job needs it besides
    (encoded per chunk, audio would have a priming gap at every join).

    `muxed_mp4`: the job also asked for progressive MP4s, files a browser plays on their
    own: each video rung keeps its sound for its MP4 (`audio_in_segments` False).
    Unchanged for a silent source.
    """
    rates = [s.audio_bitrate for s in specs if s.audio_bitrate]
    if not specs or not rates or not source.has_audio:
        return list(specs)
    video = [
        s.model_copy(update={"audio_in_segments": False} if muxed_mp4 else {"audio_bitrate": None})
        for s in specs
    ]
    tracks = source.audio_tracks[:max_tracks] or [AudioTrack(index=0, codec="unknown")]
    default = next((t.index for t in tracks if t.default), tracks[0].index)
    labels = _track_labels([(t.title, t.language) for t in tracks])
    # No picture: no factor, target or prediction of its own either; the video fields are
    # those of the rung whose function encodes it, and unused.
    audio = [
        specs[0].model_copy(
            update={
                "name": AUDIO_RENDITION if i == 0 else f"{AUDIO_RENDITION}-{i + 1}",
                "audio_only": True,
                "audio_bitrate": max(rates),
                "crf": None,
                "quality_target": None,
                "estimate": None,
                "audio_track": track.index,
                "language": track.language,
                "label": labels[i],
                "default_track": track.index == default,
                "loudness": loudness,
            }
        )
        for i, track in enumerate(tracks)
    ]
    return [*video, *audio]


# A source of sound alone is encoded at the bit rate a 720p rung's sound gets: music and
# speech heard on their own deserve more than the smallest rung's 96 kbit/s.
AUDIO_ONLY_SHORT_SIDE = 720


def audio_only_renditions(
    source: SourceInfo, settings: Settings, *, max_tracks: int, loudness: float | None = None
) -> list[RenditionSpec]:
    """The renditions of a source of sound alone: its sound tracks, as a video source's
    (`audio_renditions`), encoded by the function of the smallest default rung, whose
    replicas encode every job's sound. No picture: the rung's own fields are unused."""
    if not source.has_audio:
        raise InvalidSource("the source has neither a picture nor a sound")
    heights = sorted(KNOWN_RUNGS[n] for n in settings.default_renditions if n in KNOWN_RUNGS)
    rung = heights[0] if heights else min(KNOWN_RUNGS.values())
    stand_in = source.model_copy(
        update={"width": rung * 16 // 9 // 2 * 2, "height": rung, "fps": 30.0, "has_video": True}
    )
    base = _spec(stand_in, rung, 30.0, heights or [rung], settings).model_copy(
        update={"audio_bitrate": audio_bitrate(AUDIO_ONLY_SHORT_SIDE), "color_conversion": None}
    )
    specs = audio_renditions([base], source, max_tracks=max_tracks, loudness=loudness)
    return [s for s in specs if s.audio_only]


TEXT_RENDITION = "text"


def text_renditions(
    specs: Sequence[RenditionSpec],
    source: SourceInfo,
    captions: Sequence[CaptionFile] = (),
    *,
    max_tracks: int,
) -> tuple[list[RenditionSpec], list[str]]:
    """The subtitle renditions of a job (WebVTT, an HLS SUBTITLES group, DASH text
    adaptation sets): each text subtitle stream of the source, then each caption file the
    job names; and why any track is left out (bitmap subtitles need OCR, which is not
    done; past `max_tracks`). The video fields are those of the smallest rung, whose
    function extracts them, and unused."""
    if not specs:
        return [], []
    skipped = []
    wanted: list[_Text] = []
    for stream in source.text_tracks:
        if not stream.text:
            skipped.append(
                f"subtitle stream {stream.index} ({stream.codec}"
                f"{', ' + stream.language if stream.language else ''}) is a bitmap format: "
                "only text subtitles become WebVTT"
            )
            continue
        wanted.append(_Text(f"subtitle stream {stream.index}", stream.index, None,
                            stream.language, stream.title, stream.forced,
                            stream.default and stream.forced))  # fmt: skip
    wanted += [
        _Text(f"caption file {c.key}", None, c.key, c.language, c.label, False, False)
        for c in captions
    ]
    skipped += [
        f"{t.what}: more than the {max_tracks} subtitle tracks a job gets"
        for t in wanted[max_tracks:]
    ]
    kept = wanted[:max_tracks]
    labels = _track_labels([(t.title, t.language) for t in kept], fallback="Subtitles")
    base = min(specs, key=lambda s: s.width * s.height)
    out = [
        base.model_copy(
            update={
                "name": f"{TEXT_RENDITION}-{i + 1}",
                "text_only": True,
                "audio_only": False,
                "audio_bitrate": None,
                "crf": None,
                "quality_target": None,
                "estimate": None,
                "text_track": t.stream,
                "caption_key": t.key,
                "language": t.language,
                "label": labels[i],
                # Shown unasked only when the source both forces it and makes it default.
                "default_track": t.default,
                "forced": t.forced,
            }
        )
        for i, t in enumerate(kept)
    ]
    return out, skipped


class _Text(NamedTuple):
    """A subtitle track to make, from a stream of the source or a caption file."""

    what: str
    stream: int | None
    key: str | None
    language: str | None
    title: str | None
    forced: bool
    default: bool


def _track_labels(
    tracks: Sequence[tuple[str | None, str | None]], *, fallback: str = "Audio"
) -> list[str]:
    """What a player's menu shows for each (title, language) track: its title, else its
    language's name, else `Audio N`; made unique (two untitled English tracks: `English`,
    `English 2`)."""
    labels: list[str] = []
    for n, (title, language) in enumerate(tracks, start=1):
        base = title or (_language_name(language) if language else None)
        base = base or (fallback if len(tracks) == 1 else f"{fallback} {n}")
        label, k = base, 1
        while label in labels:
            k += 1
            label = f"{base} {k}"
        labels.append(label[:64])
    return labels


def _language_name(tag: str) -> str:
    try:
        return str(langcodes.Language.get(tag).display_name())
    except (ValueError, LookupError, ImportError):
        return tag


# What a variable-rate source is encoded at: the whole rates phones and cameras record at.
VARIABLE_SOURCE_RATES = (24.0, 25.0, 30.0, 48.0, 50.0, 60.0)


def output_fps(source_fps: float, *, variable: bool = False) -> float:
    """The frame rate every rendition is encoded at: the source's, within limits.

    Rates above MAX_OUTPUT_FPS are halved until they fit. A rate within 1.5% of a broadcast
    rate is snapped to it: phones record variable frame rate and ffprobe reports the average
    (29.6 fps and the like); a standard constant rate is what players and the HLS FRAME-RATE
    attribute expect, and it gives the keyframe grid an exact frame period.
    """
    fps = source_fps
    while fps > MAX_OUTPUT_FPS + 1e-6:
        fps /= 2
    if variable:
        # Its average says how often the phone managed a frame, not the rate it recorded
        # at: the first whole rate at or above it (a phone's 26 fps in low light is its 30
        # fps with frames missing, which the fps filter holds).
        return next((r for r in VARIABLE_SOURCE_RATES if r >= fps * 0.985), MAX_OUTPUT_FPS)
    nearest = min(STANDARD_RATES, key=lambda rate: abs(float(rate) - fps))
    if abs(float(nearest) - fps) <= 0.015 * fps:
        return float(nearest)
    return fps


def video_bitrate(width: int, height: int, fps: float) -> int:
    """Target H.264 bitrate in bit/s for a picture size and frame rate (see module docstring)."""
    pixels = width * height
    scale: float = (pixels / REFERENCE_PIXELS) ** PIXEL_EXPONENT
    fps_scale: float = max(0.5, (min(fps, MAX_OUTPUT_FPS) / 30.0) ** FPS_EXPONENT)
    bitrate = REFERENCE_BITRATE * scale * fps_scale
    return max(MIN_VIDEO_BITRATE, round(bitrate / 1000) * 1000)


def audio_bitrate(short_side: int) -> int:
    """AAC-LC stereo bitrate: 96 kbit/s for small renditions, 128 up to 720p, 160 above."""
    if short_side <= 360:
        return 96_000
    if short_side <= 720:
        return 128_000
    return 160_000


def h264_level(width: int, height: int, fps: float, max_bitrate: int, buffer_size: int) -> str:
    """The smallest H.264 level (High profile) whose limits fit the rendition."""
    mbs = math.ceil(width / 16) * math.ceil(height / 16)
    mbs_per_second = mbs * fps
    max_side_mbs = max(math.ceil(width / 16), math.ceil(height / 16))
    for level in _LEVELS:
        if (
            mbs <= level.max_frame_mbs
            # Annex A also bounds each side: at most sqrt(8 * MaxFS) macroblocks.
            and max_side_mbs <= math.isqrt(8 * level.max_frame_mbs)
            and mbs_per_second <= level.max_mbs_per_second
            and max_bitrate <= level.max_kbps * 1000 * _HIGH_PROFILE_FACTOR
            and buffer_size <= level.max_cpb_kbits * 1000 * _HIGH_PROFILE_FACTOR
        ):
            return level.name
    raise InvalidSource(f"a {width}x{height} rendition at {fps:.2f} fps exceeds every H.264 level")


def _validated(names: Sequence[str]) -> list[str]:
    cleaned: list[str] = []
    unknown: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name in KNOWN_RUNGS:
            if name not in cleaned:
                cleaned.append(name)
        else:
            unknown.append(str(raw))
    allowed = ", ".join(KNOWN_RUNGS)
    if unknown:
        shown = ", ".join(repr(u[:20]) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InvalidRequest(f"unknown rendition(s) {shown}; allowed: {allowed}")
    if not cleaned:
        raise InvalidRequest(f"no renditions requested; allowed: {allowed}")
    return cleaned


def _even(value: Fraction) -> int:
    return max(2, round(value / 2) * 2)


def _spec(
    source: SourceInfo, short: int, fps: float, default_heights: list[int], settings: Settings
) -> RenditionSpec:
    landscape = source.width >= source.height
    long_src, short_src = (
        (source.width, source.height) if landscape else (source.height, source.width)
    )
    # Keep the display aspect ratio; never exceed the source's long side (rounding up to an
    # even number could otherwise upscale by a pixel).
    long = min(_even(Fraction(short * long_src, short_src)), long_src - long_src % 2)
    width, height = (long, short) if landscape else (short, long)

    name = f"{short}p"
    cap = video_bitrate(width, height, fps)
    held = source_cap(source, width, height, fps, settings.source_bitrate_margin)
    if held is not None:
        cap = min(cap, held)
    buffer_size = cap * BUFSIZE_FACTOR
    return RenditionSpec(
        name=name,
        function=f"transcode-{_function_rung(short, default_heights)}p",
        width=width,
        height=height,
        fps=fps,
        video_bitrate=cap,
        max_bitrate=cap,
        buffer_size=buffer_size,
        audio_bitrate=audio_bitrate(short) if source.has_audio else None,
        profile="high",
        level=h264_level(width, height, fps, cap, buffer_size),
        crf=settings.default_crf,
        preset=settings.x264_preset,
        quality_target=settings.target_for(name),
        color_conversion=colour.conversion_for(source),
    )


def source_cap(
    source: SourceInfo, width: int, height: int, fps: float, margin: float
) -> int | None:
    """The most bits a `width`x`height` rendition at `fps` can usefully spend: the source's
    video bit rate scaled to its pixels and frame rate by the model's exponents, times
    `margin` (an encoder needs a little more than the original's to keep what the original
    kept). None when the source's bit rate is unknown."""
    if not source.video_bit_rate:
        return None
    pixels = (width * height) / (source.width * source.height)
    rate = min(fps, MAX_OUTPUT_FPS) / source.fps if source.fps > 0 else 1.0
    scaled: float = source.video_bit_rate * pixels**PIXEL_EXPONENT * min(1.0, rate) ** FPS_EXPONENT
    return max(MIN_VIDEO_BITRATE, round(scaled * margin / 1000) * 1000)


def _function_rung(short: int, default_heights: list[int]) -> int:
    """Height of the default rung whose function encodes a rung `short` pixels high."""
    for height in default_heights:
        if height >= short:
            return height
    return default_heights[-1]
