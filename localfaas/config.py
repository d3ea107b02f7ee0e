"""Where the local stack lives and which ports it uses.

Everything is derived from a handful of environment variables so that tests (and two
developers on one machine) can run a second, isolated stack beside `make up`'s.
"""

from __future__ import annotations

import json
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class LocalConfig(BaseSettings):
    """Settings of the local runtime itself (not of the functions)."""

    model_config = SettingsConfigDict(env_prefix="LOCALFAAS_", extra="ignore")

    run_dir: Path = Field(default=REPO_ROOT / ".run")
    stack_file: Path = Field(default=REPO_ROOT / "stack.yml")
    # More stack files whose functions run beside stack.yml's (the tests' fixture functions).
    extra_stack_files: list[Path] = Field(default_factory=list)
    gateway_port: int = 8080
    # Ports of the backing services and functions are allocated from this base upward.
    port_base: int = 15400
    namespace: str = "openfaas-fn"
    uploads_bucket: str = "uploads"
    outputs_bucket: str = "outputs"
    # Private jobs' outputs (vtp.privacy): made, and kept without any public policy.
    private_outputs_bucket: str = "outputs-private"
    # Where bucket notifications go; by default the gateway's sync route to `split`, as
    # docs/deploy.md configures MinIO (an async route would queue them behind transcodes).
    notify_endpoint: str | None = None
    # Queue-worker replicas. The CE queue-worker (0.14.0) runs one call at a time and has no
    # max_inflight any more: parallel async calls need replicas, as `kubectl scale
    # deploy/queue-worker --replicas=N` gives on Kubernetes.
    queue_workers: int = Field(default=3, ge=1, le=32)
    # Function replicas, by name (e.g. '{"transcode-720p": 2}'); otherwise the function's
    # `com.openfaas.scale.min` label, else 1. Each replica is a process on a port of its own
    # and the gateway spreads calls over them, as a Kubernetes Service over its pods.
    function_replicas: dict[str, int] = Field(default_factory=dict)
    ack_wait: float = 3600.0
    # Gateway timeouts (seconds), as the CE gateway's read/write/upstream timeouts.
    upstream_timeout: float = 3600.0
    # How the gateway passes responses on: "accept" streams only requests that say
    # `Accept: text/event-stream` (CE gateways from 2024); "buffer" never streams (0.25.4).
    gateway_streaming: Literal["accept", "buffer"] = "accept"
    # How much of a buffered response collects before the gateway lets it out (see gateway.py).
    gateway_buffer_bytes: int = Field(default=32 * 1024, ge=512)
    # Extra environment per function, on top of stack.yml's ("*": every function), e.g.
    # '{"transcode-1080p": {"exec_timeout": "6s"}}': what `faas-cli deploy --env` would set.
    function_env: dict[str, dict[str, str]] = Field(default_factory=dict)

    # --- ports -------------------------------------------------------------------------
    @property
    def postgres_port(self) -> int:
        return self.port_base

    @property
    def redis_port(self) -> int:
        return self.port_base + 1

    @property
    def nats_port(self) -> int:
        return self.port_base + 2

    @property
    def nats_monitor_port(self) -> int:
        return self.port_base + 3

    @property
    def s3_port(self) -> int:
        return self.port_base + 4

    @property
    def function_port_base(self) -> int:
        """Functions get consecutive ports from here, in stack.yml order."""
        return self.port_base + 20

    # --- paths -------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "state"

    @property
    def build_dir(self) -> Path:
        return self.run_dir / "build"

    @property
    def secrets_dir(self) -> Path:
        """One folder per function, holding only the secrets it declares."""
        return self.run_dir / "secrets"

    @property
    def stack_env_file(self) -> Path:
        return self.run_dir / "stack.env"

    @property
    def notify_url(self) -> str:
        return self.notify_endpoint or f"{self.gateway_url}/function/split"

    @cached_property
    def credentials(self) -> dict[str, str]:
        """Passwords and keys of the local services, made once per run dir and then kept; one
        a newer version needs that the file lacks is added to it (existing ones never change)."""
        path = self.run_dir / "credentials.json"
        kept: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        fresh = {
            **_access_credentials(),
            "postgres_user": "vtp",
            "postgres_password": secrets.token_urlsafe(18),
            "postgres_db": "vtp",
            "s3_access_key": "vtp" + secrets.token_hex(6),
            "s3_secret_key": secrets.token_urlsafe(24),
            "webhook_token": secrets.token_urlsafe(24),
            "callback_secret": secrets.token_urlsafe(24),
            "gateway_user": "admin",
            "gateway_password": secrets.token_urlsafe(18),
            "link_secret": secrets.token_urlsafe(32),
        }
        data = fresh | kept
        if data != kept:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2))
            path.chmod(0o600)
        return data

    @property
    def postgres_dsn(self) -> str:
        c = self.credentials
        return (
            f"postgresql://{c['postgres_user']}:{c['postgres_password']}"
            f"@127.0.0.1:{self.postgres_port}/{c['postgres_db']}"
        )

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"


def _access_credentials() -> dict[str, str]:
    """The local stack's own credentials, one per scope (see vtp.access): the local default
    is closed, as a deployment's should be."""
    return {
        "view_token": "vtp_" + secrets.token_hex(20),
        "submit_token": "vtp_" + secrets.token_hex(20),
        "operate_token": "vtp_" + secrets.token_hex(20),
    }
