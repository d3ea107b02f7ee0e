"""ws-relay's upload tickets (`/api/uploads...`): how the progress page puts one file straight
into the uploads bucket, and nothing else, nothing larger.

A ticket names one key (`web/<uuid>/<safe name>`), one Content-Type and a bound
(`upload_max_bytes`); a declared size above the bound is refused here, before anything is
signed. Then, by size:

* up to `upload_multipart_threshold_bytes` (a single S3 POST takes at most 5 GiB): an S3 POST
  policy, a browser form. The object store itself checks the signed policy as the file
  arrives: another key or type, one byte over the bound, an expired ticket, and it answers
  4xx and keeps nothing. This is what a presigned PUT could not do: it signs neither size nor
  type, so whoever held one could store anything of any size.
* above it: a multipart upload started here, with its type fixed here. The page asks
  `/api/uploads/parts` for presigned UploadPart URLs as it goes (fresh ones, so a long upload
  outlives no URL, and a part that failed is simply asked for and sent again: the resume after
  a dropped connection), then `/api/uploads/complete`, which lists the parts and completes the
  upload only if they add up to no more than the bound, aborting it otherwise. Parts are not
  bounded one by one as they arrive; their sum is, before the object exists, and the object
  is made of exactly the parts that were summed (their ETags).

The relay keeps no state: an upload in parts is named by its key and upload id, which only the
ticket's holder knows, and these routes touch only keys of the tickets' own form in the uploads
bucket. They stay behind the relay's read-token gate like the rest of `/api`.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from vtp.errors import Forbidden, InvalidRequest
from vtp.quotas import Quotas
from vtp.settings import Settings
from vtp.storage import content_type_for, lazy_storage
from vtp_relay.api import _json
from vtp_relay.gate import principal_of

log = logging.getLogger(__name__)

_MIME = re.compile(r"^[A-Za-z0-9][\w.+-]{0,63}/[A-Za-z0-9][\w.+-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# The keys tickets hand out, and the only ones the multipart routes act on.
_TICKET_KEY = re.compile(r"^web/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}/[A-Za-z0-9._-]{1,110}$")
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9._~+/=-]{1,1024}$")

# S3's multipart rules: parts numbered 1..10,000; every part but the last at least 5 MiB.
MAX_PARTS = 10_000
# Part URLs handed out per request: enough for a page that sends a few parts at once.
MAX_PART_URLS = 100


class UploadRequest(BaseModel):
    """POST /api/uploads: what the browser is about to upload. `size` (bytes) is checked
    against the bound and picks a single POST or parts; without it (older clients) the ticket
    is a POST bounded by the smaller of the bound and the single-POST limit."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field(min_length=1, max_length=1024)
    content_type: str | None = Field(default=None, max_length=200)
    size: int | None = Field(default=None, ge=0)


class UploadTicket(BaseModel):
    """The answer of POST /api/uploads. `url`, `bucket`, `key`, `method` and `headers` keep the
    shape of the presigned-PUT tickets before them; what to do with them is `kind`'s:

    * `post`: POST a multipart/form-data form to `url`: `fields` in order, then the file as
      the last field, named `file` (`headers` is empty: the type is a field, and signed);
    * `multipart`: PUT each part (`part_size` bytes, the last one the rest) to the URLs
      `parts_url` hands out for `upload_id`, then POST `complete_url`.
    """

    kind: Literal["post", "multipart"]
    url: str
    bucket: str
    key: str
    method: str
    headers: dict[str, str] = Field(default_factory=dict)
    fields: dict[str, str] = Field(default_factory=dict)
    content_type: str
    max_bytes: int
    expires_at: datetime
    upload_id: str | None = None
    part_size: int | None = None
    part_count: int | None = None
    parts_url: str | None = None
    complete_url: str | None = None
    abort_url: str | None = None


class UploadRef(BaseModel):
    """An upload in parts, as the page names it to the routes below."""

    model_config = ConfigDict(extra="ignore")

    bucket: str | None = None
    key: str = Field(min_length=1, max_length=1024)
    upload_id: str = Field(min_length=1, max_length=1024)


class PartsRequest(UploadRef):
    """POST /api/uploads/parts: the part numbers to sign URLs for."""

    numbers: list[int] = Field(min_length=1, max_length=MAX_PART_URLS)


class PartUrl(BaseModel):
    number: int
    url: str


