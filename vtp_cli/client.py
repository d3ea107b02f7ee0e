"""The `vtp` client's HTTP and S3 side: `StatusClient` (the status function through the
gateway) and `upload_file` (a file into the uploads bucket)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from vtp.errors import Conflict, NotFound, StorageError, UpstreamError
from vtp.storage import content_type_for
from vtp_cli.config import ClientConfig
from vtp_cli.transport import describe_error

# --- the status function ----------------------------------------------------------------------


class StatusClient:
    """The status function through the gateway: the database's view of jobs."""

    def __init__(self, config: ClientConfig, session: requests.Session | None = None) -> None:
        self.url = config.status_url
        self.session = session or requests.Session()
        self.session.headers.update(config.auth_headers)

    def _get(self, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            resp = self.session.get(self.url, params=dict(params), timeout=15)
        except requests.RequestException as exc:
            raise UpstreamError(
                f"status function unreachable at {self.url}: {describe_error(exc)}"
            ) from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code == 404 and isinstance(body, dict) and "error" in body:
            raise NotFound(str(body["error"]))
        if resp.status_code != 200 or not isinstance(body, dict):
            detail = body.get("error") if isinstance(body, dict) else resp.text[:200]
            raise UpstreamError(f"status function answered HTTP {resp.status_code}: {detail}")
        return body

    def redeliver_callback(self, job_id: str) -> dict[str, Any]:
        """Ask split to send a finished job's callback again (`/callbacks/redeliver`)."""
        return self._split_post("callbacks/redeliver", job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask split to cancel a job that has not ended (`/jobs/cancel`)."""
        return self._split_post("jobs/cancel", job_id)

    def redrive(self, job_id: str) -> dict[str, Any]:
        """Ask split to queue a failed job's dead letters again (`/jobs/redrive`)."""
        return self._split_post("jobs/redrive", job_id)

    def delete(self, job_id: str, *, source: bool = False) -> dict[str, Any]:
        """Ask split to delete an ended job (`/jobs/delete`), with its source if asked."""
        return self._split_post("jobs/delete", job_id, source="true" if source else "false")

    def link(self, job_id: str, ttl: int | None = None) -> dict[str, Any]:
        """Ask split for a viewer's link to one job (`/links`): its page, status and events."""
        return self._split_post("links", job_id, **({"ttl": str(ttl)} if ttl else {}))

    def _split_post(self, route: str, job_id: str, **params: str) -> dict[str, Any]:
        """One of split's operator routes, for one job: its answer, or the error it gave."""
        url = self.url.rsplit("/", 1)[0] + f"/split/{route}"
        try:
            resp = self.session.post(url, params={"job": job_id, **params}, timeout=60)
        except requests.RequestException as exc:
            raise UpstreamError(f"split unreachable at {url}: {describe_error(exc)}") from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        error = str(body.get("error")) if isinstance(body, dict) else resp.text[:200]
        if resp.status_code == 404 and isinstance(body, dict):
            raise NotFound(error)
        if resp.status_code == 409 and isinstance(body, dict):
            raise Conflict(error)
        if resp.status_code != 200 or not isinstance(body, dict):
            raise UpstreamError(f"split answered HTTP {resp.status_code}: {error}")
        return body

    def job(self, job_id: str) -> dict[str, Any]:
        return self._get({"id": job_id})

    def jobs(
        self,
        *,
        state: str | None = None,
        limit: int = 20,
        bucket: str | None = None,
        key: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {"limit": str(limit)}
        params |= {k: v for k, v in (("state", state), ("bucket", bucket), ("key", key)) if v}
        jobs = self._get(params).get("jobs", [])
        return [j for j in jobs if isinstance(j, dict)]

    def find_job(
        self, bucket: str, key: str, *, timeout: float = 60.0, every: float = 0.5
    ) -> dict[str, Any]:
        """The job of an uploaded object, once the bucket notification has created it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.jobs(bucket=bucket, key=key, limit=1)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise NotFound(f"no job for s3://{bucket}/{key} after {timeout:.0f} s")
            time.sleep(every)


# --- the upload -------------------------------------------------------------------------------


def default_key(path: Path) -> str:
    """`cli/<random>/<file name>`: unique, and the file name stays readable in job lists."""
    return f"cli/{uuid.uuid4().hex[:12]}/{path.name}"


def upload_file(
    config: ClientConfig, path: Path, key: str, metadata: dict[str, str] | None = None
) -> None:
    """Put the file into the uploads bucket with the minio SDK; its notification starts the
    job exactly as for any other producer. `metadata`: user metadata without its
    `x-amz-meta-` prefix (the job's options, vtp.options)."""
    from minio import Minio

    parts = urlsplit(config.s3_endpoint)
    client = Minio(
        parts.netloc,
        access_key=config.s3_access_key.get_secret_value(),
        secret_key=config.s3_secret_key.get_secret_value(),
        secure=parts.scheme == "https",
        region=config.s3_region,
    )
    try:
        client.fput_object(
            config.uploads_bucket,
            key,
            str(path),
            content_type=content_type_for(path.name),
            metadata=dict(metadata) if metadata else None,
        )
    except Exception as exc:  # S3Error, urllib3 connection errors
        raise StorageError(f"cannot upload to s3://{config.uploads_bucket}/{key}: {exc}") from exc
