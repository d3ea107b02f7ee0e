"""A job's options, wherever they come from, and what makes two jobs the same job.

Options come from a manual job's body or from the uploaded object's own metadata
(`x-amz-meta-vtp-renditions`, ...): a platform that uploads through presigned URLs or an S3
SDK can say per upload what it wants without a second call. Either way they pass the same
validation (`JobOptions`), so an upload's bad option is refused with the same words as a
bad request.

A job is one source version with one set of *output* options (which renditions, which
formats): the same object uploaded or announced twice with the same options is one job,
and the same object asked for with other options is another job with its own outputs.
The callback URL is not part of that identity (it says who to tell, not what to make).
Privacy is: a private job's outputs live elsewhere and are reached otherwise (vtp.privacy), so
asking for a private job must never be answered with a public one of the same source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Literal
from uuid import uuid4

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    UrlConstraints,
    ValidationError,
    field_validator,
)

from vtp.errors import InvalidRequest

Format = Literal["hls", "dash", "mp4"]
VideoCodec = Literal["h264", "hevc", "av1"]

MAX_RENDITIONS = 8

# User metadata names as S3 takes them on upload (`x-amz-meta-` + name); MinIO keeps them
# in Go's canonical form (X-Amz-Meta-Vtp-Renditions), S3 SDKs return them lower-case, so
# they are compared without case.
METADATA_PREFIX = "x-amz-meta-vtp-"
METADATA_FIELDS = {
    "renditions": "renditions",  # "360p,720p" (commas or spaces)
    "formats": "formats",  # "hls,mp4"
    "callback-url": "callback_url",
    "loudness": "loudness",  # "-16" (LUFS)
    "codecs": "codecs",  # "h264,hevc,av1"
    "hdr": "hdr",  # "keep"
    "private": "private",  # "true" / "false"
    "priority": "priority",  # "low", "normal", "high" or 0-100
}
# Priorities by name, as points on SVT Encore's 0-100 scale (vtp.jobs.scheduling weighs them).
PRIORITIES = {"low": 25, "normal": 50, "high": 75}
PRIORITY_NAMES = {points: name for name, points in PRIORITIES.items()}


class CaptionFile(BaseModel):
    """A subtitle file to publish with the job: SRT, ASS or WebVTT, in the source's bucket."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=1024)
    language: str = Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
    label: str | None = Field(default=None, max_length=64, pattern=r'^[^"\n\r]+$')


class OptionsOrigin(StrEnum):
    """Where a job's options came from (shown in status)."""

    DEFAULTS = "defaults"  # a bucket event for an object without vtp metadata
    METADATA = "metadata"  # the object's x-amz-meta-vtp-* metadata
    REQUEST = "request"  # a manual job's body


