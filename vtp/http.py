"""What every handler shares: one Pipeline per process, and exceptions turned into responses.

This is the only place where named exceptions become HTTP statuses. A handler returns
`ok(...)` or lets a `VtpError` propagate into `error_response`; anything unexpected becomes a
500 whose body says nothing about the internals (the traceback goes to the log).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from vtp import access, logs
from vtp.errors import TooManyRequests, Unauthorized, VtpError, http_status
from vtp.pipeline import Pipeline
from vtp.settings import Settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_pipeline: Pipeline | None = None

Response = dict[str, Any]


def pipeline() -> Pipeline:
    """The process's Pipeline, built on first use (cold start) and reused by every call."""
    global _pipeline
    with _lock:
        if _pipeline is None:
            settings = Settings()
            logs.configure(settings.log_format)
            _pipeline = Pipeline.from_settings(settings)
        return _pipeline


def stop_work() -> None:
    """Ask the process's Pipeline, if one was built, to stop its calls in flight (SIGTERM)."""
    with _lock:
        built = _pipeline
    if built is not None:
        built.stopping.set()


def ok(body: Any, status: int = 200) -> Response:
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    return {"statusCode": status, "body": _jsonable(body)}


def error_response(exc: BaseException) -> Response:
    status = http_status(exc)
    if isinstance(exc, VtpError):
        log.warning("%s: %s", type(exc).__name__, exc.reason)
        response: Response = {
            "statusCode": status,
            "body": {"error": exc.reason, "type": type(exc).__name__},
        }
        if isinstance(exc, Unauthorized):
            response["headers"] = {"WWW-Authenticate": access.CHALLENGE}  # RFC 6750
        if isinstance(exc, TooManyRequests):
            response["headers"] = {"Retry-After": str(exc.retry_after)}  # RFC 9110
            response["body"]["limit"] = exc.limit
        return response
    log.error("unexpected error", exc_info=exc)
    return {"statusCode": 500, "body": {"error": "internal error"}}


def guarded(fn: Callable[[Any, Any], Response]) -> Callable[[Any, Any], Response]:
    """Wrap a handler so every exception becomes a JSON response with the right status."""

    def handle(event: Any, context: Any) -> Response:
        try:
            return fn(event, context)
        except Exception as exc:
            return error_response(exc)

    handle.__doc__ = fn.__doc__
    return handle


def header(event: Any, name: str) -> str | None:
    value = event.headers.get(name)
    return str(value) if value is not None else None


def authorize(event: Any, function: str) -> access.Principal:
    """Who the call is, if the route's scope (vtp.access.ROUTES) lets it in; else
    Unauthorized or Forbidden, which `error_response` turns into 401 or 403."""
    presented = access.Presented(authorization=header(event, "Authorization"), query=event.query)
    return pipeline().gate.authorize(function, event.path or "/", presented)


def _jsonable(value: Any) -> Any:
    """datetimes, UUIDs and enums inside plain dicts, as JSON-ready values."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)
