"""The `vtp` client's settings: `ClientConfig`, from flags, then the environment (VTP_*), then
an env file (`--env-file`, or the `.run/stack.env` that `make up` writes)."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from vtp.errors import InvalidRequest

log = logging.getLogger(__name__)


# --- settings ---------------------------------------------------------------------------------


class ClientConfig(BaseModel):
    """What the client needs to reach a stack; secrets stay SecretStr so they never print."""

    gateway_url: str = "http://127.0.0.1:8080"
    ws_url: str | None = None
    events_url: str | None = None
    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"
    uploads_bucket: str = "uploads"
    # The credential (vtp.access) sent as a bearer token on every call: VTP_TOKEN, which
    # `make up` writes into stack.env (the local stack's operator); VTP_READ_TOKEN, the
    # legacy read token, when no VTP_TOKEN is given.
    token: SecretStr | None = None
    read_token: SecretStr | None = None
    # An event stream whose snapshot has not come this long after asking is not live (a
    # gateway that buffers it): `vtp watch` polls instead (vtp_cli.watch).
    stall_seconds: float = Field(default=5.0, gt=0)

    @property
    def auth_headers(self) -> dict[str, str]:
        chosen = self.token or self.read_token
        token = chosen.get_secret_value().strip() if chosen else ""
        return {"Authorization": f"Bearer {token}"} if token else {}

    @field_validator("gateway_url", "s3_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("ws_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError(f"expected a ws(s) URL, got {value!r}")
        return value

    @property
    def status_url(self) -> str:
        return f"{self.gateway_url}/function/status"

    @property
    def sse_url(self) -> str:
        """SSE through the gateway: the route that works even where WebSockets do not."""
        return self.events_url or f"{self.gateway_url}/function/ws-relay/events"

    @property
    def poll_url(self) -> str:
        """The relay's events-since route, next to its SSE route: what is left where a
        gateway buffers streams (CE gateway 0.25.4 and older)."""
        base = self.sse_url.split("?", 1)[0]
        return (base.removesuffix("/events") if base.endswith("/events") else base) + "/poll"


_CONFIG_FIELDS = tuple(ClientConfig.model_fields)


def find_stack_env(start: Path) -> Path | None:
    """The nearest `.run/stack.env` at or above `start` (what `make up` writes)."""
    for folder in (start, *start.parents):
        candidate = folder / ".run" / "stack.env"
        if candidate.is_file():
            return candidate
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, values shell-quoted as `make up` writes them; comments ignored."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            words = shlex.split(value, comments=True)
        except ValueError as exc:
            raise InvalidRequest(f"{path}: cannot parse the value of {key.strip()}") from exc
        values[key.strip()] = " ".join(words)
    return values


def load_config(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    *,
    env_file: Path | None = None,
    cwd: Path | None = None,
) -> ClientConfig:
    """Flags beat VTP_* environment variables, which beat the env file."""
    path = env_file or find_stack_env(cwd or Path.cwd())
    if env_file is not None and not env_file.is_file():
        raise InvalidRequest(f"env file {env_file} does not exist")
    layers: list[Mapping[str, str]] = []
    if path is not None:
        log.debug("settings from %s", path)
        layers.append(read_env_file(path))
    layers.append(environ)
    values: dict[str, Any] = {}
    for layer in layers:
        for name in _CONFIG_FIELDS:
            value = layer.get(f"VTP_{name.upper()}")
            if value:
                values[name] = value
    values.update({k: v for k, v in flags.items() if v and k in _CONFIG_FIELDS})
    try:
        return ClientConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"bad settings: {problems}") from exc
