"""Test sources made the way phones, browsers and broadcasters make them, and the measuring
helpers that check what a pipeline made of them.

tests/clips.py makes one kind of clip: constant 30 fps, H.264 and AAC both starting at 0. Real
uploads are rarely that tidy. A phone records at a variable frame rate in a mov with a fine
timescale; a browser's MediaRecorder uploads WebM with no duration and no index; a broadcast
capture is an MPEG-TS starting at some arbitrary clock, often interlaced, its sound starting a
little after its picture; an edited file starts with frames its edit list hides. Each of those
is where audio/video sync or a timestamp goes wrong, so each is made here from ffmpeg's lavfi
sources, small and quick, and encoded once per test session (the cache of tests/clips.py,
copied out per caller, so that a test may damage its copy).

Most sources carry sync marks: a white full-frame flash on one frame every `period` seconds
and a 1 kHz beep starting at the same instant (`mark_times` says exactly when). The helpers
`flash_times`, `beep_times` and `sync_offsets` find them again in anything ffmpeg reads (a
file, an http URL, an HLS playlist), in the file's own timeline: nothing is reset to zero, so
an output that starts late, or whose sound slipped, shows it.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from tests.clips import _CACHE

SAMPLE_RATE = 48000
BEEP_HZ = 1000
BEEP_SECONDS = 0.04
BEEP_LEVEL = 0.5  # of full scale: loud next to codec noise, far from clipping

# Frame rates cycled frame by frame: (30, 24) alternates 1/30 s and 1/24 s intervals (the last
# of each period 1/15 s: 1 s is no whole number of the pair, see _Cadence). A phone in low
# light slides between 30 and 20-24 fps from one frame to the next: VFR_PHONE is that.
CFR_30 = (30,)
VFR_ALTERNATING = (30, 24)
VFR_PHONE = (30, 30, 24, 30, 24, 24, 20, 24, 30, 24, 30, 24, 30)  # 13 frames a half second

# surround_51's channels: a tone each, distinct, so a swapped or dropped channel is audible and
# measurable (`tone_frequencies`); the centre carries the "dialogue": a tone at a speech
# fundamental, amplitude-modulated at a syllable rate.
SURROUND_TONES = {"FL": 440, "FR": 550, "FC": 250, "LFE": 60, "BL": 330, "BR": 660}

# Samples an encoder puts before the first one it was given (its priming), by which its first
# packet starts earlier than its first input: a stream meant to start at t is cut this much
# later so that its first packet, the start ffprobe reports, is at t.
_PRIMING = {"aac": 1024, "mp2": 481}
# Opus's pre-skip, its priming: the first packet starts this many samples before the first
# one given. (ffmpeg 5.1's WebM muxer and demuxer both counted it, skewing the sound by 6.5 ms;
# the pinned 9.0 counts it once.)
_OPUS_PRESKIP = 312

_FFMPEG = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
_H264 = ["-c:v", "libx264", "-preset", "superfast", "-profile:v", "high", "-pix_fmt", "yuv420p"]

Source = str | Path  # a local file, or any URL ffmpeg reads (http, an HLS .m3u8)


# --- making and caching ------------------------------------------------------------------------


def _cached(path: Path, args: list[str], *, pipe: str | None = None) -> Path:
    """Run ffmpeg with `args` once per session and copy the result to `path`.

    `pipe` (a muxer name) writes to ffmpeg's stdout instead of a file: a non-seekable output,
    so the muxer cannot go back to fill in what it only knows at the end (WebM's duration and
    cues), as a browser's recorder cannot either.
    """
    key = "\0".join([*args, f"pipe={pipe}"])
    cached = _CACHE / (hashlib.sha256(key.encode()).hexdigest()[:20] + path.suffix)
    if not cached.exists():
        partial = cached.with_name(f".{cached.name}")  # the same suffix: the same muxer
        if pipe is None:
            subprocess.run([*_FFMPEG, *args, str(partial)], check=True, timeout=300)
        else:
            with partial.open("wb") as out:
                cmd = [*_FFMPEG, *args, "-f", pipe, "pipe:1"]
                subprocess.run(cmd, check=True, stdout=out, timeout=300)
        partial.replace(cached)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, path)
    return path


@dataclass(frozen=True)
class _Cadence:
    """When frames are shown within one period of the marks, in ticks of 1/tick_rate s.

    Frame intervals follow the rates cycled frame by frame and start again at every period,
    so each period starts with a frame: the flash is always on a frame at exactly k*period.
    A remainder shorter than the shortest interval is added to the last one rather than made
    a frame of its own: the cadence never runs faster than the fastest rate asked for (a
    30 fps encode of it drops no frame).
    """

    tick_rate: int
    period_ticks: int
    ticks: tuple[int, ...]

    @classmethod
    def of(cls, rates: Sequence[int], period: float) -> _Cadence:
        if not rates or any(r <= 0 for r in rates):
            raise ValueError(f"frame rates must be positive: {rates}")
        tick_rate = math.lcm(*rates)
        if tick_rate > 600:
            raise ValueError(f"rates {rates} need {tick_rate} ticks a second; keep it to 600")
        period_ticks = Fraction(str(period)) * tick_rate
        if period_ticks.denominator != 1:
            raise ValueError(f"period {period} s is not a whole number of 1/{tick_rate} s")
        n = int(period_ticks)
        steps = [tick_rate // r for r in rates]
        ticks, t, i = [], 0, 0
        while t < n:
            ticks.append(t)
            t += steps[i % len(steps)]
            i += 1
        if len(ticks) > 1 and n - ticks[-1] < min(steps):
            ticks.pop()
        return cls(tick_rate, n, tuple(ticks))

    @property
    def constant(self) -> bool:
        edges = (*self.ticks, self.period_ticks)
        return len({b - a for a, b in itertools.pairwise(edges)}) == 1


def mark_times(seconds: float, period: float = 1.0, *, at: float = 0.0) -> list[float]:
    """The source times of the sync marks (flash and beep onsets) of a `seconds`-long source:
    every `period` from `period` on (none at 0: a flash needs a frame before it to be seen as
    one, and an early sound needs room before it), plus `at` (where the timeline starts)."""
    count = math.ceil(round(seconds / period, 9)) - 1
    return [round(at + k * period, 9) for k in range(1, count + 1)]


def _marked_video(
    *, seconds: float, size: str, period: float, rates: Sequence[int], interlaced: bool = False
) -> tuple[list[str], str, int]:
    """lavfi input arguments and the filter chain of the marked picture, and its tick rate.

    The background is testsrc2 dimmed to a third (moving, so encoders and deinterlacers have
    something to work on, yet far darker than the white flash). A variable cadence is made by
    giving each generated frame its time with setpts: frames are made only where they are
    kept, so a 130 s phone clip costs its 3500 frames, not 15600 at the tick rate.
    """
    cad = _Cadence.of(rates, period)
    per = len(cad.ticks)  # frames in each period
    fps = Fraction(per) / Fraction(str(period))
    dim = "lutyuv=y=val/3+16"
    if interlaced:
        if not cad.constant:
            raise ValueError("an interlaced source has a constant frame rate")
        # Two fields a frame: made as 2x progressive frames, woven top field first; the flash
        # covers both fields of its frame.
        src = f"testsrc2=size={size}:rate={fps * 2}:duration={seconds}"
        flash = f"drawbox=c=white:t=fill:enable='lt(mod(n,{2 * per}),2)*gte(n,{2 * per})'"
        chain = f"{dim},{flash},interlace=scan=tff:lowpass=0,setfield=tff"
        return ["-f", "lavfi", "-i", src], chain, cad.tick_rate
    flash = f"drawbox=c=white:t=fill:enable='eq(mod(n,{per}),0)*gte(n,{per})'"
    if cad.constant:
        src = f"testsrc2=size={size}:rate={fps}:duration={seconds}"
        return ["-f", "lavfi", "-i", src], f"{dim},{flash}", int(fps)
    # A few frames more than needed, cut by their new times: frame n is shown at
    # floor(n/per)*period + ticks[n mod per].
    src = f"testsrc2=size={size}:rate={fps}:duration={seconds + float(period)}"
    offsets = "+".join(f"eq(mod(N,{per}),{j})*{t}" for j, t in enumerate(cad.ticks) if t)
    pts = f"floor(N/{per})*{cad.period_ticks}+{offsets}"
    chain = f"{dim},{flash},settb=1/{cad.tick_rate},setpts='{pts}',trim=end={seconds}"
    return ["-f", "lavfi", "-i", src], chain, cad.tick_rate


def _beeps(seconds: float, period: float, channels: int) -> str:
    """aevalsrc of silence with a 1 kHz beep every `period` from `period` on, counted in
    samples (not in t, a float: the onsets fall on exact samples), starting at phase 0."""
    per = Fraction(str(period)) * SAMPLE_RATE
    if per.denominator != 1:
        raise ValueError(f"period {period} s is not a whole number of samples")
    n = int(per)
    length = round(BEEP_SECONDS * SAMPLE_RATE)
    one = (
        f"if(gte(n,{n})*lt(mod(n,{n}),{length}),"
        f"{BEEP_LEVEL}*sin(2*PI*{BEEP_HZ}*mod(n,{n})/{SAMPLE_RATE}),0)"
    )
    src = f"aevalsrc=exprs='{one}':s={SAMPLE_RATE}:c=mono:d={seconds}"
    if channels == 1:
        return src
    if channels == 2:  # the same in both: evaluated once, copied (aevalsrc is the slow part)
        return f"{src},pan=stereo|c0=c0|c1=c0"
    raise ValueError("mono or stereo beeps")


def _container(path: Path, container: str | None) -> str:
    kind = container or path.suffix.lstrip(".").lower()
    if kind not in ("mp4", "mov", "m4v", "mkv", "webm"):
        raise ValueError(f"no marked source as {kind!r} (MPEG-TS: broadcast_ts)")
    return {"m4v": "mp4", "mkv": "matroska"}.get(kind, kind)


def _marked(
    kind: str,
    *,
    seconds: float,
    rate_pattern: Sequence[int],
    period: float,
    offset: float,
    size: str,
    channels: int,
) -> tuple[list[str], int]:
    """ffmpeg's inputs, filters and maps for a marked picture and sound bound for `kind`
    (mp4, mov, matroska, webm), with the sound `offset` s late; and the picture's tick rate.

    Where the sound's first packet would start before zero, a muxer without edit lists
    (Matroska, WebM) moves every track later to make it non-negative, marks and all. So
    there the encoder's priming (AAC's 1024 samples, Opus's pre-skip) is cut from the silent
    start instead, the first packet then at `offset` or 0. An mp4/mov keeps its
    priming behind an edit list, as every AAC mp4 does.
    """
    vin, chain, tick_rate = _marked_video(
        seconds=seconds, size=size, period=period, rates=rate_pattern
    )
    priming = {"webm": _OPUS_PRESKIP, "matroska": _PRIMING["aac"]}.get(kind, 0)
    args = [*vin]
    if offset:
        args += ["-itsoffset", f"{offset}"]
    args += ["-f", "lavfi", "-i", _beeps(seconds, period, channels)]
    cut = max(offset, 0.0) + priming / SAMPLE_RATE if priming else 0.0
    audio = f"[1:a]atrim=start={cut}[a]" if cut else "[1:a]anull[a]"
    args += ["-filter_complex", f"[0:v]{chain}[v];{audio}", "-map", "[v]", "-map", "[a]"]
    # Every frame at its own time: no frame rate conversion, the encoder counting in ticks.
    args += ["-fps_mode", "passthrough", "-enc_time_base:v", f"1/{tick_rate}"]
    return args, tick_rate


def flash_beep(
    path: Path,
    *,
    seconds: float = 3.0,
    rate_pattern: Sequence[int] = CFR_30,
    period: float = 1.0,
    offset: float = 0.0,
    container: str | None = None,
    size: str = "320x180",
    channels: int = 1,
    gop: int | None = None,
) -> Path:
    """A sync-marker source: a flash on exactly one frame and a beep starting on the same
    instant, at every `mark_times(seconds, period)` (as ffmpeg reads the file back).

    `rate_pattern` gives the frame rates cycled frame by frame (see _Cadence): (30,) is
    constant, VFR_ALTERNATING and VFR_PHONE are variable; a variable cadence goes into an
    mp4/mov with the 600 timescale a phone uses, so its frame durations really vary.

    `offset` moves the whole sound track (its beeps and its stream's start) that much later
    in the file, earlier if negative: a source out of sync on purpose, its beeps at
    `mark_times(...)` + offset, for pairing keep |offset| < period / 2. The picture keeps
    the marks' times.

    The container comes from the suffix (mp4, mov, m4v, mkv: H.264 High + AAC; webm: VP8 +
    Opus) or `container`. `gop` caps the keyframe interval in frames and turns scene-cut
    keyframes off (a keyframe-sparse source, to cut an edited file from).
    """
    kind = _container(path, container)
    args, tick_rate = _marked(
        kind,
        seconds=seconds,
        rate_pattern=rate_pattern,
        period=period,
        offset=offset,
        size=size,
        channels=channels,
    )
    if kind == "webm":
        args += ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k"]
        args += ["-c:a", "libopus"]
    else:
        # The fast AAC coder: a third quicker, and beeps in silence need no finer one.
        args += [*_H264, "-c:a", "aac", "-aac_coder", "fast"]
    if gop:
        args += ["-g", str(gop), "-sc_threshold", "0"]
    args += ["-ar", str(SAMPLE_RATE)]
    if kind in ("mp4", "mov"):
        scale = 600 if 600 % tick_rate == 0 else 90000
        args += ["-video_track_timescale", str(scale)]
        if offset:
            # The sound's late start is an empty edit, timed in the movie's timescale: at the
            # default 1000 it would be rounded to the millisecond (the AAC priming before the
            # first sample makes it a fraction of one); at 48000 it is to the sample.
            args += ["-movie_timescale", str(SAMPLE_RATE)]
    return _cached(path, [*args, "-f", kind])


def phone_vfr(
    path: Path,
    *,
    seconds: float = 130.0,
    rate_pattern: Sequence[int] = VFR_PHONE,
    size: str = "320x180",
) -> Path:
    """What a phone records in low light: H.264 High at 20-30 fps frame by frame, stereo AAC
    at 48 kHz, in a mov (or mp4, by the suffix) with the 600 timescale, marks every second.
    Long by default: the length of a real short recording, chunked and segmented as such."""
    return flash_beep(path, seconds=seconds, rate_pattern=rate_pattern, size=size, channels=2)


def media_recorder_webm(
    path: Path,
    *,
    seconds: float = 3.0,
    codec: str = "vp8",
    rate_pattern: Sequence[int] = VFR_PHONE,
    size: str = "320x180",
    offset: float = 0.0,
) -> Path:
    """What a browser's MediaRecorder uploads: WebM, VP8 (or VP9) and Opus at 48 kHz, block
    times in milliseconds at a camera's variable rate, and neither a Duration in its Segment
    Info nor Cues: the recorder writes as it goes and never seeks back. Made the same way, by
    muxing to a pipe (the matroska muxer writes cues and duration only to a seekable output).
    Marks (and `offset`) as in flash_beep."""
    if codec == "vp8":
        video = ["-c:v", "libvpx"]
    elif codec == "vp9":
        video = ["-c:v", "libvpx-vp9", "-row-mt", "1"]
    else:
        raise ValueError(f"MediaRecorder records vp8 or vp9, not {codec!r}")
    args, _ = _marked(
        "webm",
        seconds=seconds,
        rate_pattern=rate_pattern,
        period=1.0,
        offset=offset,
        size=size,
        channels=1,
    )
    args += [*video, "-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k"]
    args += ["-c:a", "libopus", "-b:a", "64k", "-ar", str(SAMPLE_RATE)]
    return _cached(path, args, pipe="webm")


def broadcast_ts(
    path: Path,
    *,
    seconds: float = 3.0,
    start: float = 10.0,
    interlaced: bool = False,
    audio_delay: float = 0.0,
    audio_codec: str = "aac",
    size: str | None = None,
) -> Path:
    """A broadcast capture: MPEG-TS, H.264 (B-frames) and AAC or MP2, its clock starting at
    `start` s (the picture's first frame at exactly `start`), marks at
    `mark_times(seconds, at=start)`.

    `interlaced`: 25i, 720x576 by default, coded as interlaced (+ilme+ildct) top field first,
    the field order tagged. Else 25p at 640x360.
    `audio_delay`: the sound stream starts that much after the picture, as captures often do,
    still in sync (its first `audio_delay` s are cut, not shifted): the audio stream's start
    ffprobe reports is exactly `start + audio_delay` (the encoder's priming cut too).
    """
    if audio_codec not in _PRIMING:
        raise ValueError(f"audio_codec is one of {sorted(_PRIMING)}")
    if start < 0.2:
        raise ValueError("start leaves no room for the B-frames' decoding times before it")
    size = size or ("720x576" if interlaced else "640x360")
    vin, chain, _ = _marked_video(
        seconds=seconds, size=size, period=1.0, rates=(25,), interlaced=interlaced
    )
    args = [*vin, "-f", "lavfi", "-i", _beeps(seconds, 1.0, 2)]
    # Cut by the encoder's priming too: the first packet, not the first sample, at the start.
    cut = audio_delay + _PRIMING[audio_codec] / SAMPLE_RATE
    audio = f"[1:a]atrim=start={cut}[a]"
    args += ["-filter_complex", f"[0:v]{chain}[v];{audio}", "-map", "[v]", "-map", "[a]"]
    args += [*_H264, "-bf", "2"]
    if interlaced:
        args += ["-flags", "+ilme+ildct"]  # top field first: setfield=tff in the chain
    args += ["-c:a", audio_codec, "-ar", str(SAMPLE_RATE)]
    # No mux delay: the first frame is at `start`, not start + 1.4 s.
    args += ["-output_ts_offset", f"{start}", "-muxdelay", "0", "-muxpreload", "0", "-f", "mpegts"]
    return _cached(path, args)


def negative_start(
    path: Path,
    *,
    seconds: float = 5.0,
    cut: float = 2.5,
    how: str = "trim",
) -> Path:
    """An edited MP4/MOV: its first packets have negative times, hidden by edit lists.

    Cut out of a marked source (flash_beep, stereo) with a keyframe every 2 s and no other:
    how="trim": at `cut` s with -ss and stream copy, as an editor trims without re-encoding.
    The picture still starts at the keyframe before the cut (at 2.5 s: 0.5 s of frames at
    negative times, marked to be discarded), the sound about as early; both tracks' edit lists
    start presentation at the cut.
    how="offset": the whole file moved `cut` s earlier (-output_ts_offset -cut, negative
    times allowed): every track starts at -cut, its edit list hiding the first `cut` s.
    Either way the marks are at `mark_times(seconds)` - cut, those before 0 hidden; ffprobe's
    start_time is 0 (the edit lists applied), its packets' pts negative at first.
    """
    source = flash_beep(_CACHE / f"gop60-{seconds}.mp4", seconds=seconds, gop=60, channels=2)
    if how == "trim":
        args = ["-ss", f"{cut}", "-i", str(source), "-c", "copy"]
    elif how == "offset":
        args = ["-i", str(source), "-c", "copy", "-output_ts_offset", f"{-cut}"]
        args += ["-avoid_negative_ts", "disabled"]
    else:
        raise ValueError(f"how is 'trim' or 'offset', not {how!r}")
    return _cached(path, [*args, "-video_track_timescale", "600"])


_AUDIO_CODECS = {
    ".m4a": ["-c:a", "aac"],
    ".mp3": ["-c:a", "libmp3lame"],
    ".aac": ["-c:a", "aac", "-f", "adts"],
    ".wav": ["-c:a", "pcm_s16le"],
    ".flac": ["-c:a", "flac"],
    ".opus": ["-c:a", "libopus"],
    ".ogg": ["-c:a", "libvorbis"],
}


def _voice(freq: float, level: float = 0.3) -> str:
    """A speech-like tone: a fundamental in the voice range, its loudness rising and falling
    at a syllable rate (4 Hz), never quite to zero (so its pitch can be counted)."""
    return f"{level}*(0.6+0.4*sin(2*PI*4*t))*sin(2*PI*{freq}*t)"


def audio_only(
    path: Path,
    *,
    seconds: float = 2.0,
    channels: int = 2,
    codec: str | None = None,
    period: float | None = None,
) -> Path:
    """A sound-only file, its codec by the suffix: .m4a AAC, .mp3 MP3, .aac ADTS AAC, .wav
    PCM, .flac FLAC, .opus Opus, .ogg Vorbis (`codec` overrides: e.g. "libopus" in .ogg).
    A speech-like tone (200 Hz left, 300 Hz right: a swap shows) or, with `period`, silence
    with beeps at `mark_times(seconds, period)` that beep_times finds: exactly there in .m4a,
    .wav, .flac, .opus, .ogg; in .mp3 1105 samples (23 ms) later, the LAME delay ffmpeg
    shows as a start time; in raw .aac 1024 samples later, the priming no edit list hides."""
    suffix = path.suffix.lower()
    if suffix not in _AUDIO_CODECS:
        raise ValueError(f"no sound-only file as {suffix!r}: one of {sorted(_AUDIO_CODECS)}")
    if channels not in (1, 2):
        raise ValueError("mono or stereo")
    if period is not None:
        src = _beeps(seconds, period, channels)
    else:
        exprs = "|".join(_voice(f) for f in (200, 300)[:channels])
        layout = "mono" if channels == 1 else "stereo"
        src = f"aevalsrc=exprs='{exprs}':s={SAMPLE_RATE}:c={layout}:d={seconds}"
    args = ["-f", "lavfi", "-i", src, *_AUDIO_CODECS[suffix]]
    if codec:
        args += ["-c:a", codec]
    return _cached(path, [*args, "-ar", str(SAMPLE_RATE)])


# --- the earlier cases, kept reproducible ------------------------------------------------------


def _plain(size: str, seconds: float, rate: str | int, audio: bool = True) -> list[str]:
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    return args


def interlaced_25i(path: Path, *, seconds: float = 2.0, size: str = "720x576") -> Path:
    """PAL SD television: 25 frames of two fields each, top field first, coded interlaced and
    tagged so (field_order tt); the fields come from 50 different moments (real motion between
    them, for a deinterlacer to find). mp4, mov, mkv or ts by the suffix."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=50:duration={seconds}"]
    args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    args += ["-vf", "interlace=scan=tff:lowpass=0,setfield=tff", *_H264]
    args += ["-flags", "+ilme+ildct", "-c:a", "aac"]
    return _cached(path, args)


def anamorphic_pal(
    path: Path, *, seconds: float = 1.0, sar: str = "16/15", audio: bool = False
) -> Path:
    """PAL DV style: 720x576 coded, pixels not square (16:15 is 4:3, 64:45 is 16:9), shown at
    768x576 or 1024x576: a pipeline must scale by the display size, not the coded one."""
    args = [*_plain("720x576", seconds, 25, audio), "-vf", f"setsar={sar}", *_H264]
    return _cached(path, [*args, "-c:a", "aac"] if audio else args)


def rotated_portrait(
    path: Path, *, seconds: float = 1.0, size: str = "1280x720", rotate: int = 90
) -> Path:
    """A phone held upright: coded landscape (`size`), with a display matrix turning it by
    `rotate` degrees (ffprobe's side_data_list shows it: "Display Matrix", rotation), so it
    shows as portrait, as a phone writes it: the picture copied, the matrix added (the same
    matrix as the `rotate` tag that older ffmpeg releases turned into one)."""
    plain = _cached(
        _CACHE / f"plain-{size}-{seconds}.mp4",
        [*_plain(size, seconds, 30), *_H264, "-c:a", "aac"],
    )
    args = ["-display_rotation", str(rotate), "-i", str(plain), "-c", "copy"]
    return _cached(path, args)


def surround_51(path: Path, *, seconds: float = 2.0, video: bool = True) -> Path:
    """A film's sound: 5.1 AAC at 48 kHz, a different tone in each channel (SURROUND_TONES),
    the centre a speech-like one (the dialogue a downmix must keep), LFE a 60 Hz hum. With a
    small picture unless `video` is False (then suffix .m4a, say)."""
    exprs = "|".join(
        _voice(f) if ch == "FC" else f"0.3*sin(2*PI*{f}*t)" for ch, f in SURROUND_TONES.items()
    )
    src = f"aevalsrc=exprs='{exprs}':s={SAMPLE_RATE}:c=5.1:d={seconds}"
    args = _plain("320x180", seconds, 25, audio=False) + _H264 if video else []
    args = ["-f", "lavfi", "-i", src, *args, "-c:a", "aac", "-b:a", "256k"]
    return _cached(path, args)


def ntsc_rates(
    path: Path, *, seconds: float = 2.0, rate: str = "30000/1001", size: str = "640x360"
) -> Path:
    """NTSC's rates, exactly: 30000/1001 (29.97) or 24000/1001 (23.976, film on NTSC), not
    their rounded decimals, which drift by a frame every 33 s."""
    if rate not in ("30000/1001", "24000/1001", "60000/1001"):
        raise ValueError(f"an NTSC rate: 30000/1001, 24000/1001 or 60000/1001, not {rate}")
    return _cached(path, [*_plain(size, seconds, rate), *_H264, "-c:a", "aac"])


# --- measuring ---------------------------------------------------------------------------------


# --- HDR: a known SDR picture, and the HDR video a phone would have made of it -------------

# HDR10 static metadata of a P3 mastering display (1000 / 0.0001 cd/m2), as phones write it.
MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
# SDR reference white in an HDR signal (BT.2408): 203 cd/m2.
SDR_WHITE_NITS = 203


def sdr_picture(path: Path, *, seconds: float = 2.0, size: str = "640x360") -> Path:
    """The known SDR picture HDR sources are made from, 8-bit BT.709, losslessly (FFV1 in
    Matroska): `testsrc2` (colour bars, gradients, moving text) beside a full colour
    spectrum, tagged BT.709 throughout."""
    width, height = (int(v) for v in size.split("x"))
    graph = (
        "[0]format=gbrp[a];[1]format=gbrp[b];[a][b]vstack,"
        "scale=out_color_matrix=bt709:out_range=tv:flags=accurate_rnd+full_chroma_int,"
        "format=yuv420p,setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709"
    )
    args = [
        "-f", "lavfi", "-i", f"testsrc2=s={width}x{height // 2}:r=25:d={seconds}",
        "-f", "lavfi", "-i", f"colorspectrum=s={width}x{height // 2}:r=25:d={seconds}:type=all",
        "-filter_complex", graph, "-t", f"{seconds}", "-c:v", "ffv1",
        "-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709",
        "-color_range", "tv",
    ]  # fmt: skip
    return _cached(path, args)


def _highlights(knee: float = 0.5, peak_nits: float = 1000) -> str:
    """A filter (linear float RGB, 1.0 = SDR white) that pushes what is above `knee` of white
    up to `peak_nits`, as a phone's HDR capture holds highlights the SDR picture clipped.
    R, G and B are scaled alike by the curve of their maximum, so hues stay; below the knee
    nothing changes, which is the part a tone map with the same knee gives back exactly."""
    peak = peak_nits / SDR_WHITE_NITS
    curve = (
        "st(0,max(max(r(X,Y),g(X,Y)),b(X,Y)));st(2,min(ld(0),1));"
        f"st(1,if(lte(ld(0),{knee}),1,(ld(2)+{peak - 1:.6f}*pow((ld(2)-{knee})/{1 - knee},3))"
        "/ld(0)))"
    )
    return f"geq=r='{curve};r(X,Y)*ld(1)':g='{curve};g(X,Y)*ld(1)':b='{curve};b(X,Y)*ld(1)'"


def hdr_from_sdr(
    path: Path, reference: Path, *, transfer: str = "pq", highlights: bool = False
) -> Path:
    """What a phone's HDR video of `reference` (sdr_picture) is: its picture in linear light,
    BT.2020 primaries, PQ (`transfer="pq"`, HDR10 metadata in SEI) or HLG, SDR white at
    BT.2408's 203 cd/m2, 10-bit HEVC Main 10 tagged `hvc1` in MOV, its colour in the VUI
    and the colr box. Tone-mapping it back must give `reference` again; with `highlights`,
    the top half of the range is pushed up to 1000 cd/m2 first, as phones capture it."""
    trc = {"pq": "smpte2084", "hlg": "arib-std-b67"}[transfer]
    expand = f"{_highlights()},zscale=p=bt2020," if highlights else "zscale=p=bt2020,"
    x265 = ["colorprim=bt2020", f"transfer={trc}", "colormatrix=bt2020nc", "range=limited",
            "repeat-headers=1", "log-level=error"]  # fmt: skip
    if transfer == "pq":
        x265 += [f"master-display={MASTER_DISPLAY}", "max-cll=1000,400", "hdr10=1", "hdr10-opt=1"]
    args = [
        "-i", str(reference),
        "-vf", "zscale=tin=bt709:pin=bt709:min=bt709:rin=tv:t=linear,format=gbrpf32le,"
        f"{expand}zscale=t={trc}:m=bt2020nc:r=tv:npl={SDR_WHITE_NITS},format=yuv420p10le",
        "-c:v", "libx265", "-preset", "superfast", "-crf", "10", "-profile:v", "main10",
        "-tag:v", "hvc1", "-x265-params", ":".join(x265),
        "-color_primaries", "bt2020", "-color_trc", trc, "-colorspace", "bt2020nc",
        "-color_range", "tv", "-an",
    ]  # fmt: skip
    return _cached(path, args)


def dolby_vision(path: Path, base: Path, *, compatibility: int = 4) -> Path:
    """An iPhone's Dolby Vision video, as far as a pipeline without a Dolby decoder sees it:
    `base` (an hdr_from_sdr MOV, HLG for profile 8.4's compatibility id 4, PQ for 8.1's 1)
    with the Dolby Vision configuration box (`dvvC`, profile 8) phones put beside `hvcC`.
    ffprobe then reports its "DOVI configuration record"; the picture every decoder shows
    is the base layer's. (Its RPU NAL units are not made: ffmpeg 5.1 cannot write them, and
    decoders skip them.)"""
    # dv_version 1.0; profile 8, level 4, rpu and base layer present, no enhancement layer;
    # the base layer's compatibility; the rest reserved.
    bits = (8 << 9) | (4 << 3) | 0b101
    payload = bytes([1, 0]) + bits.to_bytes(2, "big") + (compatibility << 28).to_bytes(4, "big")
    return add_entry_box(path, base, b"dvvC", payload + bytes(16))


def add_entry_box(path: Path, source: Path, kind: bytes, payload: bytes) -> Path:
    """`source` (a MOV/MP4 with its index after its media) with one more box in its video
    sample entry, after the decoder configuration (`avcC`/`hvcC`): what a camera or phone
    writes there (Dolby Vision's `dvvC`, HDR10's `mdcv` and `clli`)."""
    data = bytearray(source.read_bytes())
    box = (8 + len(payload)).to_bytes(4, "big") + kind + payload
    parents = _box_path(data, [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"])
    entry_at = parents[-1] + 16  # the full box header (8 + 4) and its entry count (4)
    config = next(data.find(c, entry_at) for c in (b"hvcC", b"avcC") if data.find(c, entry_at) > 0)
    insert_at = (config - 4) + int.from_bytes(data[config - 4 : config], "big")
    if data.index(b"moov") < data.index(b"mdat"):
        raise ValueError("the index comes before the media: chunk offsets would move")
    for at in [*parents, entry_at]:  # every box around the new one grows by its size
        size = int.from_bytes(data[at : at + 4], "big")
        data[at : at + 4] = (size + len(box)).to_bytes(4, "big")
    data[insert_at:insert_at] = box
    path.write_bytes(bytes(data))
    return path


def _box_path(data: bytes | bytearray, names: list[bytes]) -> list[int]:
    """The offsets of nested ISO BMFF boxes, outermost first (the first video track's)."""
    found, start, end = [], 0, len(data)
    for name in names:
        at = start
        while at < end:
            size = int.from_bytes(data[at : at + 4], "big")
            if data[at + 4 : at + 8] == name and (
                name != b"trak" or b"vide" in data[at : at + size]
            ):
                break
            at += max(size, 8)
        else:
            raise ValueError(f"no {name.decode()} box")
        found.append(at)
        start, end = at + 8, at + size
    return found


def ssim_against(encoded: Source, reference: Source) -> float:
    """Mean SSIM (all planes) of `encoded` against `reference`, frame by frame from their
    starts, the reference scaled to the encoded picture's size."""
    stream = ffprobe(encoded, "-select_streams", "v:0", "-show_entries", "stream=width,height")
    size = stream["streams"][0]
    graph = (
        f"[1:v]scale={size['width']}:{size['height']},format=yuv420p,setpts=PTS-STARTPTS[r];"
        "[0:v]format=yuv420p,setpts=PTS-STARTPTS[e];[e][r]ssim"
    )
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(encoded), "-i", str(reference),
         "-filter_complex", graph, "-f", "null", "-"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    found = re.findall(r"SSIM .* All:([0-9.]+)", done.stderr)
    if not found:
        raise RuntimeError(f"no SSIM in ffmpeg's output: {done.stderr[-500:]}")
    return float(found[-1])


def _run(args: list[str], timeout: float = 300) -> bytes:
    """stdout of a command; its stderr in the error when it fails (ffmpeg says why there)."""
    done = subprocess.run(args, capture_output=True, timeout=timeout)
    if done.returncode:
        tail = done.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"{' '.join(args)}\nexit {done.returncode}: {tail}")
    return done.stdout


def ffprobe(src: Source, *args: str) -> dict[str, Any]:
    """ffprobe's JSON for `src` with the given -show_* arguments."""
    out = _run(["ffprobe", "-v", "error", "-print_format", "json", *args, str(src)], timeout=120)
    data: dict[str, Any] = json.loads(out)
    return data


def start_times(src: Source) -> dict[str, float]:
    """The start time (s) ffprobe reports for the first stream of each type ("video",
    "audio", ...) and for the whole file ("format"): the demuxer's own, not reset to zero."""
    data = ffprobe(src, "-show_entries", "stream=codec_type,start_time:format=start_time")
    starts: dict[str, float] = {}
    for stream in data.get("streams", []):
        kind, start = stream.get("codec_type"), stream.get("start_time")
        if kind and start not in (None, "N/A") and kind not in starts:
            starts[kind] = float(start)
    start = data.get("format", {}).get("start_time")
    if start not in (None, "N/A"):
        starts["format"] = float(start)
    return starts


def frame_times(src: Source) -> list[float]:
    """The presentation times (s) of the frames of the first video stream, in order: from its
    packets (no decoding, so cheap), leaving out those marked to be discarded (the frames an
    edit list hides)."""
    data = ffprobe(src, "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags")
    return sorted(
        float(p["pts_time"])
        for p in data["packets"]
        if p.get("pts_time") not in (None, "N/A") and "D" not in p.get("flags", "")
    )


def frame_luma(src: Source) -> list[tuple[float, float]]:
    """(presentation time in s, mean luma) of every decoded frame of the first video stream.

    -copyts: the times the file gives, not moved to start at zero. The frames are shrunk
    first (the mean barely changes, its cost does), and timed in microseconds (settb=AVTB:
    metadata's own pts_time has 6 significant digits, not enough at 100 s and more).
    """
    chain = "settb=AVTB,scale=64:36,signalstats,metadata=print:key=lavfi.signalstats.YAVG:file=-"
    out = _run(
        [*_FFMPEG, "-copyts", "-i", str(src), "-map", "0:v:0", "-vf", chain, "-f", "null", "-"]
    ).decode()
    frames: list[tuple[float, float]] = []
    pts: float | None = None
    for line in out.splitlines():
        if line.startswith("frame:"):
            fields = dict(f.split(":", 1) for f in line.split() if ":" in f)
            pts = int(fields["pts"]) / 1_000_000 if fields.get("pts", "NOPTS") != "NOPTS" else None
        elif line.startswith("lavfi.signalstats.YAVG=") and pts is not None:
            frames.append((pts, float(line.split("=", 1)[1])))
            pts = None
    return frames


def flash_times(src: Source, *, min_jump: float = 40.0) -> list[float]:
    """The presentation times (s) of the frames where a flash starts: a frame brighter than
    halfway between the darkest and the brightest frame after one that was not. None when the
    brightest frame is less than `min_jump` (of 255) above the darkest: no flash at all. The
    first frame never counts: nothing before it to jump from."""
    frames = frame_luma(src)
    if not frames:
        return []
    lumas = [y for _, y in frames]
    low, high = min(lumas), max(lumas)
    if high - low < min_jump:
        return []
    mid = (low + high) / 2
    return [t for i, (t, y) in enumerate(frames) if i and y > mid and frames[i - 1][1] <= mid]


def audio_samples(
    src: Source, *, origin: float | None = None, tolerance: float = 0.002
) -> tuple[float, array.array[int]]:
    """The first audio stream, mixed to mono 16-bit 48 kHz, placed by its timestamps: returns
    (time of sample 0 in s, samples).

    ffmpeg's raw output has no timestamps: a stream starting at 10.04 s, or one with a gap,
    would come out as if it started at 0 and ran on without one. So the samples go through
    aresample with async on: it pads and trims to the frames' timestamps wherever they and
    the running count of samples disagree by more than `tolerance` (a gap or an overlap),
    counting from `first_pts`, here `origin` (by default 0.1 s before the stream's start as
    ffprobe reports it: silence at first, never a sample lost); with -copyts those
    timestamps are the file's own. Sample i is then at origin + i / 48000.

    2 ms finds small gaps, and AAC, Opus, MP3 and FLAC frames are timed to the sample. Vorbis
    in Ogg is not: ffmpeg estimates its frames' times, off by up to 3 ms, and a 2 ms tolerance
    follows them; read it with tolerance=0.01.
    """
    if origin is None:
        # Raw ADTS or MP3 may have no start time of their own: the file's, or 0.
        starts = start_times(src)
        origin = starts.get("audio", starts.get("format", 0.0)) - 0.1
    first = math.floor(origin * SAMPLE_RATE)
    chain = f"aresample={SAMPLE_RATE}:async=1:min_hard_comp={tolerance}:first_pts={first}"
    args = [*_FFMPEG, "-copyts", "-i", str(src), "-map", "0:a:0", "-af", chain]
    out = _run([*args, "-ac", "1", "-c:a", "pcm_s16le", "-f", "s16le", "pipe:1"])
    samples = array.array("h")
    samples.frombytes(out[: len(out) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return first / SAMPLE_RATE, samples


def beep_times(
    src: Source, *, min_gap: float = 0.1, floor: int = 1000, tolerance: float = 0.002
) -> list[float]:
    """The onset times (s) of the beeps in the first audio stream, in the file's timeline, to
    the sample: where the sound first rises above a quarter of its loudest after at least
    `min_gap` s below it. None if nothing is louder than `floor` (of 32767): silence.

    Found by 1 ms blocks (their max and min, done in C by the array) and then to the sample in
    the block where it rises: no numpy, and 130 s take a fraction of a second. A 1 kHz beep
    starting at phase 0 crosses the level 2 samples in: onsets read 0.04 ms late.
    `tolerance`: see audio_samples.
    """
    t0, x = audio_samples(src, tolerance=tolerance)
    if not x:
        return []
    peak = max(max(x), -min(x))
    if peak < floor:
        return []
    level = peak // 4
    block = SAMPLE_RATE // 1000
    gap = round(min_gap * SAMPLE_RATE)
    onsets: list[float] = []
    last_loud = -gap - 1
    for start in range(0, len(x), block):
        chunk = x[start : start + block]
        if max(chunk) <= level and -min(chunk) <= level:
            continue
        first = next(i for i, v in enumerate(chunk) if abs(v) > level) + start
        if first - last_loud > gap:
            onsets.append(t0 + first / SAMPLE_RATE)
        last_loud = start + max(i for i, v in enumerate(chunk) if abs(v) > level)
    return onsets


def pair_offsets(flashes: Sequence[float], beeps: Sequence[float]) -> list[float]:
    """For each flash, the nearest beep minus the flash (s): positive when the sound is late.
    Empty when there is no beep at all."""
    if not beeps:
        return []
    return [min((b - f for b in beeps), key=abs) for f in flashes]


def sync_offsets(video_src: Source, audio_src: Source | None = None) -> list[float]:
    """For each flash (in `video_src`), the nearest beep (in `audio_src`, by default the same
    source) minus the flash, in s: positive when the sound is late. Both in the files' own
    timelines, so a separate audio rendition is compared by its timestamps, as a player
    would."""
    beeps = beep_times(audio_src if audio_src is not None else video_src)
    return pair_offsets(flash_times(video_src), beeps)


def tone_frequencies(src: Source) -> dict[str, float]:
    """The frequency (Hz) of each channel of the first audio stream, by its zero crossings,
    keyed by channel name (by index, "c0", "c1"..., when the layout is unknown): for
    surround_51 and audio_only, whose channels each carry one tone (SURROUND_TONES)."""
    data = ffprobe(src, "-select_streams", "a:0", "-show_entries", "stream=channel_layout,channels")
    stream = data["streams"][0]
    count = int(stream["channels"])
    names = _LAYOUTS.get(stream.get("channel_layout", ""), [])
    if len(names) != count:
        names = [f"c{i}" for i in range(count)]
    args = [*_FFMPEG, "-i", str(src), "-map", "0:a:0", "-c:a", "pcm_s16le"]
    out = _run([*args, "-ar", str(SAMPLE_RATE), "-f", "s16le", "pipe:1"])
    x = array.array("h")
    x.frombytes(out[: len(out) // (2 * count) * 2 * count])
    if sys.byteorder == "big":
        x.byteswap()
    freqs: dict[str, float] = {}
    for i, name in enumerate(names):
        channel = x[i::count]  # interleaved: every count-th sample from the i-th
        rises = sum(1 for a, b in itertools.pairwise(channel) if a < 0 <= b)
        freqs[name] = rises * SAMPLE_RATE / max(len(channel), 1)
    return freqs


_LAYOUTS = {
    "mono": ["FC"],
    "stereo": ["FL", "FR"],
    "5.1": ["FL", "FR", "FC", "LFE", "BL", "BR"],
    "5.1(side)": ["FL", "FR", "FC", "LFE", "SL", "SR"],
}


# --- Matroska/WebM structure ------------------------------------------------------------------

EBML_IDS = {
    0x1A45DFA3: "EBML",
    0x18538067: "Segment",
    0x114D9B74: "SeekHead",
    0x1549A966: "Info",
    0x1654AE6B: "Tracks",
    0x1F43B675: "Cluster",
    0x1C53BB6B: "Cues",
    0x1254C367: "Tags",
    0x1941A469: "Attachments",
    0x1043A770: "Chapters",
    0xEC: "Void",
    0x2AD7B1: "TimestampScale",
    0x4489: "Duration",
    0x4D80: "MuxingApp",
    0x5741: "WritingApp",
    0x73A4: "SegmentUUID",
    0x7BA9: "Title",
    0x4461: "DateUTC",
}
_LEVEL1 = {0x114D9B74, 0x1549A966, 0x1654AE6B, 0x1F43B675, 0x1C53BB6B, 0x1254C367, 0x1941A469}


@dataclass
class MatroskaLayout:
    """What a Matroska/WebM file's Segment holds, by element (not by a byte search, which a
    frame's data can fool)."""

    segment_size_known: bool = True
    top: list[str] = field(default_factory=list)  # the Segment's children, in order
    info: dict[str, bytes] = field(default_factory=dict)  # Info's children, raw
    clusters: int = 0
    unknown_size_clusters: int = 0
    tags_duration: bool = False  # a DURATION tag, ffmpeg's per-track duration

    @property
    def has_cues(self) -> bool:
        return "Cues" in self.top

    @property
    def has_duration(self) -> bool:
        return "Duration" in self.info

    @property
    def timestamp_scale(self) -> int:
        raw = self.info.get("TimestampScale")
        return int.from_bytes(raw, "big") if raw is not None else 1_000_000  # the default


def _vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-size integer at `pos`: (value, next position, all ones = unknown)."""
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        raise ValueError(f"bad EBML number at {pos}")
    value = first if keep_marker else first & ((0x80 >> (length - 1)) - 1)
    for b in data[pos + 1 : pos + length]:
        value = value << 8 | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, pos + length, unknown


def matroska_layout(path: Path) -> MatroskaLayout:
    """The Segment's children and Info's elements of a Matroska/WebM file (see MatroskaLayout).

    A Segment or Cluster of unknown size (a live writer's) ends where an element of its
    parent's level starts, which is how a reader finds its end too.
    """
    data = path.read_bytes()
    layout = MatroskaLayout()
    pos = 0
    while pos < len(data):
        eid, pos, _ = _vint(data, pos, keep_marker=True)
        size, pos, unknown = _vint(data, pos, keep_marker=False)
        if eid != 0x18538067:  # the EBML header, or anything before the Segment
            pos += size
            continue
        layout.segment_size_known = not unknown
        end = len(data) if unknown else min(pos + size, len(data))
        while pos < end:
            cid, body, _ = _vint(data, pos, keep_marker=True)
            csize, body, cunknown = _vint(data, body, keep_marker=False)
            name = EBML_IDS.get(cid, f"0x{cid:X}")
            layout.top.append(name)
            if cid == 0x1F43B675:
                layout.clusters += 1
            if cunknown:
                layout.unknown_size_clusters += 1
                pos = _skip_unknown(data, body, end)
                continue
            content = data[body : body + csize]
            if cid == 0x1549A966:
                layout.info = _children(content)
            elif cid == 0x1254C367 and b"DURATION" in content:
                layout.tags_duration = True
            pos = body + csize
        break
    layout.top = [n for i, n in enumerate(layout.top) if i == 0 or n != layout.top[i - 1]]
    return layout


def _children(content: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(content):
        cid, pos, _ = _vint(content, pos, keep_marker=True)
        size, pos, _ = _vint(content, pos, keep_marker=False)
        out[EBML_IDS.get(cid, f"0x{cid:X}")] = content[pos : pos + size]
        pos += size
    return out


def _skip_unknown(data: bytes, pos: int, end: int) -> int:
    """The end of an unknown-size element whose body starts at `pos`: the first child that
    is a level-1 element."""
    while pos < end:
        cid, body, _ = _vint(data, pos, keep_marker=True)
        if cid in _LEVEL1:
            return pos
        size, body, _ = _vint(data, body, keep_marker=False)
        pos = body + size
    return end
