"""Object storage through the minio SDK: presigned reads for ffmpeg, uploads of outputs, and
the bounded upload tickets browsers get (a POST policy; presigned parts of a multipart upload).

Two clients: one for the endpoint the functions reach (inside the cluster) and one for the
endpoint clients reach (browsers, callback receivers). A presigned URL signs the host, so a
URL made with the internal client does not work from outside, and vice versa.
"""

from __future__ import annotations

import io
import logging
import mimetypes
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from minio import Minio
from minio.datatypes import Part, PostPolicy
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from vtp.errors import InvalidRequest, NotFound, StorageError
from vtp.settings import Settings

log = logging.getLogger(__name__)

# Content types players and CDNs expect for HLS; mimetypes does not know most of them.
_CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
    ".json": "application/json",
    ".mpd": "application/dash+xml",
    ".vtt": "text/vtt",
}


def content_type_for(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def make_client(endpoint: str, settings: Settings) -> Minio:
    """A client for `endpoint` (an http(s) URL). The region is fixed so presigning is offline."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"S3 endpoint must be an http(s) URL, got {endpoint!r}")
    return Minio(
        parts.netloc,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=parts.scheme == "https",
        region=settings.s3_region,
    )


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    etag: str
    size: int
    content_type: str | None
    # The object's user metadata (`x-amz-meta-*`), names lower-case with their prefix.
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadedPart:
    """One part of a multipart upload, as ListParts reports it."""

    number: int
    etag: str
    size: int


@dataclass(frozen=True)
class PostForm:
    """A browser-form upload (S3 POST policy): the form goes to `url` with `fields`, in this
    order, then the file as the last field, named `file`."""

    url: str
    fields: dict[str, str]
    expires_at: datetime


# What S3 answers when a completion is the client's fault (a part too small, missing, or
# sent again since it was listed): the request is wrong, not the store.
_CLIENT_COMPLETION_ERRORS = frozenset(
    {"EntityTooSmall", "InvalidPart", "InvalidPartOrder", "MalformedXML"}
)


def _presign_seconds(expires: float) -> int:
    return max(1, min(int(expires), 7 * 24 * 3600))  # S3's own bounds


@dataclass(frozen=True)
class ListedObject:
    key: str
    etag: str
    size: int
    last_modified: datetime


class Storage:
    def __init__(
        self, client: Minio, public_client: Minio | None = None, *, public_endpoint: str = ""
    ) -> None:
        self.client = client
        self.public_client = public_client or client
        # The endpoint clients reach, as a URL: a POST policy's form goes to <it>/<bucket>.
        self.public_endpoint = public_endpoint.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        internal = make_client(settings.s3_endpoint, settings)
        public = (
            make_client(settings.s3_public_endpoint, settings)
            if settings.s3_public_endpoint
            else internal
        )
        return cls(internal, public, public_endpoint=settings.public_s3_endpoint)

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        try:
            st = self.client.stat_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound"):
                raise NotFound(f"object s3://{bucket}/{key} does not exist") from exc
            raise StorageError(f"cannot read s3://{bucket}/{key}: {exc.code}") from exc
        except Exception as exc:  # urllib3 connection errors and the like
            raise StorageError(f"object storage unreachable: {type(exc).__name__}") from exc
        return ObjectInfo(
            bucket=bucket,
            key=key,
            etag=(st.etag or "").strip('"'),
            size=st.size or 0,
            content_type=st.content_type,
            metadata={
                str(k).lower(): str(v)
                for k, v in (st.metadata or {}).items()
                if str(k).lower().startswith("x-amz-meta-")
            },
        )

    def presigned_get(
        self, bucket: str, key: str, *, expires: float, public: bool = False, minimum: int = 60
    ) -> str:
        """A GET URL valid `expires` seconds (whole, rounded down), at least `minimum` (1 for
        a URL that must die with a shorter-lived token: vtp_relay.play) and at most S3's 7
        days."""
        client = self.public_client if public else self.client
        seconds = max(max(minimum, 1), min(int(expires), 7 * 24 * 3600))
        return client.presigned_get_object(bucket, key, expires=timedelta(seconds=seconds))

    # --- bounded uploads from clients ---------------------------------------------------------
    def presigned_post(
        self, bucket: str, key: str, *, content_type: str, max_bytes: int, expires: float
    ) -> PostForm:
        """A form that uploads exactly `key`, typed `content_type`, of 1 to `max_bytes` bytes,
        until `expires` seconds from now. The object store checks the signed policy as the
        file arrives (MinIO: EntityTooLarge, AccessDenied "Policy Condition failed" or
        "Policy expired") and keeps nothing it refuses, which a presigned PUT cannot do: it
        signs neither a size nor a type."""
        if not self.public_endpoint:
            raise ValueError("Storage has no public endpoint to post forms to")
        expires_at = datetime.now(UTC) + timedelta(seconds=_presign_seconds(expires))
        policy = PostPolicy(bucket, expires_at)
        policy.add_equals_condition("key", key)
        policy.add_equals_condition("Content-Type", content_type)
        policy.add_content_length_range_condition(1, max_bytes)
        # The signed fields (x-amz-algorithm, -credential, -date, policy, x-amz-signature)
        # after the two the policy pins: every field sent must be named by a condition.
        signed = self.public_client.presigned_post_policy(policy)
        fields = {"key": key, "Content-Type": content_type, **signed}
        return PostForm(
            url=f"{self.public_endpoint}/{bucket}", fields=fields, expires_at=expires_at
        )

    def start_multipart(self, bucket: str, key: str, *, content_type: str) -> str:
        """Start a multipart upload of `key` (its type fixed here, whatever the parts say);
        returns its upload id."""
        try:
            return self.client._create_multipart_upload(  # minio-py has no public form
                bucket, key, {"Content-Type": content_type}
            )
        except S3Error as exc:
            raise StorageError(
                f"cannot start an upload of s3://{bucket}/{key}: {exc.code}"
            ) from exc
        except Exception as exc:
            raise StorageError(f"object storage unreachable: {type(exc).__name__}") from exc

    def presigned_part(
        self, bucket: str, key: str, upload_id: str, number: int, *, expires: float
    ) -> str:
        """A URL that PUTs part `number` of upload `upload_id` (UploadPart), for clients."""
        return self.public_client.get_presigned_url(
            "PUT",
            bucket,
            key,
            expires=timedelta(seconds=_presign_seconds(expires)),
            extra_query_params={"uploadId": upload_id, "partNumber": str(number)},
        )

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[UploadedPart]:
        """Every part uploaded so far (ListParts, a page at a time), by part number."""
        parts: list[UploadedPart] = []
        marker: str | None = None
        try:
            while True:
                page = self.client._list_parts(  # minio-py has no public form
                    bucket, key, upload_id, max_parts=1000, part_number_marker=marker
                )
                parts += [
                    UploadedPart(number=p.part_number, etag=p.etag, size=p.size or 0)
                    for p in page.parts
                ]
                if not page.is_truncated or not page.next_part_number_marker:
                    break
                marker = page.next_part_number_marker
        except S3Error as exc:
            raise self._upload_error(exc, bucket, key) from exc
        except Exception as exc:
            raise StorageError(f"object storage unreachable: {type(exc).__name__}") from exc
        return sorted(parts, key=lambda p: p.number)

    def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[UploadedPart]
    ) -> str:
        """Complete the upload from exactly `parts` (their ETags: a part sent again since they
        were listed makes S3 refuse, so what was checked is what is kept); returns the ETag."""
        listed = [Part(part_number=p.number, etag=p.etag) for p in parts]
        try:
            result = self.client._complete_multipart_upload(bucket, key, upload_id, listed)
        except S3Error as exc:
            raise self._upload_error(exc, bucket, key) from exc
        except Exception as exc:
            raise StorageError(f"object storage unreachable: {type(exc).__name__}") from exc
        return (result.etag or "").strip('"')

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort the upload: its parts are deleted (no error when it is gone already)."""
        try:
            self.client._abort_multipart_upload(bucket, key, upload_id)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise StorageError(f"cannot abort the upload of {key}: {exc.code}") from exc
        except Exception as exc:
            raise StorageError(f"object storage unreachable: {type(exc).__name__}") from exc

    @staticmethod
    def _upload_error(exc: S3Error, bucket: str, key: str) -> Exception:
        if exc.code == "NoSuchUpload":
            return NotFound(f"no upload of {key} with that id is in progress")
        if exc.code in _CLIENT_COMPLETION_ERRORS:
            return InvalidRequest(f"the storage refused the upload of {key}: {exc.code}")
        return StorageError(f"cannot complete s3://{bucket}/{key}: {exc.code}")

    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str | None = None,
        *,
        cache_control: str | None = None,
    ) -> None:
        """Write `data`; `cache_control` is served with it (an object that will be written
        again says so, or browsers and CDNs keep the old one)."""
        try:
            self.client.put_object(
                bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type or content_type_for(key),
                metadata={"Cache-Control": cache_control} if cache_control else None,
            )
        except Exception as exc:
            raise StorageError(f"cannot write s3://{bucket}/{key}: {exc}") from exc

    def upload_dir(self, local_dir: Path, bucket: str, prefix: str) -> int:
        """Upload every file under `local_dir` to `prefix/`; returns the bytes uploaded.

        Playlists go last so that a reader who sees a playlist finds all its segments.
        """
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.suffix == ".m3u8")
        total = 0
        for path in files:
            key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            try:
                self.client.fput_object(
                    bucket, key, str(path), content_type=content_type_for(path.name)
                )
            except Exception as exc:
                raise StorageError(f"cannot upload {key}: {exc}") from exc
            total += path.stat().st_size
        log.info("uploaded %d files (%d bytes) to s3://%s/%s", len(files), total, bucket, prefix)
        return total

    def list_objects(self, bucket: str) -> Iterator[ListedObject]:
        """Every object of `bucket`, a page at a time (StorageError if it cannot be listed)."""
        try:
            for obj in self.client.list_objects(bucket, recursive=True):
                if obj.is_dir or obj.object_name is None or obj.last_modified is None:
                    continue
                yield ListedObject(
                    key=obj.object_name,
                    etag=(obj.etag or "").strip('"'),
                    size=obj.size or 0,
                    last_modified=obj.last_modified,
                )
        except S3Error as exc:
            raise StorageError(f"cannot list s3://{bucket}: {exc.code}") from exc
        except Exception as exc:
            raise StorageError(f"object storage unreachable: {type(exc).__name__}") from exc

    def remove_prefix(self, bucket: str, prefix: str, *, keep: str | None = None) -> int:
        """Delete every object under `prefix` but those under `keep`; returns how many."""
        try:
            doomed = [
                DeleteObject(obj.object_name)
                for obj in self.client.list_objects(bucket, prefix=prefix, recursive=True)
                if obj.object_name and not (keep and obj.object_name.startswith(keep))
            ]
            errors = list(self.client.remove_objects(bucket, doomed)) if doomed else []
        except Exception as exc:
            raise StorageError(f"cannot remove s3://{bucket}/{prefix}: {exc}") from exc
        if errors:
            raise StorageError(f"cannot remove s3://{bucket}/{prefix}: {errors[0]}")
        return len(doomed)

    def remove_object(self, bucket: str, key: str) -> None:
        """Delete one object (no error when it is gone already)."""
        try:
            self.client.remove_object(bucket, key)
        except Exception as exc:
            raise StorageError(f"cannot remove s3://{bucket}/{key}: {exc}") from exc

    def get_bytes(
        self, bucket: str, key: str, *, offset: int = 0, length: int | None = None
    ) -> bytes:
        """The object, or `length` bytes of it from `offset` (a ranged GET)."""
        try:
            resp = self.client.get_object(bucket, key, offset=offset, length=length or 0)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise NotFound(f"object s3://{bucket}/{key} does not exist") from exc
            raise StorageError(f"cannot read s3://{bucket}/{key}: {exc.code}") from exc
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()


def lazy_storage(settings: Settings) -> Callable[[], Storage]:
    """The Storage of `settings`, built at the first call and the same one after (from any
    thread): a route that may never be called (ws-relay's play and upload routes) costs its
    process nothing at start."""
    lock = threading.Lock()
    built: list[Storage] = []

    def get() -> Storage:
        with lock:
            if not built:
                built.append(Storage.from_settings(settings))
            return built[0]

    return get