class JobOptions(BaseModel):
    """What a job makes and whom it tells."""

    model_config = ConfigDict(extra="forbid")

    renditions: list[Annotated[str, Field(max_length=16)]] | None = Field(
        default=None, min_length=1, max_length=MAX_RENDITIONS
    )
    callback_url: Annotated[AnyHttpUrl, UrlConstraints(max_length=2048)] | None = None
    formats: list[Format] = Field(
        default_factory=lambda: _default_formats(), min_length=1, max_length=4
    )
    # EBU R128 integrated loudness every sound track is normalised to, in LUFS (-23 is
    # broadcast, -16 to -14 what streaming services play at); None leaves the sound as is.
    loudness: float | None = Field(default=None, ge=-70, le=-5)
    # Video codecs: H.264 always (every player's), and HEVC and/or AV1 beside it.
    codecs: list[VideoCodec] = Field(
        default_factory=lambda: _default_codecs(), min_length=1, max_length=3
    )
    # Subtitle files beside the source, made WebVTT renditions with their languages.
    captions: list[CaptionFile] = Field(default_factory=list, max_length=16)
    # An HDR source's picture: "sdr" tone-maps every rendition to BT.709 SDR (what every
    # player shows right); "keep" adds HEVC 10-bit renditions in the source's own HDR (PQ
    # or HLG, its mastering metadata carried over) beside that SDR ladder.
    hdr: Literal["sdr", "keep"] = "sdr"
    # Outputs only for whoever is given a signed play URL (vtp.privacy); None: the
    # deployment's default (VTP_PRIVATE_OUTPUTS), settled when the job is recorded.
    private: bool | None = None
    # Its share of the platform against other jobs' (vtp.jobs.scheduling): "low", "normal"
    # or "high", or 0-100. Not part of what the job makes: the same source and options asked
    # for with another priority is the same job.
    priority: int = Field(default=PRIORITIES["normal"], ge=0, le=100)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_by_name(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in PRIORITIES:
                return PRIORITIES[text]
            if not text.isdigit():
                raise ValueError(f"priority is one of {', '.join(PRIORITIES)} or 0-100")
            return int(text)
        return value

    @field_validator("formats")
    @classmethod
    def _hls_always(cls, value: list[Format]) -> list[Format]:
        # HLS is what the master playlist and the progress page are built on.
        unique = list(dict.fromkeys(value))
        return unique if "hls" in unique else ["hls", *unique]

    @field_validator("codecs")
    @classmethod
    def _h264_always(cls, value: list[VideoCodec]) -> list[VideoCodec]:
        # H.264 is what every player decodes: the fallback beside any other codec.
        unique = list(dict.fromkeys(value))
        return unique if "h264" in unique else ["h264", *unique]

    @property
    def callback(self) -> str | None:
        return str(self.callback_url) if self.callback_url else None

    def identity(self) -> str:
        """The options' part of a job's identity, readable: `renditions=*;formats=hls` for
        the deployment's default ladder (which samples may prune), or the names asked for
        (`renditions=360p,720p;formats=hls,mp4`). Order and case do not matter."""
        names = "*" if self.renditions is None else ",".join(sorted(_names(self.renditions)))
        key = f"renditions={names};formats={','.join(sorted(self.formats))}"
        if self.loudness is not None:
            key += f";loudness={self.loudness:g}"
        if self.codecs != ["h264"]:
            key += f";codecs={','.join(sorted(self.codecs))}"
        if self.captions:
            listed = sorted(f"{c.language}:{c.label or ''}:{c.key}" for c in self.captions)
            key += ";captions=" + hashlib.sha256("\n".join(listed).encode()).hexdigest()[:12]
        if self.hdr != "sdr":
            key += f";hdr={self.hdr}"
        if self.private:
            key += ";private"
        return key

    def recorded(self, origin: OptionsOrigin, *, reprocess: bool = False) -> dict[str, object]:
        """What jobs.options keeps: the options as asked, where they came from."""
        recorded: dict[str, object] = {
            "renditions": self.renditions,
            "formats": list(self.formats),
            "origin": origin.value,
            "reprocess": reprocess,
        }
        if self.loudness is not None:
            recorded["loudness"] = self.loudness
        if self.codecs != ["h264"]:
            recorded["codecs"] = list(self.codecs)
        if self.captions:
            recorded["captions"] = [c.model_dump() for c in self.captions]
        if self.hdr != "sdr":
            recorded["hdr"] = self.hdr
        if self.private:
            recorded["private"] = True  # where the outputs are: Job.private reads it
        if self.priority != PRIORITIES["normal"]:
            recorded["priority"] = self.priority
        return recorded


def _default_formats() -> list[Format]:
    return ["hls"]


def _default_codecs() -> list[VideoCodec]:
    return ["h264"]


def _names(renditions: list[str]) -> list[str]:
    return list(dict.fromkeys(name.strip().lower() for name in renditions))


def job_key(options: JobOptions, *, reprocess: bool = False) -> str:
    """The options key a new job is recorded under: its options' identity, made unique by a
    run id when a manual job asks to encode again (`"reprocess": true`), so that it can
    never be taken for the job it re-does, nor for a redelivered event."""
    key = options.identity()
    return f"{key};run={uuid4().hex[:12]}" if reprocess else key


# The key of a job with no options asked for (the default ladder, HLS).
DEFAULT_OPTIONS_KEY = "renditions=*;formats=hls"
# The key a source refused for its upload options is recorded under.
INVALID_OPTIONS_KEY = "invalid-options"


def from_metadata(metadata: Mapping[str, str]) -> JobOptions | None:
    """The options an upload carries in its `x-amz-meta-vtp-*` metadata, or None when it
    carries none. InvalidRequest names the metadata at fault, for the job's recorded error."""
    fields: dict[str, object] = {}
    unknown = []
    for name, value in metadata.items():
        lower = name.lower()
        if not lower.startswith(METADATA_PREFIX):
            continue
        option = lower.removeprefix(METADATA_PREFIX)
        field = METADATA_FIELDS.get(option)
        if field is None:
            unknown.append(name)
            continue
        text = value.strip()
        if field in ("renditions", "formats", "codecs"):
            fields[field] = [part for part in text.replace(",", " ").split() if part]
        else:
            fields[field] = text
    if unknown:
        known = ", ".join(METADATA_PREFIX + k for k in METADATA_FIELDS)
        raise InvalidRequest(
            f"unknown upload option(s) {', '.join(sorted(unknown))[:200]}; known: {known}"
        )
    if not fields:
        return None
    try:
        return JobOptions.model_validate(fields)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:3]:
            where = str(err["loc"][0]) if err["loc"] else "options"
            header = METADATA_PREFIX + where.replace("_", "-")
            parts.append(f"{header}: {str(err['msg'])[:200]}")
        raise InvalidRequest("invalid upload options: " + "; ".join(parts)) from exc
