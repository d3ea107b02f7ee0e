"""ws-relay's JSON API (`/api/...`): the jobs the page lists and shows, the presigned upload
tickets of its upload form, and the guard that turns errors into JSON answers."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vtp.errors import Forbidden, InvalidRequest
from vtp.http import error_response
from vtp.models import JobState
from vtp.pipeline import Pipeline
from vtp.settings import Settings
from vtp.storage import Storage, content_type_for

_MIME = re.compile(r"^[A-Za-z0-9][\w.+-]{0,63}/[A-Za-z0-9][\w.+-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# --- the JSON API --------------------------------------------------------------------------------


class UploadRequest(BaseModel):
    """POST /api/uploads: what the browser is about to upload."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field(min_length=1, max_length=1024)
    content_type: str | None = Field(default=None, max_length=200)


class UploadTicket(BaseModel):
    url: str
    bucket: str
    key: str
    method: str = "PUT"
    headers: dict[str, str]


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


class JobsApi:
    """The page's JSON routes. The Pipeline (PostgreSQL, Redis, storage clients) is built on
    first use, once per process, and its blocking calls run in the threadpool."""

    UPLOAD_URL_TTL_S = 3600

    def __init__(self, settings: Settings, *, uploads_enabled: bool = True) -> None:
        self.settings = settings
        self.uploads_enabled = uploads_enabled
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self._storage: Storage | None = None

    def pipeline(self) -> Pipeline:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = Pipeline.from_settings(self.settings)
            return self._pipeline

    def storage(self) -> Storage:
        # Uploads need only the storage client: no database round trip to hand out a URL.
        with self._lock:
            if self._storage is None:
                self._storage = Storage.from_settings(self.settings)
            return self._storage

    # --- blocking parts ----------------------------------------------------------------------
    def list_jobs(
        self, state: JobState | None, limit: int, bucket: str | None, key: str | None
    ) -> dict[str, Any]:
        p = self.pipeline()
        jobs = p.store.list(state, limit, bucket=bucket, key=key)
        return {"jobs": [p.describe_job(j, listing=True) for j in jobs]}

    def get_job(self, job_id: str) -> dict[str, Any]:
        p = self.pipeline()
        return p.describe_job(p.find_job(job_id))

    def upload_ticket(self, request: UploadRequest) -> UploadTicket:
        name = safe_upload_name(request.filename, self.settings.media_suffixes)
        wanted = (request.content_type or "").strip()
        content_type = wanted if _MIME.match(wanted) else content_type_for(name)
        key = f"web/{uuid.uuid4()}/{name}"
        bucket = self.settings.uploads_bucket
        url = self.storage().presigned_put(bucket, key, expires=self.UPLOAD_URL_TTL_S)
        return UploadTicket(url=url, bucket=bucket, key=key, headers={"Content-Type": content_type})

    # --- endpoints ---------------------------------------------------------------------------
    async def list_endpoint(self, request: Request) -> Response:
        q = request.query_params
        try:
            state = JobState(q["state"]) if q.get("state") else None
            limit = max(1, min(int(q.get("limit") or 50), 1000))
        except ValueError as exc:
            raise InvalidRequest(
                f"state must be one of {[s.value for s in JobState]} and limit a number"
            ) from exc
        body = await run_in_threadpool(
            self.list_jobs, state, limit, q.get("bucket") or None, q.get("key") or None
        )
        return _json(body)

    async def job_endpoint(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.get_job, request.path_params["job_id"]))

    async def upload_endpoint(self, request: Request) -> Response:
        if not self.uploads_enabled:
            raise Forbidden("uploads through this page are turned off (RELAY_UPLOADS_ENABLED)")
        raw = await request.body()
        try:
            upload = UploadRequest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise InvalidRequest(f"{where}: {first.get('msg', 'invalid')}") from exc
        ticket = await run_in_threadpool(self.upload_ticket, upload)
        return _json(ticket.model_dump())


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(to_jsonable_python(body), status_code=status)


def _guarded(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Named exceptions become their status with a JSON body; anything else a JSON 500."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            answer = error_response(exc)
            return JSONResponse(answer["body"], status_code=answer["statusCode"])

    return run


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return JSONResponse({"error": detail}, status_code=status)
