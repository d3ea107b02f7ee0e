"""Object storage through the minio SDK: presigned reads for ffmpeg, uploads of outputs.

Two clients: one for the endpoint the functions reach (inside the cluster) and one for the
endpoint clients reach (browsers, callback receivers). A presigned URL signs the host, so a
URL made with the internal client does not work from outside, and vice versa.
"""

from __future__ import annotations

import io
import logging
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from vtp.errors import NotFound, StorageError
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
class ListedObject:
    key: str
    etag: str
    size: int
    last_modified: datetime


class Storage:
    def __init__(self, client: Minio, public_client: Minio | None = None) -> None:
        self.client = client
        self.public_client = public_client or client

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        internal = make_client(settings.s3_endpoint, settings)
        public = (
            make_client(settings.s3_public_endpoint, settings)
            if settings.s3_public_endpoint
            else internal
        )
        return cls(internal, public)

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

    def presigned_put(self, bucket: str, key: str, *, expires: float) -> str:
        seconds = max(60, min(int(expires), 7 * 24 * 3600))
        return self.public_client.presigned_put_object(
            bucket, key, expires=timedelta(seconds=seconds)
        )

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
