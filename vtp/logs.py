"""Log lines that say which job they are about: a context of job, rendition, chunk, attempt
and call id, carried by every line logged inside it, and, with `VTP_LOG_FORMAT=json`, one
JSON object a line for a log pipeline (Loki, Elasticsearch, CloudWatch) to index.

The context lives in a `contextvars.ContextVar`, so it follows the call it was set in:
waitress runs each request in a thread of its own, and each thread has its own context.
The function templates configure logging (`logging.basicConfig` on stderr, which of-watchdog
and faasd collect); `configure` only swaps the format of the handlers already there, so
the same code logs the same way under localfaas and on a real OpenFaaS.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
S = TypeVar("S")
T = TypeVar("T")

# The fields a context may carry, in the order a text line shows them.
FIELDS = ("job_id", "rendition", "chunk", "attempt", "call_id")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "vtp_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Every line logged inside carries these fields (None leaves a field out), on top of
    the context around it."""
    merged = {**_context.get(), **{k: _plain(v) for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def about_job(method: Callable[Concatenate[S, str, P], T]) -> Callable[Concatenate[S, str, P], T]:
    """A method whose first argument is a job id, run in that job's context."""

    @functools.wraps(method)
    def wrapper(self: S, job_id: str, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with context(job_id=job_id):
            return method(self, job_id, *args, **kwargs)

    return wrapper


def bind(**fields: Any) -> None:
    """Add fields to the current context, for what becomes known midway (the attempt
    number once the attempt has begun). Lasts until the enclosing `context` ends."""
    _context.set({**_context.get(), **{k: _plain(v) for k, v in fields.items() if v is not None}})


def current() -> dict[str, Any]:
    return dict(_context.get())


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) else str(value)


class ContextFilter(logging.Filter):
    """Puts the context on each record (`record.vtp`), whatever the formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.vtp = _context.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the context's fields, and the
    exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= dict(getattr(record, "vtp", None) or _context.get())
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The templates' text format, with the context's fields after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "vtp", None) or {}
        shown = " ".join(f"{k}={fields[k]}" for k in FIELDS if k in fields)
        return f"{line} [{shown}]" if shown else line


def configure(log_format: str) -> None:
    """Give the root logger's handlers the context filter and the format asked for
    (`text` or `json`); a root logger without handlers gets one on stderr."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    for handler in root.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        handler.setFormatter(formatter)