class PartsAnswer(BaseModel):
    method: str = "PUT"
    parts: list[PartUrl]
    expires_at: datetime


class CompletedUpload(BaseModel):
    """The answer of POST /api/uploads/complete: the object as it now exists."""

    bucket: str
    key: str
    size: int
    parts: int
    etag: str


M = TypeVar("M", bound=BaseModel)


def safe_upload_name(filename: str, media_suffixes: Iterable[str]) -> str:
    """The last path component, reduced to [A-Za-z0-9._-]; its suffix must be a video's or
    a sound file's."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    stem, dot, ext = name.rpartition(".")
    suffix = f".{ext.lower()}" if dot else ""
    allowed = {s.lower() for s in media_suffixes}
    if suffix not in allowed:
        raise InvalidRequest(
            f"{name[:80]!r} is not a video or sound file name "
            f"(expected one of {', '.join(sorted(allowed))})"
        )
    safe = _UNSAFE.sub("_", stem).strip("._-")[:100] or "video"
    return f"{safe}{suffix}"


def human_bytes(n: int) -> str:
    """`n` bytes for a person, with the exact count: "20 GiB (21474836480 bytes)"."""
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{value:.3g} {unit} ({n} bytes)"


def part_size_for(size: int, settings: Settings) -> int:
    """`upload_part_bytes`, or more where the file would need more than 10,000 parts."""
    return max(settings.upload_part_bytes, math.ceil(size / MAX_PARTS))


class UploadsApi:
    """The upload routes. The storage clients are made on first use, once per process; the
    S3 calls are blocking and run in the threadpool."""

    def __init__(
        self,
        settings: Settings,
        *,
        enabled: bool = True,
        quotas: Callable[[], Quotas] | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = enabled
        # A ticket is a submit request like split's: counted against the caller's rate.
        self.quotas = quotas
        self.storage = lazy_storage(settings)

    @property
    def max_bytes(self) -> int:
        return self.settings.upload_max_bytes

    @property
    def max_part_number(self) -> int:
        """The most parts any ticket can have: the bound cut into the smallest parts."""
        return min(MAX_PARTS, math.ceil(self.max_bytes / self.settings.upload_part_bytes))

    # --- blocking parts ----------------------------------------------------------------------
    def ticket(self, request: UploadRequest) -> UploadTicket:
        name = safe_upload_name(request.filename, self.settings.media_suffixes)
        wanted = (request.content_type or "").strip()
        content_type = wanted if _MIME.match(wanted) else content_type_for(name)
        size = request.size
        if size is not None and size > self.max_bytes:
            raise InvalidRequest(
                f"{name} is {human_bytes(size)}: uploads here are limited to "
                f"{human_bytes(self.max_bytes)} (VTP_UPLOAD_MAX_BYTES)"
            )
        if size == 0:
            raise InvalidRequest(f"{name} is empty: there is nothing to transcode")
        key = f"web/{uuid.uuid4()}/{name}"
        bucket = self.settings.uploads_bucket
        seconds = self.settings.upload_ticket_seconds
        threshold = self.settings.upload_multipart_threshold_bytes
        if size is None or size <= threshold:
            cap = min(self.max_bytes, threshold)
            form = self.storage().presigned_post(
                bucket, key, content_type=content_type, max_bytes=cap, expires=seconds
            )
            log.info("upload ticket (POST, at most %d bytes) for %s", cap, key)
            return UploadTicket(
                kind="post",
                url=form.url,
                bucket=bucket,
                key=key,
                method="POST",
                fields=form.fields,
                content_type=content_type,
                max_bytes=cap,
                expires_at=form.expires_at,
            )
        part_size = part_size_for(size, self.settings)
        part_count = math.ceil(size / part_size)
        upload_id = self.storage().start_multipart(bucket, key, content_type=content_type)
        log.info("upload ticket (%d parts of %d bytes) for %s", part_count, part_size, key)
        return UploadTicket(
            kind="multipart",
            url=f"{self.storage().public_endpoint}/{bucket}/{key}",
            bucket=bucket,
            key=key,
            method="PUT",
            content_type=content_type,
            max_bytes=self.max_bytes,
            expires_at=datetime.now(UTC) + timedelta(seconds=seconds),
            upload_id=upload_id,
            part_size=part_size,
            part_count=part_count,
            parts_url="api/uploads/parts",
            complete_url="api/uploads/complete",
            abort_url="api/uploads/abort",
        )

    def _checked(self, ref: UploadRef) -> tuple[str, str, str]:
        """(bucket, key, upload id) of an upload a ticket started, or InvalidRequest: these
        routes never act on another bucket's uploads, nor on keys no ticket hands out."""
        bucket = self.settings.uploads_bucket
        if ref.bucket not in (None, bucket):
            raise InvalidRequest(f"uploads go to the {bucket!r} bucket only")
        if not _TICKET_KEY.match(ref.key):
            raise InvalidRequest("key is not one an upload ticket names")
        if not _UPLOAD_ID.match(ref.upload_id):
            raise InvalidRequest("upload_id is not an upload id")
        return bucket, ref.key, ref.upload_id

    def part_urls(self, request: PartsRequest) -> PartsAnswer:
        bucket, key, upload_id = self._checked(request)
        top = self.max_part_number
        bad = [n for n in request.numbers if not 1 <= n <= top]
        if bad:
            raise InvalidRequest(f"part numbers go from 1 to {top} here; got {bad[0]}")
        seconds = self.settings.upload_ticket_seconds
        urls = [
            PartUrl(
                number=n,
                url=self.storage().presigned_part(bucket, key, upload_id, n, expires=seconds),
            )
            for n in sorted(set(request.numbers))
        ]
        return PartsAnswer(parts=urls, expires_at=datetime.now(UTC) + timedelta(seconds=seconds))

    def complete(self, request: UploadRef) -> CompletedUpload:
        """Complete the upload if its parts add up to 1..upload_max_bytes; abort it if they
        add up to more (its parts would otherwise sit in the bucket until MinIO's stale-upload
        cleanup)."""
        bucket, key, upload_id = self._checked(request)
        storage = self.storage()
        parts = storage.list_parts(bucket, key, upload_id)
        total = sum(p.size for p in parts)
        if total > self.max_bytes:
            storage.abort_multipart(bucket, key, upload_id)
            log.warning(
                "aborted the upload of %s: its %d parts add up to %d bytes, over %d",
                key, len(parts), total, self.max_bytes,
            )  # fmt: skip
            raise InvalidRequest(
                f"the upload's parts add up to {human_bytes(total)}, more than the "
                f"{human_bytes(self.max_bytes)} allowed (VTP_UPLOAD_MAX_BYTES): the upload "
                "was aborted"
            )
        if not parts:
            raise InvalidRequest("no part of this upload has arrived: send the parts first")
        etag = storage.complete_multipart(bucket, key, upload_id, parts)
        log.info("completed the upload of %s: %d parts, %d bytes", key, len(parts), total)
        return CompletedUpload(bucket=bucket, key=key, size=total, parts=len(parts), etag=etag)

    def abort(self, request: UploadRef) -> dict[str, bool]:
        bucket, key, upload_id = self._checked(request)
        self.storage().abort_multipart(bucket, key, upload_id)
        log.info("aborted the upload of %s at the page's request", key)
        return {"aborted": True}

    # --- endpoints ---------------------------------------------------------------------------
    def _refuse_when_off(self) -> None:
        if not self.enabled:
            raise Forbidden("uploads through this page are turned off (RELAY_UPLOADS_ENABLED)")

    async def ticket_endpoint(self, request: Request) -> Response:
        self._refuse_when_off()
        caller = principal_of(request.scope)
        if self.quotas is not None and caller is not None:
            await run_in_threadpool(self.quotas().take_request, caller.name)
        upload = _parse(UploadRequest, await request.body())
        return _json((await run_in_threadpool(self.ticket, upload)).model_dump(mode="json"))

    async def parts_endpoint(self, request: Request) -> Response:
        self._refuse_when_off()
        parts = _parse(PartsRequest, await request.body())
        return _json((await run_in_threadpool(self.part_urls, parts)).model_dump(mode="json"))

    async def complete_endpoint(self, request: Request) -> Response:
        self._refuse_when_off()
        ref = _parse(UploadRef, await request.body())
        return _json((await run_in_threadpool(self.complete, ref)).model_dump(mode="json"))

    async def abort_endpoint(self, request: Request) -> Response:
        self._refuse_when_off()
        ref = _parse(UploadRef, await request.body())
        return _json(await run_in_threadpool(self.abort, ref))


def _parse(model: type[M], raw: bytes) -> M:
    """The request body as `model`, or InvalidRequest naming the first wrong field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidRequest(f"{where}: {first.get('msg', 'invalid')}") from exc
