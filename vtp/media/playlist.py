"""The job's master playlist and poster image: the two outputs that span all renditions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vtp.errors import FfmpegError, InvalidRequest
from vtp.media import colour
from vtp.media.encode import HLS_PLAYLIST, RenditionResult
from vtp.media.ffmpeg import run_ffmpeg, untrusted_input
from vtp.models import RenditionSpec, SourceInfo
from vtp.settings import Settings

log = logging.getLogger(__name__)

POSTER_MAX_WIDTH = 1280
POSTER_POSITION = 0.10  # share of the duration: past fades from black and title cards
POSTER_JPEG_QUALITY = 3  # mjpeg qscale: 2 (best) .. 31 (worst)


class MasterEntry(BaseModel):
    """One variant stream of the master playlist.

    `name`, `folder` and `codecs` are written into the playlist verbatim, so they are
    restricted to characters that cannot break out of an attribute or a URI line.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    bandwidth: int = Field(gt=0, description="peak segment bit rate, bit/s")
    average_bandwidth: int = Field(gt=0, description="average segment bit rate, bit/s")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    codecs: str = Field(pattern=r"^[A-Za-z0-9.,]+$")
    fps: float = Field(gt=0)
    # The rendition's folder, relative to the master playlist (vtp.layout): `360p/attempt-2`.
    folder: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    # Measured quality at the ladder's largest picture size (vtp.media.quality): the SCORE.
    score: float | None = Field(default=None, gt=0, le=100)
    # An audio rendition's track: its language (BCP 47), the name players show, and
    # whether it is the one to play when the viewer's language is none of the group's.
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
    label: str | None = Field(default=None, pattern=r'^[^"\n\r]{1,64}$')
    default: bool = False
    forced: bool = False
    # A video rendition's I-frame playlist (vtp.media.iframes), in its folder, and its rates.
    iframes: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    iframe_bandwidth: int | None = Field(default=None, gt=0)
    iframe_average_bandwidth: int | None = Field(default=None, gt=0)
    # An HDR variant's VIDEO-RANGE (RFC 8216bis 4.4.6.2): "PQ" or "HLG"; None for SDR, the
    # default a player assumes.
    video_range: Literal["PQ", "HLG"] | None = None

    @property
    def uri(self) -> str:
        return f"{self.folder or self.name}/{HLS_PLAYLIST}"

    @classmethod
    def from_result(
        cls,
        result: RenditionResult,
        folder: str | None = None,
        *,
        score: object = None,
        spec: RenditionSpec | None = None,
    ) -> MasterEntry:
        """`spec`: the rendition's, for an audio track's language, name and default."""
        return cls(
            folder=folder,
            language=spec.language if spec else None,
            label=spec.label if spec else None,
            default=spec.default_track if spec else False,
            forced=spec.forced if spec else False,
            iframes=result.iframes,
            iframe_bandwidth=result.iframe_bandwidth,
            iframe_average_bandwidth=result.iframe_average_bandwidth,
            video_range=_video_range(spec),
            score=score if isinstance(score, int | float) and 0 < score <= 100 else None,
            name=result.name,
            bandwidth=result.peak_bitrate,
            average_bandwidth=result.avg_bitrate,
            width=result.width,
            height=result.height,
            codecs=result.codecs,
            fps=result.fps,
        )


def _video_range(spec: RenditionSpec | None) -> Literal["PQ", "HLG"] | None:
    if spec is None or spec.dynamic_range == "sdr":
        return None
    return "PQ" if spec.dynamic_range == "pq" else "HLG"


AUDIO_GROUP = "audio"
SUBTITLES_GROUP = "subs"


