"""ws-relay's tunables (`RelayOptions`), the parsing of a client's parameters (the job it
follows, where it resumes) and the small helpers the relay's modules share."""

from __future__ import annotations

import re
import uuid
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from vtp.errors import InvalidRequest

Order = tuple[int, int]  # a stream id as a sort key (see vtp.events.stream_id_order)
ZERO: Order = (0, 0)
ALL = "all"
_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")


class RelayOptions(BaseSettings):
    """Tunables of the relay (environment `RELAY_<NAME>`); the defaults suit production."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    queue_size: int = Field(default=1000, ge=1)
    ping_interval_s: float = Field(default=15.0, gt=0)
    # A single send blocked this long means the client stopped reading: cut it off.
    send_timeout_s: float = Field(default=10.0, gt=0)
    # How long a close frame / the end of an SSE stream may wait for a congested socket.
    close_timeout_s: float = Field(default=30.0, gt=0)
    # How long a new client waits for the Redis subscription (at start, after a reconnect).
    ready_timeout_s: float = Field(default=5.0, gt=0)
    all_max_jobs: int = Field(default=50, ge=1)
    all_window_s: float = Field(default=3600.0, gt=0)
    # At most this many stream entries are scanned to find the recent jobs of an "all" view.
    all_max_scan: int = Field(default=20_000, ge=1)
    # The page's upload form hands out presigned PUT URLs to whoever reaches the function;
    # turn it off where the function is reachable by people who should not upload.
    uploads_enabled: bool = True


def parse_follow(value: str | None) -> str | None:
    """The job a client follows: a canonical job id, or None for every job ("all" / empty)."""
    if value is None or value.strip() in ("", ALL):
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError as exc:
        raise InvalidRequest(f"job must be a job id or {ALL!r}, got {value[:80]!r}") from exc


def parse_last_id(value: str | None) -> str | None:
    """A resume point: a stream id ("1732560000000-3" or "1732560000000"), or None."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not _STREAM_ID.match(value):
        raise InvalidRequest(f"last_id is not a stream id: {value[:80]!r}")
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
