"""Encode one rendition of a source: HLS with fMP4 segments, optionally a progressive MP4 too.

Every rendition of a job is encoded by a different function replica, possibly at different
times, yet players switch between them segment by segment. That only works if all renditions
put their keyframes, and therefore segment boundaries, at the same instants. So the keyframe
placement depends on time alone, never on content or picture size:

* a keyframe is forced at every multiple of `settings.gop_seconds` (`-force_key_frames`),
* scene-cut keyframes are off (`-sc_threshold 0`) and GOPs are closed (`+cgop`, IDR frames),
* every rendition has the same constant frame rate, on one frame grid from 0 with its sound
  (vtp.media.timeline),
* segments last `settings.segment_seconds`, a whole number of GOPs, so the HLS muxer can cut
  on exactly those keyframes.

Both outputs come from one ffmpeg run: the `tee` muxer writes the same encoded packets into
the HLS muxer and the MP4 muxer, so the picture is encoded once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vtp.errors import FfmpegError, InvalidRequest, InvalidSource, JoinRefused, VtpError
from vtp.media import colour, fmp4, iframes, loudness, timeline
from vtp.media.chunks import ChunkRange

# rate_control_args is re-exported: what a spec's x264 rate control is.
from vtp.media.codecs import codec_string, encoder_args
from vtp.media.codecs import rate_control_args as rate_control_args
from vtp.media.ffmpeg import CAPTION_FORMATS, Progress, run_ffmpeg, untrusted_input
from vtp.media.loudness import Loudness
from vtp.media.measure import ENCODED, SOUND, Measurement
from vtp.models import RenditionSpec, SourceInfo
from vtp.settings import Settings

log = logging.getLogger(__name__)

FORMATS = ("hls", "dash", "mp4")  # DASH: a second index of the same segments (vtp.media.dash)
HLS_PLAYLIST = "index.m3u8"
HLS_INIT = "init.mp4"
HLS_SEGMENT_PATTERN = "seg_%05d.m4s"
_SEGMENT_GLOB = "seg_*.m4s"

AAC_CODEC = "mp4a.40.2"  # AAC-LC in an HLS CODECS attribute
# Every sound rendition is AAC-LC stereo at 48 kHz, whatever the source had (`_aac_args`).
AUDIO_CHANNELS = 2
AUDIO_SAMPLE_RATE = 48000
_TEE_OPTION_SPECIALS = ":]['"
_TEE_SLAVE_SPECIALS = "|'"


class RenditionResult(BaseModel):
    """What one encoded rendition consists of; `files` are relative to its output directory."""

    model_config = ConfigDict(frozen=True)

    name: str
    files: list[str] = Field(description="every file written, relative to the output directory")
    playlist: str = HLS_PLAYLIST
    mp4: str | None = Field(default=None, description="the progressive MP4, when asked for")
    segments: int = Field(ge=1)
    size_bytes: int = Field(ge=0, description="total size of all files written")
    duration: float = Field(gt=0, description="seconds, the sum of the segment durations")
    avg_bitrate: int = Field(ge=0, description="bit/s over all segments: AVERAGE-BANDWIDTH")
    peak_bitrate: int = Field(ge=0, description="bit/s of the densest segment: BANDWIDTH")
    codecs: str = Field(description="RFC 6381 codecs, e.g. 'avc1.64001f,mp4a.40.2'")
    width: int
    height: int
    fps: float
    # The track's media timescale (ticks a second), from its init segment: a DASH
    # manifest's durations are in it (vtp.media.dash). None in results from before.
    timescale: int | None = None
    # Trick play (vtp.media.iframes): the I-frame playlist beside the media playlist, and its
    # peak and average bit rates; None for sound, and in results from before.
    iframes: str | None = None
    iframe_bandwidth: int | None = None
    iframe_average_bandwidth: int | None = None
    # A subtitle rendition's WebVTT file (its playlist's one segment).
    subtitles: str | None = None
    # An audio rendition normalised to a loudness target: what its source track measured
    # first (vtp.media.loudness), and the target.
    loudness: Loudness | None = None
    loudness_target: float | None = None


def encode_rendition(
    source_url: str,
    source: SourceInfo,
    spec: RenditionSpec,
    out_dir: Path,
    *,
    formats: Sequence[str] = ("hls",),
    settings: Settings,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    measure: Measurement | None = None,
) -> RenditionResult:
    """Encode `spec` from `source_url` into `out_dir` and describe what was written; with
    `measure`, the encode measures its quality as it goes (vtp.media.measure: read its
    scores with `measure.read()`).

    `timeout` (seconds) bounds ffmpeg's wall time; `settings.ffmpeg_timeout_seconds` when
    None. The caller passes what is left of its call's deadline. Setting `cancel` stops the
    encode (FfmpegError).

    `formats` must include "hls"; "mp4" adds `<name>.mp4` with its index at the front
    (`+faststart`) for progressive download. Files a previous attempt left in `out_dir` are
    removed first, so a retry never mixes old and new segments.
    """
    wanted = _validated_formats(formats)
    _check_grid(settings.segment_seconds, settings.gop_seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    mp4_name = f"{spec.name}.mp4" if "mp4" in wanted else None
    _clean(out_dir, mp4_name)

    args = ffmpeg_command(source_url, source, spec, settings, mp4_name, measure=measure)
    # Relative output names, with the output directory as working directory: the HLS
    # playlist then refers to its init file and segments by bare name, and no path needs
    # escaping for the tee muxer.
    _run(args, out_dir, settings, timeout, on_progress, cancel)
    if mp4_name and spec.dynamic_range == "sdr" and source.dynamic_range != "sdr":
        fmp4.hide_entry_boxes(out_dir / mp4_name)  # the source's HDR metadata, copied over
    result = _describe(out_dir, source, spec, settings, mp4_name)
    _check_complete(result, source)
    return result


def encode_audio(
    source_url: str,
    source: SourceInfo,
    spec: RenditionSpec,
    out_dir: Path,
    *,
    settings: Settings,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> RenditionResult:
    """Encode one sound track of the source alone, whole, as an HLS rendition of fMP4
    segments (a member of the audio group every video variant refers to). One encoder for
    the whole duration: AAC's priming and frame boundaries then fall where one continuous
    encode puts them, never at a chunk's join.

    With `spec.loudness`, the track is measured first and then normalised to it
    (vtp.media.loudness); the measurement is part of the result."""
    if not source.has_audio or not spec.audio_bitrate:
        raise InvalidRequest(f"{spec.name}: the source has no sound to encode")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean(out_dir, None)
    timeout = settings.ffmpeg_timeout_seconds if timeout is None else max(timeout, 0.001)
    started = time.monotonic()
    measured: Loudness | None = None
    filters = [timeline.audio_timing_filter(source.picture_origin)]
    if spec.loudness is not None:
        measured = loudness.measure(
            source_url, spec.audio_track, duration=source.duration, timeout=timeout,
            target=spec.loudness, cancel=cancel,
        )  # fmt: skip
        filters.insert(0, loudness.normalise_filter(spec.loudness, measured))
        log.info("%s: track %d measures %.1f LUFS, %.1f dBTP; normalising to %g LUFS",
                 spec.name, spec.audio_track, measured.integrated, measured.true_peak,
                 spec.loudness)  # fmt: skip
    args = [
        *timeline.CLOCK_ARGS,
        *untrusted_input(source_url, threads=settings.ffmpeg_threads),
        "-map",
        f"0:a:{spec.audio_track}",
        "-af",
        ",".join(filters),
        "-vn",
        "-sn",
        "-dn",
        "-map_metadata",
        "-1",
        *_aac_args(spec.audio_bitrate),
        "-t",
        f"{source.duration:.3f}",
        # The HLS muxer with a video rendition's options: segments of about the video's
        # length (cut at the AAC frame after each boundary), so players fetch audio and
        # video at the same pace.
        *(arg for key, value in _hls_options(settings).items() for arg in (f"-{key}", value)),
        # The encoder's priming in the edit list, not in the timeline (vtp.media.timeline).
        "-avoid_negative_ts",
        "disabled",
        HLS_PLAYLIST,
    ]
    _run(args, out_dir, settings, timeout - (time.monotonic() - started), on_progress, cancel)
    result = _describe(out_dir, source, spec, settings, None, codecs=AAC_CODEC)
    _check_complete(result, source)
    if measured is None:
        return result
    return result.model_copy(update={"loudness": measured, "loudness_target": spec.loudness})


SUBTITLES = "subtitles.vtt"
WEBVTT_CODEC = "wvtt"  # WebVTT in RFC 6381 terms (HLS lists no CODECS for it)


def encode_text(
    source_url: str,
    source: SourceInfo,
    spec: RenditionSpec,
    out_dir: Path,
    *,
    settings: Settings,
    caption_url: str | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> RenditionResult:
    """One subtitle track as WebVTT (`subtitles.vtt`) and an HLS media playlist naming it
    as its one segment, the length of the video: the source's text stream
    `spec.text_track`, or the job's caption file at `caption_url` (SRT, ASS or WebVTT
    only). Styling ASS carries beyond text and position is dropped: WebVTT has none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / SUBTITLES, out_dir / HLS_PLAYLIST):
        stale.unlink(missing_ok=True)
    if caption_url is not None:
        source_args = [*untrusted_input(caption_url, formats=CAPTION_FORMATS), "-map", "0:s:0"]
    elif spec.text_track is not None:
        source_args = [*untrusted_input(source_url), "-map", f"0:s:{spec.text_track}"]
    else:
        raise InvalidRequest(f"{spec.name}: neither a subtitle stream nor a caption file")
    args = [
        *source_args,
        "-vn",
        "-an",
        "-dn",
        "-map_metadata",
        "-1",
        "-c:s",
        "webvtt",
        "-t",
        f"{source.duration:.3f}",
        "-f",
        "webvtt",
        SUBTITLES,
    ]
    try:
        _run(args, out_dir, settings, timeout, None, cancel)
    except FfmpegError as exc:
        if caption_url is not None and not exc.retryable:
            raise InvalidRequest(f"the caption file {spec.caption_key} is unreadable: "
                                 f"{exc.reason}") from exc  # fmt: skip
        raise
    path = out_dir / SUBTITLES
    if not path.is_file():
        raise FfmpegError("ffmpeg finished without writing the WebVTT file")
    playlist = "\n".join([
        "#EXTM3U", "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{max(1, math.ceil(source.duration))}",
        "#EXT-X-MEDIA-SEQUENCE:1", "#EXT-X-PLAYLIST-TYPE:VOD",
        f"#EXTINF:{source.duration:.6f},", SUBTITLES, "#EXT-X-ENDLIST", "",
    ])  # fmt: skip
    (out_dir / HLS_PLAYLIST).write_text(playlist)
    size = path.stat().st_size
    rate = max(1, round(size * 8 / source.duration))
    return RenditionResult(
        name=spec.name,
        files=sorted([HLS_PLAYLIST, SUBTITLES]),
        segments=1,
        size_bytes=size + len(playlist),
        duration=round(source.duration, 6),
        avg_bitrate=rate,
        peak_bitrate=rate,
        codecs=WEBVTT_CODEC,
        width=spec.width,
        height=spec.height,
        fps=spec.fps,
        subtitles=SUBTITLES,
    )


