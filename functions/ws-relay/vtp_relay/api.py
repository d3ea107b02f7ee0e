"""ws-relay's JSON API (`/api/...`): the jobs the page lists and shows, and the guard that turns
errors into JSON answers (the upload form's tickets are `vtp_relay.uploads`)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic_core import to_jsonable_python
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vtp.errors import InvalidRequest
from vtp.http import error_response
from vtp.models import JobState
from vtp.pipeline import Pipeline
from vtp.settings import Settings

# --- the JSON API --------------------------------------------------------------------------------


class JobsApi:
    """The page's JSON routes about jobs. The Pipeline (PostgreSQL, Redis, storage clients) is
    built on first use, once per process, and its blocking calls run in the threadpool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None

    def pipeline(self) -> Pipeline:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = Pipeline.from_settings(self.settings)
            return self._pipeline

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
            return JSONResponse(
                answer["body"], status_code=answer["statusCode"], headers=answer.get("headers")
            )

    return run


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return JSONResponse({"error": detail}, status_code=status)
