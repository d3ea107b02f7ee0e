"""One settings object for every function, read from the environment and OpenFaaS secret files.

OpenFaaS mounts secrets as files under /var/openfaas/secrets/<name>, and Kubernetes secret
names cannot contain underscores, so a secret file `vtp-s3-secret-key` fills the field
`s3_secret_key`. Environment variables (`VTP_S3_SECRET_KEY`) win over secret files so that a
developer can override anything, but production should use secrets for credentials.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SECRETS_DIR = Path("/var/openfaas/secrets")
SECRET_PREFIX = "vtp-"  # noqa: S105 (a file-name prefix, not a password)


class OpenFaaSSecretsSource(PydanticBaseSettingsSource):
    """Reads `<secrets dir>/vtp-<field-with-hyphens>` files, the OpenFaaS way."""

    def __init__(self, settings_cls: type[BaseSettings], secrets_dir: Path) -> None:
        super().__init__(settings_cls)
        self.secrets_dir = secrets_dir

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        path = self.secrets_dir / (SECRET_PREFIX + field_name.replace("_", "-"))
        try:
            return path.read_text().strip(), field_name, False
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


class Settings(BaseSettings):
    """Configuration shared by split, transcode-*, status and ws-relay."""

    model_config = SettingsConfigDict(env_prefix="VTP_", extra="ignore")

    # --- object storage (MinIO in production) --------------------------------------------
    s3_endpoint: str = "http://minio:9000"
    # Endpoint used in URLs handed to clients (browsers, callbacks); defaults to s3_endpoint.
    s3_public_endpoint: str | None = None
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"
    uploads_bucket: str = "uploads"
    outputs_bucket: str = "outputs"

    # --- state and messaging ------------------------------------------------------------
    postgres_dsn: SecretStr = SecretStr("postgresql://vtp@postgres:5432/vtp")
    redis_url: SecretStr = SecretStr("redis://redis:6379/0")
    redis_prefix: str = "vtp"
    gateway_url: str = "http://gateway.openfaas:8080"
    # Bearer token MinIO sends with bucket notifications; when set, split requires it.
    webhook_token: SecretStr | None = None
    # Key used to sign job callbacks (HMAC-SHA256 in X-VTP-Signature); optional.
    callback_secret: SecretStr | None = None
    # Job callbacks to loopback/private addresses are refused unless this is set (SSRF guard).
    callback_allow_private_networks: bool = False

    # --- the function's own role ----------------------------------------------------------
    # transcode-<resolution> functions share one handler; this says which rung they encode.
    rendition: str | None = None

    # --- pipeline policy --------------------------------------------------------------------
    default_renditions: list[str] = Field(default_factory=lambda: ["360p", "720p", "1080p"])
    video_suffixes: list[str] = Field(
        default_factory=lambda: [
            ".mp4",
            ".mov",
            ".mkv",
            ".webm",
            ".avi",
            ".m4v",
            ".mpg",
            ".mpeg",
            ".ts",
        ]
    )
    segment_seconds: float = 4.0
    gop_seconds: float = 2.0
    max_attempts: int = 3
    # A rendition still queued this long after its dispatch is dispatched again by the sweeper
    # (its queued call may have been lost); generous, since a long queue is not a lost call.
    redispatch_after_seconds: float = 2 * 3600

    # --- limits on untrusted sources ------------------------------------------------------
    max_source_bytes: int = 20 * 1024**3
    max_duration_seconds: float = 6 * 3600
    max_pixels: int = 4096 * 2304
    max_fps: float = 120.0
    ffprobe_timeout_seconds: float = 30.0
    ffmpeg_timeout_seconds: float = 3 * 3600
    # Threads per ffmpeg process; 0 lets ffmpeg decide.
    ffmpeg_threads: int = 0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        secrets_dir = Path(os.environ.get("VTP_SECRETS_DIR", str(DEFAULT_SECRETS_DIR)))
        return (init_settings, env_settings, OpenFaaSSecretsSource(settings_cls, secrets_dir))

    @property
    def public_s3_endpoint(self) -> str:
        return self.s3_public_endpoint or self.s3_endpoint