def master_playlist(
    entries: Sequence[MasterEntry],
    audio: Sequence[MasterEntry] = (),
    subtitles: Sequence[MasterEntry] = (),
) -> str:
    """The master playlist text, variants sorted by bandwidth (lowest first).

    Version 7 because the media playlists use fMP4 segments (EXT-X-MAP in a playlist
    without I-frames-only needs version 6+); INDEPENDENT-SEGMENTS because every segment
    starts with an IDR frame on the shared keyframe grid.

    `audio`: the job's sound tracks as renditions of their own, the members of the one
    audio group every variant names (a player offers them by LANGUAGE and NAME, and plays
    the DEFAULT one unless the viewer's language is another of them). Each variant's
    BANDWIDTH and AVERAGE-BANDWIDTH add the largest track's (RFC 8216: the peak of any
    combination a player may play), and its CODECS name both.

    SCORE (RFC 8216bis, 4.4.6.2) is each variant's measured VMAF at the ladder's largest
    picture size, so a player preferring by SCORE prefers what looks better on that screen.
    The draft asks for it on all variants or none, so it is written only when every variant
    was measured.
    """
    if not entries and not audio:
        raise InvalidRequest("a master playlist needs at least one rendition")
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS", ""]
    if not entries:
        return "\n".join(lines + _sound_only(audio)) + "\n"
    lines += _audio_media(audio)
    lines += _subtitle_media(subtitles)
    scored = all(e.score is not None for e in entries)
    sound = max(audio, key=lambda a: a.bandwidth, default=None)
    for entry in sorted(entries, key=_variant_order):
        codecs = entry.codecs + (f",{sound.codecs}" if sound is not None else "")
        peak = entry.bandwidth + (sound.bandwidth if sound else 0)
        average = entry.average_bandwidth + max((a.average_bandwidth for a in audio), default=0)
        attributes = [
            f"BANDWIDTH={peak}",
            f"AVERAGE-BANDWIDTH={average}",
            f"RESOLUTION={entry.width}x{entry.height}",
            f'CODECS="{codecs}"',
            f"FRAME-RATE={entry.fps:.3f}",
        ]
        if entry.video_range:
            attributes.append(f"VIDEO-RANGE={entry.video_range}")
        if scored:
            attributes.append(f"SCORE={entry.score:.2f}")
        if audio:
            attributes.append(f'AUDIO="{AUDIO_GROUP}"')
        if subtitles:
            attributes.append(f'SUBTITLES="{SUBTITLES_GROUP}"')
        lines += [f"#EXT-X-STREAM-INF:{','.join(attributes)}", entry.uri]
    lines += _iframe_streams(entries)
    return "\n".join(lines) + "\n"


def _sound_only(audio: Sequence[MasterEntry]) -> list[str]:
    """The master of a job of sound alone: one variant of sound, the default track's
    playlist, and with more than one track, the audio group a player offers them from (RFC
    8216 allows a variant whose CODECS name sound alone; players then play no picture)."""
    default = next((a for a in audio if a.default), audio[0])
    peak = max(a.bandwidth for a in audio)
    average = max(a.average_bandwidth for a in audio)
    attributes = [f"BANDWIDTH={peak}", f"AVERAGE-BANDWIDTH={average}",
                  f'CODECS="{default.codecs}"']  # fmt: skip
    lines = _audio_media(audio) if len(audio) > 1 else []
    if len(audio) > 1:
        attributes.append(f'AUDIO="{AUDIO_GROUP}"')
    return [*lines, f"#EXT-X-STREAM-INF:{','.join(attributes)}", default.uri]


def _variant_order(e: MasterEntry) -> tuple[int, int, str]:
    """Lowest bandwidth first, then the smaller picture: the order players start from."""
    return e.bandwidth, e.width * e.height, e.name


def _iframe_streams(entries: Sequence[MasterEntry]) -> list[str]:
    """An EXT-X-I-FRAME-STREAM-INF per video rendition with an I-frame playlist (trick
    play: vtp.media.iframes), lowest first; its CODECS are the video's alone."""
    lines = []
    for e in sorted(entries, key=_variant_order):
        if not e.iframes or not e.iframe_bandwidth:
            continue
        attributes = [
            f"BANDWIDTH={e.iframe_bandwidth}",
            *([f"AVERAGE-BANDWIDTH={e.iframe_average_bandwidth}"]
              if e.iframe_average_bandwidth else []),
            f"RESOLUTION={e.width}x{e.height}",
            f'CODECS="{e.codecs.split(",")[0]}"',
            *([f"VIDEO-RANGE={e.video_range}"] if e.video_range else []),
            f'URI="{e.folder or e.name}/{e.iframes}"',
        ]  # fmt: skip
        lines.append(f"#EXT-X-I-FRAME-STREAM-INF:{','.join(attributes)}")
    return ["", *lines] if lines else []