class ChunkSegment(BaseModel):
    """One segment of a chunk, as the join checks it: where it sits on the timeline (its
    first fragment's decode time, in the track's ticks), how many frames it holds, and
    whether it starts on a keyframe."""

    model_config = ConfigDict(frozen=True)

    name: str
    seconds: float
    size: int = Field(ge=0)
    decode_time: int = Field(ge=0)
    frames: int = Field(ge=0)
    keyframe_first: bool
    # Its first picture's bytes (vtp.media.iframes): the I-frame playlist's byte range.
    keyframe_offset: int | None = None
    keyframe_length: int | None = None


class ChunkResult(BaseModel):
    """One encoded chunk of a rendition (vtp.media.chunks): video segments numbered and timed as
    the whole rendition's, and what the join checks them against."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    first_segment: int = Field(ge=1)
    start_s: float = Field(ge=0)
    end_s: float
    segments: list[ChunkSegment]
    timescale: int = Field(ge=1)
    init: str = Field(description="its init segment's file name")
    codecs: str = Field(description="RFC 6381 codecs of its video, from its init segment")
    init_sha256: str
    init_size: int = Field(ge=1)


def encode_chunk(
    source_url: str,
    source: SourceInfo,
    spec: RenditionSpec,
    chunk: ChunkRange,
    out_dir: Path,
    *,
    settings: Settings,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    measure: Measurement | None = None,
) -> ChunkResult:
    """Encode the video of `chunk` (audio is a rendition of its own, encoded once) into
    `out_dir`: ffmpeg seeks the presigned URL to the chunk's start (input seek, accurate:
    it decodes from the keyframe before and drops frames up to the start, so nothing is
    fetched before that keyframe), encodes `chunk.duration` seconds on the same keyframe
    grid as a whole encode, and numbers the segments from `chunk.first_segment`. Their
    decode times are then moved to the chunk's place on the rendition's timeline
    (vtp.media.fmp4). The init segment is left as written, to be checked against the first
    chunk's when the rendition is joined.
    """
    _check_grid(settings.segment_seconds, settings.gop_seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean(out_dir, None)
    video_only = source.model_copy(update={"has_audio": False})
    rate = timeline.frame_rate(spec.fps)
    seek = timeline.chunk_seek(chunk.start_s, source.video_start)
    args = [
        *timeline.CLOCK_ARGS,
        *untrusted_input(source_url, seek=seek, threads=settings.ffmpeg_threads),
        *encode_args(video_only, spec, settings, start_s=chunk.start_s, measure=measure),
        # Exactly the grid frames of its range, wherever the source's own frames fall.
        "-frames:v",
        str(timeline.chunk_frames(chunk.start_s, chunk.end_s, rate)),
        "-f",
        "tee",
        _tee_outputs(spec, settings, None, start_number=chunk.first_segment),
        *(measure.output_args() if measure else []),
    ]
    _run(args, out_dir, settings, timeout, on_progress, cancel)
    init, listed = _listed(out_dir, f"playlist of chunk {chunk.index}")
    if init is None:
        raise FfmpegError(f"the playlist of chunk {chunk.index} names no init segment")
    init_path = out_dir / init
    # What the playlist shares between chunks must not depend on which build wrote it.
    fmp4.drop_build_marks(init_path)
    timescale = fmp4.track_timescale(init_path)
    # Its first frame's place on the grid; vtp.media.join refuses a timescale that cannot
    # time the grid in whole ticks.
    ticks = round(timeline.grid_frame(chunk.start_s, rate) * timescale / rate)
    segments = []
    for name, seconds in listed:
        path = out_dir / name
        if not fmp4.fragments(path):
            # The decoder gave nothing from there on: a source whose keyframes are too far
            # apart to seek to (a recorder's single keyframe), or a damaged stretch.
            raise JoinRefused(f"{name} holds no frame: the source gave none from "
                              f"{chunk.start_s:g}s on")  # fmt: skip
        fmp4.shift_decode_times(path, ticks)
        parts = fmp4.fragments(path)
        offset, length = fmp4.keyframe_range(path) if parts[0][2] else (None, None)
        segments.append(
            ChunkSegment(
                name=name,
                seconds=seconds,
                size=path.stat().st_size,
                decode_time=parts[0][0],
                frames=sum(count for _, count, _ in parts),
                keyframe_first=parts[0][2],
                keyframe_offset=offset,
                keyframe_length=length,
            )
        )
    init_bytes = init_path.read_bytes()
    return ChunkResult(
        index=chunk.index,
        first_segment=chunk.first_segment,
        start_s=chunk.start_s,
        end_s=chunk.end_s,
        segments=segments,
        timescale=timescale,
        init=init,
        codecs=codec_string(init_path, spec),
        init_sha256=hashlib.sha256(init_bytes).hexdigest(),
        init_size=len(init_bytes),
    )


def _check_complete(result: RenditionResult, source: SourceInfo) -> None:
    """A rendition much shorter than its source means the source is damaged (a truncated
    upload whose index promises more than its data holds): a failure, not a short video."""
    if result.duration < source.duration * 0.9 - 0.25:
        raise InvalidSource(
            f"the encode produced {result.duration:.1f}s of the {source.duration:.1f}s the "
            "source declares: the file is truncated or damaged"
        )


def ffmpeg_command(
    source_url: str,
    source: SourceInfo,
    spec: RenditionSpec,
    settings: Settings,
    mp4_name: str | None = None,
    *,
    measure: Measurement | None = None,
) -> list[str]:
    """The arguments after `ffmpeg` for one rendition, run in its output folder (the
    benchmark's bare-ffmpeg baseline runs exactly these, without `measure`). A rung whose
    sound is a rendition of its own encodes sound only for its progressive MP4."""
    if not spec.audio_in_segments and mp4_name is None:
        source = source.model_copy(update={"has_audio": False})
    return [
        *timeline.CLOCK_ARGS,
        *untrusted_input(source_url, threads=settings.ffmpeg_threads),
        *encode_args(source, spec, settings, measure=measure),
        # Never more than the probed duration: the caps on duration were checked against
        # it, and a header can claim 1 s while the file holds an hour.
        "-t",
        f"{source.duration:.3f}",
        "-f",
        "tee",
        _tee_outputs(spec, settings, mp4_name),
        *(measure.output_args() if measure else []),
    ]


def encode_args(
    source: SourceInfo,
    spec: RenditionSpec,
    settings: Settings,
    *,
    start_s: float = 0.0,
    measure: Measurement | None = None,
) -> list[str]:
    """Stream mapping, filters and codec options (everything between input and output), for
    an encode from `start_s` (a chunk's) of a source read on its own clock
    (timeline.CLOCK_ARGS); with `measure`, the graph that also hands the measurement its
    frames (vtp.media.measure)."""
    rate = timeline.frame_rate(spec.fps)
    gop = settings.gop_seconds
    timing = timeline.video_timing_filter(rate, start_s=start_s, origin_s=source.picture_origin)
    video_filter = f"{picture_filters(spec)},{timing}"
    with_audio = source.has_audio and spec.audio_bitrate is not None
    audio_filter = timeline.audio_timing_filter(source.picture_origin)
    if measure is None:
        # First real video stream; capital V skips cover art and thumbnails.
        maps = ["-map", "0:V:0", *(["-map", "0:a:0"] if with_audio else [])]
        filters = ["-vf", video_filter, *(["-af", audio_filter] if with_audio else [])]
    else:
        display = None
        if measure.display:
            w, h = measure.display
            big = spec.model_copy(update={"width": w, "height": h})
            # The source on the same grid, thinned to the scored frames before scaling.
            display = f"{DEINTERLACE},{timing},{{select}},{size_filters(big)}"
        graph = measure.encode_side(video_filter, display)
        if with_audio:
            # The sound through the measuring graph too: fed by a filter graph of its own,
            # it let ffmpeg's scheduler hold the picture back for it while the measurement
            # waited for the encoder, and such runs hung on a busy CPU (none of 60 so).
            graph += f";[0:a:0]{audio_filter}[{SOUND}]"
        maps = ["-filter_complex", graph, "-map", f"[{ENCODED}]",
                *(["-map", f"[{SOUND}]"] if with_audio else [])]  # fmt: skip
        filters = []
    args = [
        *maps,
        # No source metadata or chapters: phone videos carry GPS positions and device data.
        "-map_metadata",
        "-1",
        "-map_chapters",
        "-1",
        *filters,
        # The filters made the frames constant-rate on the shared grid; nothing after them
        # may duplicate or drop one.
        "-fps_mode",
        "passthrough",
        # The codec's encoder, its rate control and its part of the keyframe grid
        # (vtp.media.codecs); every encoder keys at the forced multiples of the GOP.
        *encoder_args(spec, settings),
        *_forced_keyframes(gop),
        # BT.709 (or the kept HDR's BT.2020 and transfer) in the stream's headers and the
        # container's colr box: what the filters made.
        *colour.output_tags(spec.dynamic_range),
        # +cgop: closed GOPs (no frame refers across a keyframe). +global_header: codec
        # headers in the init segment / moov; the tee muxer cannot ask for it by itself.
        "-flags",
        "+cgop+global_header",
    ]
    if with_audio and spec.audio_bitrate is not None:
        args += _aac_args(spec.audio_bitrate)
    else:
        args += ["-an"]
    args += ["-sn", "-dn"]
    if settings.ffmpeg_threads > 0:
        args += ["-threads", str(settings.ffmpeg_threads)]  # the encoder's (the decoder's: input)
    # Audio and video may start far apart in a badly interleaved upload; let the muxers
    # buffer instead of failing with "Too many packets buffered".
    args += ["-max_muxing_queue_size", "4096"]
    return args


def _forced_keyframes(gop: float) -> list[str]:
    return ["-force_key_frames", f"expr:gte(t,n_forced*{gop:g})"]


# Deinterlace only frames flagged interlaced (DV, broadcast captures); progressive frames
# pass through untouched.
DEINTERLACE = "bwdif=mode=send_frame:deint=interlaced"


def picture_filters(spec: RenditionSpec) -> str:
    """The filters from a source frame to a rendition's picture (its frame rate aside): the
    encode's, and the reference's a quality measurement compares it with (vtp.media.quality)."""
    return f"{DEINTERLACE},{size_filters(spec)}"


def size_filters(spec: RenditionSpec) -> str:
    """The filters from a (deinterlaced) source frame to the rendition's size, colour and
    pixel format."""
    return ",".join(
        [
            # Straight to the planned even size: the plan already keeps the display aspect
            # ratio, so non-square source pixels are corrected here too (ffmpeg has already
            # applied any rotation by the time frames reach the filter); in BT.709 SDR,
            # tone-mapped from HDR (vtp.media.colour).
            *colour.scale_filters(spec.color_conversion, spec.width, spec.height),
            "setsar=1",  # square pixels in the output
            # 8-bit 4:2:0 (what High profile and every player takes), 10-bit for HDR.
            f"format={colour.pixel_format(spec.dynamic_range)}",
        ]
    )


def reference_filters(spec: RenditionSpec) -> str:
    """The source as a rendition would show it with nothing lost to coding: its picture
    filters on its frame grid, as the encode has them."""
    rate = timeline.frame_rate(spec.fps)
    return f"{picture_filters(spec)},{timeline.video_timing_filter(rate)}"


def _aac_args(bitrate: int) -> list[str]:
    """AAC-LC, stereo, 48 kHz: the one sound every player decodes."""
    return ["-c:a", "aac", "-profile:a", "aac_low", "-ac", str(AUDIO_CHANNELS),
            "-ar", str(AUDIO_SAMPLE_RATE), "-b:a", str(bitrate)]  # fmt: skip


def _hls_options(settings: Settings, start_number: int = 1) -> dict[str, str]:
    """The HLS muxer's options: VOD fMP4 segments of `segment_seconds`, numbered from
    `start_number` (a chunk's first segment keeps its number in the rendition)."""
    return {
        "f": "hls",
        "hls_time": f"{settings.segment_seconds:g}",
        "hls_playlist_type": "vod",
        "hls_segment_type": "fmp4",
        "hls_fmp4_init_filename": HLS_INIT,
        "hls_segment_filename": HLS_SEGMENT_PATTERN,
        "start_number": str(start_number),
    }


def _run(
    args: list[str],
    out_dir: Path,
    settings: Settings,
    timeout: float | None,
    on_progress: Callable[[Progress], None] | None,
    cancel: threading.Event | None,
) -> None:
    """ffmpeg in the output folder, within `timeout` (`ffmpeg_timeout_seconds` if None)."""
    run_ffmpeg(
        args,
        timeout=settings.ffmpeg_timeout_seconds if timeout is None else max(timeout, 0.001),
        on_progress=on_progress,
        cwd=out_dir,
        cancel=cancel,
        stall_seconds=settings.ffmpeg_stall_seconds or None,
    )


def _listed(out_dir: Path, what: str) -> tuple[str | None, list[tuple[str, float]]]:
    """The init segment and (file, seconds) of each segment of the playlist ffmpeg wrote in
    `out_dir`, every one of them on disk: FfmpegError for a missing or unfinished one."""
    path = out_dir / HLS_PLAYLIST
    if not path.is_file():
        raise FfmpegError(f"ffmpeg finished without writing the {what}")
    text = path.read_text()
    init, segments = parse_media_playlist(text)
    if not segments or "#EXT-X-ENDLIST" not in text:
        raise FfmpegError(f"ffmpeg wrote an incomplete {what}")
    for name, _ in segments:
        if not (out_dir / name).is_file():
            raise FfmpegError(f"HLS segment {name} listed but missing")
    return init, segments


def _tee_outputs(
    spec: RenditionSpec, settings: Settings, mp4_name: str | None, start_number: int = 1
) -> str:
    # A rung whose sound is a rendition of its own: the segments get the picture alone
    # (the tee muxer's `select`), the MP4 both.
    only_video = {} if spec.audio_in_segments else {"select": "v"}
    # avoid_negative_ts disabled: the B-frame delay goes into the edit list's media time
    # instead of an empty edit before a late first frame (vtp.media.timeline).
    hls = _tee_slave(
        only_video
        | _hls_options(settings, start_number)
        | {"hls_flags": "independent_segments", "avoid_negative_ts": "disabled"},
        HLS_PLAYLIST,
    )
    slaves = [hls]
    if mp4_name:
        # +faststart moves the index to the front so a browser can start playing at once.
        slaves.append(_tee_slave({"f": "mp4", "movflags": "+faststart"}, mp4_name))
    return "|".join(slaves)


def _tee_slave(options: dict[str, str], filename: str) -> str:
    """One `[key=value:...]filename` entry of a tee output, escaped for both parsing levels.

    The tee muxer first splits its argument on `|` (honouring backslash escapes and single
    quotes), then parses each slave's options, splitting on `:` and `]` with the same escape
    rules: option values are escaped for the inner level, then the whole entry for the outer.
    """
    inner = ":".join(
        f"{key}={_escape(value, _TEE_OPTION_SPECIALS)}" for key, value in options.items()
    )
    return _escape(f"[{inner}]{filename}", _TEE_SLAVE_SPECIALS)


def _escape(value: str, specials: str) -> str:
    return "".join("\\" + ch if ch == "\\" or ch in specials else ch for ch in value)


def _describe(
    out_dir: Path,
    source: SourceInfo,
    spec: RenditionSpec,
    settings: Settings,
    mp4_name: str | None,
    *,
    codecs: str | None = None,
) -> RenditionResult:
    """What ffmpeg wrote in `out_dir`, measured; `codecs` when known (the audio rendition's),
    else read from the init segment and the spec."""
    init, segments = _listed(out_dir, "HLS playlist")
    seg_sizes = [(out_dir / name).stat().st_size for name, _ in segments]
    duration = sum(d for _, d in segments)

    files = [HLS_PLAYLIST, *([init] if init else []), *(name for name, _ in segments)]
    if mp4_name:
        if not (out_dir / mp4_name).is_file():
            raise FfmpegError("ffmpeg finished without writing the MP4")
        files.append(mp4_name)
    size_bytes = sum((out_dir / f).stat().st_size for f in files)

    timescale = fmp4.track_timescale(out_dir / init) if init else None
    trick: dict[str, object] = {}
    if codecs is None:
        codecs = codec_string(out_dir / init if init else None, spec)
        if init:
            frames = iframes.scan(out_dir, segments)
            (out_dir / iframes.IFRAME_PLAYLIST).write_text(iframes.playlist(frames, init=init))
            files.append(iframes.IFRAME_PLAYLIST)
            size_bytes += (out_dir / iframes.IFRAME_PLAYLIST).stat().st_size
            trick = iframes.result_fields(frames)
        if source.has_audio and spec.audio_bitrate is not None and spec.audio_in_segments:
            codecs += "," + AAC_CODEC

    result = RenditionResult(
        name=spec.name,
        files=sorted(files),
        mp4=mp4_name,
        segments=len(segments),
        size_bytes=size_bytes,
        duration=round(duration, 6),
        avg_bitrate=round(sum(seg_sizes) * 8 / duration) if duration > 0 else 0,
        peak_bitrate=peak_bitrate([d for _, d in segments], seg_sizes),
        codecs=codecs,
        width=spec.width,
        height=spec.height,
        fps=spec.fps,
        timescale=timescale,
    ).model_copy(update=trick)
    log.info(
        "rendition %s: %d segments, %.2fs, avg %d bit/s, peak %d bit/s, %s",
        result.name,
        result.segments,
        result.duration,
        result.avg_bitrate,
        result.peak_bitrate,
        result.codecs,
    )
    return result


def parse_media_playlist(text: str) -> tuple[str | None, list[tuple[str, float]]]:
    """The init segment URI and the (URI, duration) of each segment of a media playlist."""
    init: str | None = None
    segments: list[tuple[str, float]] = []
    pending: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXT-X-MAP:"):
            match = re.search(r'URI="([^"]+)"', line)
            init = match.group(1) if match else None
        elif line.startswith("#EXTINF:"):
            pending = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line and not line.startswith("#") and pending is not None:
            segments.append((line, pending))
            pending = None
    return init, segments


def peak_bitrate(durations: list[float], sizes: list[int]) -> int:
    """The playlist's peak segment bit rate, the HLS BANDWIDTH attribute: as RFC 8216 defines
    it, the largest bit rate of any contiguous run of segments whose total duration is
    between 0.5 and 1.5 times the target duration.

    So a short tail (mostly one keyframe) is never measured alone, which would report a rate
    no real stretch of the stream reaches and push players to a lower rendition than
    necessary; nor is it allowed to dilute the full segment before it (which an earlier
    version did by merging the two: the BANDWIDTH then fell below a real segment's rate).
    A video shorter than half a target duration has one rate, its own.
    """
    pairs = [(d, s) for d, s in zip(durations, sizes, strict=True) if d > 0]
    if not pairs:
        return 0
    # EXT-X-TARGETDURATION: the longest segment, rounded to the nearest second (RFC 8216).
    target = max(1, round(max(d for d, _ in pairs)))
    low, high = 0.5 * target, 1.5 * target
    best = 0.0
    for i in range(len(pairs)):
        total_d = total_s = 0.0
        for d, s in pairs[i:]:
            total_d, total_s = total_d + d, total_s + s
            if total_d > high + 1e-9:
                break
            if total_d >= low - 1e-9:
                best = max(best, total_s * 8 / total_d)
    if best == 0.0:  # shorter than half a target duration, whole
        best = sum(s for _, s in pairs) * 8 / sum(d for d, _ in pairs)
    return round(best)


def _validated_formats(formats: Sequence[str]) -> list[str]:
    wanted = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise InvalidRequest(f"unknown output format {fmt!r}; allowed: {', '.join(FORMATS)}")
        if fmt not in wanted:
            wanted.append(fmt)
    if "hls" not in wanted:
        raise InvalidRequest("output formats must include 'hls'")
    return wanted


def _check_grid(segment_seconds: float, gop_seconds: float) -> None:
    """Segments must hold a whole number of GOPs, or cuts would fall between keyframes."""
    ratio = segment_seconds / gop_seconds if gop_seconds > 0 else 0.0
    if gop_seconds <= 0 or ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
        raise VtpError(
            f"misconfigured: segment_seconds ({segment_seconds:g}) must be a whole multiple "
            f"of gop_seconds ({gop_seconds:g})"
        )


def _clean(out_dir: Path, mp4_name: str | None) -> None:
    stale = [out_dir / HLS_PLAYLIST, out_dir / HLS_INIT, out_dir / iframes.IFRAME_PLAYLIST,
             *out_dir.glob(_SEGMENT_GLOB)]  # fmt: skip
    if mp4_name:
        stale.append(out_dir / mp4_name)
    for path in stale:
        path.unlink(missing_ok=True)


frame_rate = timeline.frame_rate  # re-exported: callers time renditions with it
