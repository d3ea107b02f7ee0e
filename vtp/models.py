"""pydantic models for everything that crosses a boundary: events, requests, queue payloads.

Enums are `StrEnum` so that they serialise as plain strings in JSON, SQL and Redis; the job
and rendition states are the lifecycle's (vtp.lifecycle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vtp.errors import InvalidRequest

# The lifecycle's states, re-exported: boundaries carry them.
from vtp.lifecycle import JobState as JobState
from vtp.lifecycle import RenditionState as RenditionState
from vtp.lifecycle import TaskState as TaskState


class AudioTrack(BaseModel):
    """One sound track of a source, as a player's audio menu will show it."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0, description="among the source's audio streams: `-map 0:a:<index>`")
    codec: str
    channels: int | None = None
    language: str | None = Field(default=None, description="BCP 47 (`en`, `pt-BR`), if tagged")
    title: str | None = None
    default: bool = False


class TextTrack(BaseModel):
    """One subtitle stream of a source; only text ones can become WebVTT."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0, description="among the source's subtitle streams: `0:s:<index>`")
    codec: str
    language: str | None = None
    title: str | None = None
    default: bool = False
    forced: bool = False
    text: bool = Field(description="a text format (not bitmaps such as PGS or DVD subtitles)")


class SourceInfo(BaseModel):
    """What ffprobe found in a source, after sanity checks."""

    model_config = ConfigDict(frozen=True)

    duration: float = Field(gt=0, description="seconds")
    # 0 for a source of sound alone (has_video False): a voice memo, a podcast episode.
    width: int = Field(ge=0, description="display width, after rotation and sample aspect ratio")
    height: int = Field(ge=0, description="display height, after rotation and sample aspect ratio")
    fps: float = Field(ge=0)
    has_audio: bool
    video_codec: str = Field(description="'' when the source has no video")
    audio_codec: str | None = None
    format_name: str = ""
    size_bytes: int | None = None
    bit_rate: int | None = None
    rotation: int = 0
    # The video stream's own bit rate, as far as the file tells (vtp.media.probe.video_bit_rate):
    # no rendition is given more bits than the source's picture holds (vtp.media.ladder).
    video_bit_rate: int | None = None
    # Every sound track and subtitle stream, in the file's order (empty in jobs probed before
    # tracks were: their one sound is `-map 0:a:0`).
    audio_tracks: list[AudioTrack] = Field(default_factory=list)
    text_tracks: list[TextTrack] = Field(default_factory=list)
    # Seconds from the file's first timestamp (of any stream: ffmpeg counts from there) to
    # its picture's first frame: the origin of every rendition's timeline, so the picture
    # starts at 0 on its own frames and the sound keeps its place beside it
    # (vtp.media.timeline). 0 in jobs probed before.
    video_start: float = Field(default=0.0, ge=0)
    # The file's first timestamp on its own clock (an MPEG-TS capture's: 10 s, 95000 s):
    # encodes read time on that clock (vtp.media.timeline.CLOCK_ARGS). 0 in jobs before.
    start_time: float = 0.0
    # Frames at varying intervals (a phone in low light, a browser's recording): `fps` is
    # their average, and the renditions' rate a whole one at or above it (vtp.media.ladder).
    variable_frame_rate: bool = False

    @property
    def picture_origin(self) -> float:
        """Where the picture starts on the file's clock: every rendition's time 0."""
        return self.start_time + self.video_start

    # False when the file has no index to seek by (a recorder's WebM: no Cues, so its
    # duration was found by reading it through): it is encoded whole, never in chunks.
    seekable: bool = True
    # The picture's colour, as its stream tags it (ffprobe's names: "bt709", "smpte2084",
    # "arib-std-b67", "bt2020nc"...; None when untagged) and its dynamic range: "pq" (HDR10,
    # Dolby Vision's HDR10 base layer) and "hlg" are tone-mapped to SDR (vtp.media.colour).
    color_primaries: str | None = None
    color_transfer: str | None = None
    color_matrix: str | None = None
    dynamic_range: Literal["sdr", "pq", "hlg"] = "sdr"
    # An HDR picture's static metadata, in x265's notation, carried into HDR renditions:
    # its mastering display ("G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)") and its content light
    # levels ("MaxCLL,MaxFALL"); None when the source has none.
    mastering_display: str | None = Field(default=None, pattern=r"^[GBRWPL(),0-9]+$")
    content_light: str | None = Field(default=None, pattern=r"^[0-9]+,[0-9]+$")
    has_video: bool = True

    @model_validator(mode="after")
    def _picture_or_sound(self) -> SourceInfo:
        if self.has_video and min(self.width, self.height, self.fps) <= 0:
            raise ValueError("a video source has a picture size and a frame rate")
        if not self.has_video and not self.has_audio:
            raise ValueError("a source has a picture or a sound")
        return self


class RenditionEstimate(BaseModel):
    """What a rendition is predicted to cost and reach, from the samples split encoded
    (vtp.media.tuning): the plan a dry run returns, and what the real encode is compared with."""

    model_config = ConfigDict(frozen=True)

    metric: str = Field(description="the quality metric, e.g. 'vmaf'")
    quality: float = Field(description="predicted mean score over the rendition")
    bitrate: int = Field(ge=0, description="predicted average video bit rate, bit/s")
    size_bytes: int = Field(ge=0, description="predicted size of the video, bytes")
    encode_cpu_seconds: float = Field(ge=0, description="predicted encode CPU time, seconds")
    probes: list[tuple[float, float, int]] = Field(
        default_factory=list, description="(crf, score, bit/s) of each sample encode"
    )


class RenditionSpec(BaseModel):
    """One rung of the ladder, fully resolved: everything transcode needs to encode it."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="e.g. '720p'; the short side in pixels plus 'p'")
    function: str = Field(description="the transcode-<resolution> function that encodes it")
    width: int = Field(gt=0, multiple_of=2)
    height: int = Field(gt=0, multiple_of=2)
    fps: float = Field(gt=0)
    video_bitrate: int = Field(
        gt=0, description="bits per second: the target (crf None), else the cap (VBV maxrate)"
    )
    max_bitrate: int = Field(gt=0)
    buffer_size: int = Field(gt=0)
    # Rate control by quality (vtp.media: ladder, tuning): x264's constant-rate factor under
    # the VBV cap above. None: a bit-rate target (`-b:v`), how jobs planned before were
    # encoded. The factor and preset are decided once per title, in the plan, so every
    # chunk of a rendition is encoded alike whichever replica runs it.
    crf: float | None = Field(default=None, ge=0, le=51)
    preset: str | None = None
    # The quality the factor was chosen for (VMAF, vtp.media.quality; an SSIM in jobs planned
    # before VMAF: their estimate's metric says so), and what the samples predicted of the
    # whole rendition; None where no samples were taken.
    quality_target: float | None = Field(default=None, gt=0, le=100)
    estimate: RenditionEstimate | None = None
    audio_bitrate: int | None = Field(default=None, description="None when the source is silent")
    profile: str = "high"
    level: str = "4.1"
    # Which video codec (vtp.media.codecs): every job's ladder is H.264; a job may add HEVC
    # and AV1 ladders beside it (`720p-hevc`, `720p-av1`).
    codec: Literal["h264", "hevc", "av1"] = "h264"
    # The job's sound alone, encoded once for the whole source (a job encoded in chunks:
    # vtp.media.chunks), and referenced by every video variant as an HLS audio group; its video
    # fields are those of the rung whose function encodes it, and unused.
    audio_only: bool = False
    # An audio rendition's track (vtp.media.ladder.audio_renditions): which of the source's sound
    # streams, and how the master playlist and the MPD name it.
    audio_track: int = Field(default=0, ge=0)
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
    label: str | None = Field(default=None, max_length=64)
    default_track: bool = False
    # EBU R128 integrated loudness to normalise the sound to (LUFS), two-pass; None: as is.
    loudness: float | None = Field(default=None, ge=-70, le=-5)
    # A subtitle rendition (vtp.media.ladder.text_renditions): WebVTT from the source's text track
    # `text_track`, or from the caption file `caption_key` in the source's bucket.
    text_only: bool = False
    text_track: int | None = Field(default=None, ge=0)
    caption_key: str | None = Field(default=None, max_length=1024)
    forced: bool = False
    # Whether the HLS segments carry the rendition's sound. False when the sound is a
    # rendition of its own and `audio_bitrate` is the progressive MP4's alone.
    audio_in_segments: bool = True
    # How the source's picture becomes this rendition's BT.709 SDR one (vtp.media.colour):
    # "pq" and "hlg" tone-map an HDR source, "bt601" converts a standard-definition
    # source's matrix, None leaves a BT.709 picture as it is.
    color_conversion: Literal["pq", "hlg", "bt601"] | None = None
    # What the rendition's picture is: "sdr" (BT.709), or an HDR rendition kept in the
    # source's "pq" or "hlg" (HEVC Main 10, BT.2020), with the source's static metadata.
    dynamic_range: Literal["sdr", "pq", "hlg"] = "sdr"
    mastering_display: str | None = Field(default=None, pattern=r"^[GBRWPL(),0-9]+$")
    content_light: str | None = Field(default=None, pattern=r"^[0-9]+,[0-9]+$")

    @property
    def kind(self) -> str:
        """ "video", "audio" or "text": what the rendition carries."""
        return "audio" if self.audio_only else "text" if self.text_only else "video"


class TranscodeTask(BaseModel):
    """The queue payload split sends to transcode-<resolution>: ids only, never video."""

    model_config = ConfigDict(extra="forbid")

    job_id: UUID
    rendition: str = Field(min_length=1, max_length=32)
    # Which of the rendition's tasks (vtp.lifecycle); 0: a rendition encoded whole.
    chunk: int = Field(default=0, ge=0, le=100_000)


class StatusQuery(BaseModel):
    """What the status function is asked: one job, or a filtered list of recent ones."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, min_length=1, max_length=64)
    state: JobState | None = None
    limit: int = Field(default=50, ge=1, le=1000)
    bucket: str | None = None
    key: str | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str], body: bytes) -> StatusQuery:
        """From the query string and, for a POST, a JSON object body (which wins); an empty
        body is fine: `faas-cli invoke status --query id=X < /dev/null` sends one."""
        fields: dict[str, Any] = {k: query.get(k) for k in query if query.get(k) not in ("",)}
        if body.strip():
            try:
                data = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise InvalidRequest('body must be a JSON object, e.g. {"id": "<job id>"}')
            fields.update(data)
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidRequest(
                f"invalid status query ({where}); state is one of {[s.value for s in JobState]}"
            ) from exc