def _audio_media(audio: Sequence[MasterEntry]) -> list[str]:
    """The EXT-X-MEDIA lines of the audio group: exactly one DEFAULT=YES (the source's
    default track, else the first); every track AUTOSELECT=YES, so a player may pick one
    in the viewer's language."""
    if not audio:
        return []
    default = next((a for a in audio if a.default), audio[0])
    lines = []
    for a in audio:
        attributes = [
            "TYPE=AUDIO",
            f'GROUP-ID="{AUDIO_GROUP}"',
            f'NAME="{a.label or a.name}"',
            *([f'LANGUAGE="{a.language}"'] if a.language else []),
            f"DEFAULT={'YES' if a is default else 'NO'}",
            "AUTOSELECT=YES",
            'CHANNELS="2"',  # every track is encoded stereo (vtp.media.encode)
            f'URI="{a.uri}"',
        ]
        lines.append(f"#EXT-X-MEDIA:{','.join(attributes)}")
    return [*lines, ""]


def _subtitle_media(subtitles: Sequence[MasterEntry]) -> list[str]:
    """The EXT-X-MEDIA lines of the SUBTITLES group: none is DEFAULT (captions are the
    viewer's choice) unless it is forced, and a player may pick one by language."""
    lines = []
    for t in subtitles:
        attributes = [
            "TYPE=SUBTITLES",
            f'GROUP-ID="{SUBTITLES_GROUP}"',
            f'NAME="{t.label or t.name}"',
            *([f'LANGUAGE="{t.language}"'] if t.language else []),
            f"DEFAULT={'YES' if t.default else 'NO'}",
            "AUTOSELECT=YES",
            f"FORCED={'YES' if t.forced else 'NO'}",
            f'URI="{t.uri}"',
        ]
        lines.append(f"#EXT-X-MEDIA:{','.join(attributes)}")
    return [*lines, ""] if lines else []


def make_poster(source_url: str, source: SourceInfo, out_path: Path, settings: Settings) -> Path:
    """Write a JPEG still from about 10% into the video, at most POSTER_MAX_WIDTH wide.

    Falls back to the first frame when nothing decodes at the seek point (a video whose
    frames end before its audio does). Bounded by the probe timeout: it is one seek and one
    frame, not an encode.
    """
    width = min(POSTER_MAX_WIDTH, source.width)
    width -= width % 2
    height = max(2, round(width * source.height / source.width / 2) * 2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    attempts = (source.duration * POSTER_POSITION, 0.0)
    for attempt, position in enumerate(attempts, start=1):
        out_path.unlink(missing_ok=True)
        args = [
            # One decoding thread: a handful of frames, where frame threads cost a third
            # more CPU (0.14 against 0.10 CPU-s) beside the encodes, for no time saved.
            *untrusted_input(source_url, seek=position, threads=1),
            "-map",
            "0:V:0",
            "-an",
            "-sn",
            "-dn",
            "-map_metadata",
            "-1",
            "-frames:v",
            "1",
            "-vf",
            # The renditions' picture: an HDR source tone-mapped, in BT.709 (vtp.media.colour).
            ",".join(
                [*colour.scale_filters(colour.conversion_for(source), width, height), "setsar=1"]
            ),
            "-c:v",
            "mjpeg",
            "-q:v",
            str(POSTER_JPEG_QUALITY),
            "-f",
            "image2",
            "-update",
            "1",  # one image, written to exactly this name: no %d pattern expansion
            str(out_path),
        ]
        # Only the last attempt's failure is final; a failed seek falls back to the start.
        run_ffmpeg(args, timeout=settings.ffprobe_timeout_seconds, check=attempt == len(attempts))
        if out_path.is_file() and out_path.stat().st_size > 0:
            log.info("poster %dx%d at %.2fs: %s", width, height, position, out_path.name)
            return out_path
        log.info("no frame at %.2fs for the poster; trying the first frame", position)
    raise FfmpegError("no video frame could be decoded for the poster")
