"""What `split` accepts: MinIO bucket notifications and manual job requests.

MinIO posts `{"EventName", "Key", "Records": [...]}` with S3-shaped records whose object key
is URL-encoded (`/` as %2F, space as +). Events we do not act on (other event names, the
outputs buckets, files that are not videos) are answered 2xx by the handler: with a queue dir
configured, MinIO retries anything else forever and blocks the events behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vtp.errors import InvalidRequest
from vtp.options import JobOptions

log = logging.getLogger(__name__)

# Object-created events that mean "new content". MinIO also reports tagging and ACL changes as
# ObjectCreated (e.g. s3:ObjectCreated:PutTagging); those must not start a second job.
CONTENT_EVENTS = frozenset(
    {
        "s3:ObjectCreated:Put",
        "s3:ObjectCreated:Post",
        "s3:ObjectCreated:Copy",
        "s3:ObjectCreated:CompleteMultipartUpload",
    }
)

# Bounds on what split parses: a MinIO event or a job is a few KB. A body nested 100 000 deep
# would exhaust the parser's recursion (a 500); a list of 50 000 names would be echoed back
# in the error. Both are refused before they cost anything.
MAX_BODY_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32
MAX_KEY_BYTES = 1024  # S3's own limit


class S3Bucket(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class S3Object(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    key: str
    size: int | None = None
    etag: str | None = Field(default=None, alias="eTag")
    content_type: str | None = Field(default=None, alias="contentType")
    user_metadata: dict[str, str] = Field(default_factory=dict, alias="userMetadata")
    sequencer: str | None = None


class S3Entity(BaseModel):
    model_config = ConfigDict(extra="allow")
    bucket: S3Bucket
    object: S3Object


class S3Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    event_name: str = Field(alias="eventName")
    s3: S3Entity

    @property
    def key(self) -> str:
        return unquote_plus(self.s3.object.key)

    @property
    def bucket(self) -> str:
        return self.s3.bucket.name


class MinioEvent(BaseModel):
    """A MinIO webhook notification (one event per request)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    event_name: str = Field(default="", alias="EventName")
    key: str = Field(default="", alias="Key")
    records: list[S3Record] = Field(alias="Records")


class JobRequest(JobOptions):
    """A manual job: `faas-cli invoke split` with a JSON body (its options as JobOptions)."""

    model_config = ConfigDict(extra="forbid")
    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1, max_length=MAX_KEY_BYTES)
    # Only plan: the tuned ladder with each rendition's predicted size, bit rate, quality and
    # encode time, from the samples; no job is recorded and nothing is encoded.
    dry_run: bool = False
    # Encode again even when a job with these options exists for this object version: a
    # new job with its own outputs (the existing one is left as it is).
    reprocess: bool = False

    def options(self) -> JobOptions:
        return JobOptions.model_validate(self.model_dump(include=set(JobOptions.model_fields)))


class SourceObject(BaseModel):
    """One object to transcode, however it was announced."""

    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    event_name: str | None = None


def parse_body(body: bytes) -> MinioEvent | JobRequest:
    """Tell a MinIO notification from a manual job, or raise InvalidRequest saying why."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(f"body is larger than {MAX_BODY_BYTES // 1024} KiB")
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(
            "body must be a JSON object: a MinIO event or "
            '{"bucket": ..., "key": ..., "renditions"?: [...], "callback_url"?: ..., '
            '"formats"?: ["hls", "dash", "mp4"], "loudness"?: -16, "hdr"?: "keep", '
            '"private"?: true, "reprocess"?: true, "dry_run"?: true}'
        )
    try:
        if "Records" in data:
            return MinioEvent.model_validate(data)
        return JobRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    """What is wrong, for the client: the first few errors, each message kept short."""
    parts = []
    errors = exc.errors()
    for err in errors[:5]:
        where = ".".join(str(p) for p in err["loc"])[:80] or "body"
        parts.append(f"{where}: {str(err['msg'])[:200]}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def _json_depth(body: bytes) -> int:
    """How deep the brackets of a JSON text nest, outside strings (a cheap pre-check)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _control(ch: str) -> bool:
    """C0 control characters and DEL (NUL among them)."""
    return ord(ch) < 0x20 or ord(ch) == 0x7F


def key_problem(key: str) -> str | None:
    """Why an object key cannot be processed, or None. A NUL cannot be stored (PostgreSQL
    text) and cuts the key short in C programs; a `..` segment is normalised away by HTTP
    clients, so a presigned URL for it would name another object."""
    if "\x00" in key:
        return "the object key contains a NUL character"
    if any(_control(ch) for ch in key):
        return "the object key contains control characters"
    if ".." in key.split("/"):
        return "the object key has a '..' segment"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"the object key is longer than {MAX_KEY_BYTES} bytes"
    return None


def storable_key(key: str) -> str:
    """`key` as it can be stored and shown: NUL and other control characters escaped."""
    return "".join(f"\\x{ord(ch):02x}" if _control(ch) else ch for ch in key)


def sources_from_event(
    event: MinioEvent,
    *,
    outputs_buckets: Sequence[str],
    caption_suffixes: Sequence[str] = (),
    input_buckets: Sequence[str] | None = None,
) -> tuple[list[SourceObject], list[str]]:
    """The objects an event asks us to take, and why the others are ignored (objects in a
    bucket that is not an input bucket among them, when `input_buckets` is given). What
    lands in an outputs bucket (`outputs_buckets`: the public one and the private one) is
    the pipeline's own writing, never a source.

    Every new object of an input bucket is taken, whatever its name: one that is neither
    video nor sound is answered with a failed job saying so (vtp.pipeline.intake), so an
    uploader is never left waiting on silence. Only folder markers and caption files (which
    jobs name beside their video) are no uploads to answer."""
    wanted: list[SourceObject] = []
    ignored: list[str] = []
    for rec in event.records:
        name = rec.event_name if rec.event_name.startswith("s3:") else f"s3:{rec.event_name}"
        where = f"s3://{rec.bucket}/{rec.key}"
        if name not in CONTENT_EVENTS:
            ignored.append(f"{where}: event {name} is not new content")
        elif rec.bucket in outputs_buckets:
            ignored.append(f"{where}: in an outputs bucket")
        elif input_buckets is not None and rec.bucket not in input_buckets:
            ignored.append(f"{where}: not an input bucket ({', '.join(input_buckets)})")
        elif rec.key.endswith("/"):
            ignored.append(f"{where}: a folder marker")
        elif rec.key.lower().endswith(tuple(s.lower() for s in caption_suffixes)):
            ignored.append(f"{where}: a caption file (a job names it beside its video)")
        else:
            wanted.append(
                SourceObject(
                    bucket=rec.bucket,
                    key=rec.key,
                    etag=(rec.s3.object.etag or "").strip('"') or None,
                    size=rec.s3.object.size,
                    event_name=name,
                )
            )
    return wanted, ignored
