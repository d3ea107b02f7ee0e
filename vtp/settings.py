"""One settings object for every function, read from the environment and OpenFaaS secret files.

OpenFaaS mounts secrets as files under /var/openfaas/secrets/<name>, and Kubernetes secret
names cannot contain underscores, so a secret file `vtp-s3-secret-key` fills the field
`s3_secret_key`. Environment variables (`VTP_S3_SECRET_KEY`) win over secret files so that a
developer can override anything, but production should use secrets for credentials.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

log = logging.getLogger(__name__)

DEFAULT_SECRETS_DIR = Path("/var/openfaas/secrets")
SECRET_PREFIX = "vtp-"  # noqa: S105 (a file-name prefix, not a password)
# How late a heartbeat may come (a busy machine, a slow database write) and still count as
# on time: the margin death_confirm_seconds keeps over heartbeat_seconds.
HEARTBEAT_SLACK_S = 2.0


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
    # Private outputs (vtp.privacy): a job asks with `"private": true` (or the upload's
    # x-amz-meta-vtp-private), and `private_outputs` makes it every job's default. A private
    # job's outputs go to `private_outputs_bucket`, which is never given a public policy, and
    # are played through ws-relay's signed play URLs (vtp_relay.play), which status hands out
    # valid for `play_url_ttl_seconds`.
    private_outputs: bool = False
    private_outputs_bucket: str = "outputs-private"
    play_url_ttl_seconds: int = Field(default=4 * 3600, ge=1, le=7 * 24 * 3600)
    # The buckets sources may come from, for bucket events and manual jobs alike (default: the
    # uploads bucket). Outputs are public-read: a job must not publish another bucket's objects.
    input_buckets: list[str] | None = None

    # --- state and messaging ------------------------------------------------------------
    postgres_dsn: SecretStr = SecretStr("postgresql://vtp@postgres:5432/vtp")
    redis_url: SecretStr = SecretStr("redis://redis:6379/0")
    redis_prefix: str = "vtp"
    gateway_url: str = "http://gateway.openfaas:8080"
    # Bearer token MinIO sends with bucket notifications; when set, split requires it. Empty
    # or absent means "no token required" (MinIO releases before 2019 cannot send one).
    webhook_token: SecretStr | None = None
    # Who may call what (`vtp.access`): the `vtp-credentials` secret, one credential a line,
    # `<name> <view|submit|operate,...> <token>`. Without any, the deployment is closed, but
    # for bucket notifications, unless `open_access` says it is meant to be open.
    credentials: SecretStr | None = None
    open_access: bool = False
    # The legacy read token: a `view` credential named `read-token`.
    read_token: SecretStr | None = None
    # Signs viewer links, the page's sessions and play URLs (`vtp.links`).
    link_secret: SecretStr | None = None
    # The gateway's address as viewers reach it, for the links handed out (default
    # gateway_url, which is often a cluster-internal name).
    public_gateway_url: str | None = None
    link_ttl_seconds: int = Field(default=24 * 3600, gt=0, le=90 * 24 * 3600)
    # Limits per credential (vtp.quotas); 0: none.
    quota_active_jobs: int = Field(default=20, ge=0)
    quota_reprocesses_per_hour: int = Field(default=3, ge=0)
    quota_requests_per_second: float = Field(default=5.0, ge=0)
    quota_request_burst: int = Field(default=20, ge=1)
    session_ttl_seconds: int = Field(default=8 * 3600, gt=0, le=30 * 24 * 3600)
    # Key used to sign job callbacks (HMAC-SHA256 in X-VTP-Signature); optional.
    callback_secret: SecretStr | None = None
    # Job callbacks to loopback/private addresses are refused unless this is set (SSRF guard).
    callback_allow_private_networks: bool = False
    # A job callback that fails is tried again by the sweeper, base * 2**(n-1) seconds apart
    # (capped), for this many hours after the job ended; then it is 'failed' (and can still be
    # sent again by hand: `vtp callbacks redeliver JOB`).
    callback_retry_base_seconds: float = Field(default=30.0, gt=0)
    callback_retry_max_seconds: float = Field(default=3600.0, gt=0)
    callback_retry_hours: float = Field(default=24.0, ge=0)

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
    # Sound alone (voice memos, podcasts, music) becomes a job of sound renditions.
    audio_suffixes: list[str] = Field(
        default_factory=lambda: [".m4a", ".mp3", ".aac", ".wav", ".flac", ".opus", ".ogg", ".oga"]
    )
    # Caption files uploaded beside the videos that name them (vtp.options): not uploads to
    # encode, and not refused either.
    caption_suffixes: list[str] = Field(default_factory=lambda: [".srt", ".vtt", ".ass", ".ssa"])
    segment_seconds: float = 4.0
    gop_seconds: float = 2.0
    # Sound tracks of a source made into audio renditions (languages, commentary); the
    # rest are left out, and the plan says so.
    max_audio_tracks: int = Field(default=8, ge=1, le=32)
    # The encoders' speed for the ladders a job may add beside H.264 (vtp.media.codecs): x265's
    # preset names, SVT-AV1's 0 (slowest) .. 13. Chosen by bits at the rung's VMAF target
    # against encode CPU (bench/codecs.py: 720p rung at VMAF 94, natural, cartoon and grain
    # clips, geometric means; pinned ffmpeg 9.0.2, x265 4.3, SVT-AV1 4.2):
    #   preset         bits/x264 medium  CPU/x264 medium  bits/before  CPU/before
    #   x265 veryfast        1.08             1.59             1.13         0.89
    #   x265 faster          1.08             1.59             1.13         0.89
    #   x265 fast            0.96             1.79             1.00         1.00   (kept)
    #   x265 medium          1.04             2.26             1.08         1.26
    #   SVT-AV1 10           1.21             0.45             1.79         0.71
    #   SVT-AV1 8            0.68             0.63             1.00         1.00   (before)
    #   SVT-AV1 6            0.28             0.78             0.41         1.23   (chosen)
    #   SVT-AV1 5            0.29             1.01             0.43         1.59
    # x265: `fast`; the faster presets spend 13% more bits for 11% less CPU, `medium` more
    # of both. SVT-AV1: 6, which needs 0.41x the bits of 8 for 1.23x its CPU (below 8 the
    # encoder keeps tools that hold VMAF on flat colours and soft motion) and is still
    # cheaper than x264 medium; 5 saves nothing more for 1.29x the CPU.
    hevc_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
                         "slow"] = "fast"  # fmt: skip
    av1_preset: int = Field(default=6, ge=0, le=13)
    # Subtitle tracks (the source's text streams, then the job's caption files) made WebVTT.
    max_text_tracks: int = Field(default=16, ge=0, le=64)
    # The storyboard (vtp.media.storyboard): a thumbnail every `storyboard_seconds`, rounded up
    # to whole segments (thumbnails are the segments' own first pictures; 0: none),
    # `storyboard_width` pixels wide.
    storyboard_seconds: float = Field(default=4.0, ge=0)
    storyboard_width: int = Field(default=160, ge=32, le=640, multiple_of=2)
    # Segment-parallel encoding (vtp.media.chunks): a source longer than the threshold is to be
    # encoded as chunks of whole segments, each its own task, so replicas share one
    # rendition (split plans them, transcode encodes each, fan-in joins them: vtp.media.join).
    chunk_threshold_seconds: float = Field(default=120.0, ge=0)
    chunk_seconds: float = Field(default=48.0, gt=0)
    # Its sound is then a rendition of its own (an HLS audio group), encoded once whole, so
    # no join can make a gap in it. Off: every rendition one call, as before chunks.
    chunked_encoding: bool = True
    # A chunk running `straggler_factor` times longer than its rendition's finished chunks
    # took (per second of source, the median), and at least `straggler_min_seconds`, gets a
    # backup call racing it; the first result wins (vtp.jobs.backups). 0: never.
    straggler_factor: float = Field(default=2.5, ge=0)
    straggler_min_seconds: float = Field(default=60.0, ge=0)
    # --- rate control and quality per bit (vtp.media: ladder, tuning, quality) -------------
    # Every rendition is encoded at a constant-rate factor (x264 `-crf`) under a VBV cap: the
    # per-resolution bit-rate model's figure, and never more than the source's own video bit
    # rate scaled to the rendition's pixels, times `source_bitrate_margin`.
    # x264's preset, chosen by measurement (bench/quality.py's corpus; README "Quality per
    # bit"): at the same SSIM, "veryfast" needs 15% more bits than "medium" for 0.49x its
    # CPU time, "faster" 7% more for 0.77x, and "slow" saves 1% for 1.49x more. Bits are
    # paid for on every view; CPU once, and chunks spread it over replicas.
    x264_preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
        "veryslow",
    ] = "medium"  # fmt: skip
    source_bitrate_margin: float = Field(default=1.25, ge=1)
    # The quality each rendition is encoded for: mean VMAF (libvmaf's default model) against
    # the source scaled to its size (vtp.media.quality), the same for every codec of a rung.
    # Per rung in `quality_targets` (a rung not named there gets `quality_target`): the top
    # rungs at 95, where viewers on large screens see the least loss; smaller rungs lower,
    # since their pictures are shown smaller or already softened by the scaling, and a point
    # there costs more bits for what it shows (docs/quality.md has the measurements).
    quality_target: float = Field(default=93.0, ge=1, le=100)
    quality_targets: dict[str, float] = Field(
        default_factory=lambda: {
            "2160p": 95.0, "1440p": 95.0, "1080p": 95.0, "720p": 94.0,
            "540p": 92.0, "480p": 92.0, "360p": 90.0, "240p": 88.0,
        }
    )  # fmt: skip
    # A rendition measured this many VMAF points below its target is flagged.
    quality_margin: float = Field(default=3.0, ge=0)
    # libvmaf scores every n-th frame of a sample (1: all): a scored frame costs about what a
    # medium-preset encode spends on it, and neighbouring frames score alike. An encode
    # measures itself as it goes (vtp.media.measure; `quality_measure` off: not at all),
    # scoring `quality_measure_share` of its frames spread over all of it, never fewer than
    # three nor more than `quality_measure_max_frames` (a bounded sample: its mean is within
    # about a point of all frames'). Threads per comparison: two.
    quality_vmaf_subsample: int = Field(default=3, ge=1, le=30)
    quality_measure: bool = True
    quality_measure_share: float = Field(default=0.05, gt=0, le=0.5)
    quality_measure_max_frames: int = Field(default=24, ge=3, le=10_000)
    quality_vmaf_threads: int = Field(default=2, ge=1, le=16)
    # Per-title choice (vtp.media.tuning): split encodes `quality_sample_count` samples of
    # `quality_sample_seconds` spread over the source at a few factors and picks, per rung,
    # the one that meets the target. Together the samples cover at most
    # `quality_sample_share` of the source; a source too short for one sample gets
    # `default_crf`, as does every source with sampling off.
    quality_sampling: bool = True
    quality_sample_count: int = Field(default=3, ge=1, le=20)
    quality_sample_seconds: float = Field(default=2.0, gt=0)
    quality_sample_share: float = Field(default=0.02, gt=0, le=1)
    quality_sample_workers: int = Field(default=0, ge=0)  # ffmpeg processes at once; 0: CPUs
    # All of a title's sampling, bounded: past it the plan keeps the default factors.
    quality_sample_timeout_seconds: float = Field(default=60.0, gt=0)
    default_crf: float = Field(default=23.0, ge=0, le=51)
    crf_min: float = Field(default=16.0, ge=0, le=51)
    crf_max: float = Field(default=36.0, ge=0, le=51)
    # The convex hull per title (vtp.media.tuning): a rung is dropped when the rung below,
    # for fewer bits, scaled up to its size, shows within `prune_jnd` VMAF points of what it
    # would: it costs an encode and storage and shows viewers nothing they can tell apart.
    # Six points is one just-noticeable difference (Netflix's figure for VMAF). Measured here:
    # an upload that is a 320x180 picture blown up to 720p gives a 360p whose best probe,
    # scaled up, scores 4.4 below the 720p rung; sharp 720p detail, 14.6 below. 0: never drop.
    prune_jnd: float = Field(default=6.0, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    # Calls in a row that never reach a transcode's handler (function down, restarting, busy)
    # before the rendition is dead-lettered; they spend no attempt (see vtp.lifecycle).
    max_refusals: int = Field(default=8, ge=1)
    # Back-off between tries: base * 2**(n-1) seconds, capped.
    retry_base_seconds: float = Field(default=10.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    # A running attempt records a sign of life this often (vtp.pipeline.transcode), so that
    # the two windows below can tell a live encode from one whose worker is gone.
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    # A running attempt with no heartbeat for this long (at least three intervals) has lost
    # its worker (killed, its node gone): the sweeper writes it off and retries it.
    stale_after_seconds: float = Field(default=120.0, gt=0)
    # A call reported dead (the queue-worker's callback) is written off once its attempt has
    # been silent this long after the report: more than one heartbeat interval (by at least
    # HEARTBEAT_SLACK_S), so a live attempt can refute a forged report
    # (vtp.jobs.attempts.report_death).
    death_confirm_seconds: float = Field(default=25.0, gt=0)
    # How long a transcode keeps trying to record its outcome through a database outage.
    final_write_seconds: float = Field(default=300.0, ge=0)
    # The sweeper lists the input buckets against the jobs every this many seconds, and
    # submits objects that have no job (their event was lost: split down, an old MinIO
    # without a queue dir), once they are `reconcile_grace_seconds` old (their event had its
    # chance) and no older than `reconcile_window_seconds` (0: no reconciliation).
    reconcile_every_seconds: float = Field(default=300.0, ge=1)
    reconcile_grace_seconds: float = Field(default=300.0, ge=0)
    reconcile_window_seconds: float = Field(default=86400.0, ge=0)
    reconcile_max_per_run: int = Field(default=100, ge=1)
    # `json`: one JSON object a log line, with the job, rendition, chunk, attempt and call
    # id of the work it is about (vtp.logs); `text`: the same fields after the message.
    log_format: Literal["text", "json"] = "text"
    # Retention: the sweeper removes the outputs of jobs that ended more than this many days
    # ago (their rows stay, marked), checking every `retention_every_seconds`, at most
    # `retention_max_per_run` jobs a time. 0: outputs are kept for ever.
    retention_days: float = Field(default=0.0, ge=0)
    retention_every_seconds: float = Field(default=3600.0, ge=1)
    retention_max_per_run: int = Field(default=100, ge=1)
    # A rendition still queued this long after its dispatch is dispatched again by the sweeper
    # (its queued call may have been lost); generous, since a long queue is not a lost call.
    redispatch_after_seconds: float = 2 * 3600
    # Fair share (vtp.jobs.scheduling): tasks wait in PostgreSQL and at most `dispatch_slots`
    # calls are in the platform's queue or running at once, all jobs together: size it to
    # what the platform runs at once (the CE queue-worker runs one call at a time: its
    # queue-workers; 3 in docker-compose.yml). At most `job_window` of them are one job's
    # (0: two thirds of the slots, at least one). A job's priority rises one level (25
    # points) per `priority_ageing_seconds` it has waited, so low ones are never starved.
    dispatch_slots: int = Field(default=3, ge=1, le=10_000)
    job_window: int = Field(default=0, ge=0)
    priority_ageing_seconds: float = Field(default=300.0, gt=0)
    # A call's slot frees this long after the queue-worker's report of its end (the CE
    # queue-worker acknowledges the call's NATS message once the report is answered), or
    # `call_report_grace_seconds` after its task ended when no report comes.
    slot_handover_seconds: float = Field(default=0.1, ge=0, le=60)
    call_report_grace_seconds: float = Field(default=10.0, ge=0, le=3600)

    # --- uploads through the progress page (ws-relay: vtp_relay.uploads) -------------------
    # The largest file an upload ticket lets into the uploads bucket: the POST policy's
    # content-length-range, which the object store itself enforces, and for an upload in
    # parts the total its completion checks (it is aborted above). S3 objects end at 5 TiB.
    upload_max_bytes: int = Field(default=20 * 1024**3, ge=1, le=5 * 1024**4)
    # Files above this go up in parts (a single S3 POST takes at most 5 GiB). A part that fails
    # is sent again alone, where a POST starts over; but only a POST is bounded by the store
    # as it arrives (parts are summed at completion), hence the default.
    upload_multipart_threshold_bytes: int = Field(default=5 * 1024**3, ge=1, le=5 * 1024**3)
    # Each part's size: S3 wants at least 5 MiB (but the last) and at most 10,000 parts, so a
    # file that would need more gets larger parts.
    upload_part_bytes: int = Field(default=64 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3)
    # How long a ticket (its POST policy, a part's URL) may be used after it is handed out.
    upload_ticket_seconds: float = Field(default=3600.0, ge=1, le=7 * 24 * 3600)

    # --- limits on untrusted sources ------------------------------------------------------
    max_source_bytes: int = 20 * 1024**3
    max_duration_seconds: float = 6 * 3600
    max_pixels: int = 4096 * 2304
    max_fps: float = 120.0
    ffprobe_timeout_seconds: float = 30.0
    # A source whose header has no duration (a browser's MediaRecorder WebM, a stream dump)
    # is read through to find it, within this time and max_source_bytes (vtp.media.probe).
    duration_scan_timeout_seconds: float = 120.0
    ffmpeg_timeout_seconds: float = 3 * 3600
    # An encode whose progress shows nothing more written for this long is stopped (and a
    # measuring one encoded again without measuring, vtp.pipeline.transcode): a hung ffmpeg
    # costs minutes, not the whole call. Long enough for a chunk of a source with keyframes
    # minutes apart, decoded from the one before its start without writing a frame. 0: never.
    ffmpeg_stall_seconds: float = Field(default=300.0, ge=0)
    # Threads per ffmpeg process; 0 lets ffmpeg decide.
    ffmpeg_threads: int = 0
    # of-watchdog's own exec_timeout (stack.yml `environment`, e.g. "1h"), read under its own
    # name: past it of-watchdog answers 504 but lets the handler run on, so a transcode ends
    # its work itself before then (see `work_deadline_seconds`).
    exec_timeout: str | None = Field(
        default=None, validation_alias=AliasChoices("exec_timeout", "VTP_EXEC_TIMEOUT")
    )
    # of-watchdog's write_timeout, read under its own name too: an answer is cut there.
    write_timeout: str | None = Field(
        default=None, validation_alias=AliasChoices("write_timeout", "VTP_WRITE_TIMEOUT")
    )
    # The platform's own timeouts, when the deployment states them (they are not in the
    # function's environment otherwise): the gateway's upstream_timeout and the queue-worker's
    # ack_wait. With them, the order the calls rely on is checked at start.
    gateway_upstream_timeout: str | None = None
    queue_ack_wait: str | None = None

    @field_validator(
        "webhook_token",
        "read_token",
        "callback_secret",
        "credentials",
        "link_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        """An empty secret file (or variable) means "not set", never "the empty string"."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        return value

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

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Rules across fields, checked once at start: a wrong combination would otherwise
        fail every job at encode time, and be retried as if it were passing."""
        problems: list[str] = []
        if self.segment_seconds <= 0 or self.gop_seconds <= 0:
            problems.append("segment_seconds and gop_seconds must be positive")
        elif abs(round(self.segment_seconds / self.gop_seconds) * self.gop_seconds
                 - self.segment_seconds) > 1e-6:  # fmt: skip
            problems.append(
                f"segment_seconds ({self.segment_seconds:g}) must be a whole multiple of "
                f"gop_seconds ({self.gop_seconds:g}): every segment starts on a keyframe"
            )
        elif not _whole_multiple(self.chunk_seconds, self.segment_seconds):
            problems.append(
                f"chunk_seconds ({self.chunk_seconds:g}) must be a whole multiple of "
                f"segment_seconds ({self.segment_seconds:g}): chunks are runs of whole segments"
            )
        if self.crf_max < self.crf_min:
            problems.append(f"crf_max ({self.crf_max:g}) is below crf_min ({self.crf_min:g})")
        for rung, target in self.quality_targets.items():
            if not 1 <= target <= 100:
                problems.append(
                    f"quality_targets[{rung!r}] ({target:g}) is not a VMAF in [1, 100]"
                    " (targets were SSIM before VMAF: 0.985 is now about 95)"
                )
        for low, high in (
            ("retry_base_seconds", "retry_max_seconds"),
            ("callback_retry_base_seconds", "callback_retry_max_seconds"),
        ):
            if getattr(self, high) < getattr(self, low):
                problems.append(f"{high} ({getattr(self, high):g}) is below {low}")
        if self.stale_after_seconds < 3 * self.heartbeat_seconds:
            problems.append(
                f"stale_after_seconds ({self.stale_after_seconds:g}) must be at least three "
                f"heartbeats ({3 * self.heartbeat_seconds:g}s): a live encode would be written off"
            )
        if self.death_confirm_seconds < self.heartbeat_seconds + HEARTBEAT_SLACK_S:
            problems.append(
                f"death_confirm_seconds ({self.death_confirm_seconds:g}) must exceed "
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) by at least "
                f"{HEARTBEAT_SLACK_S:g}s: a live attempt must be able to refute a forged report"
            )
        if self.private_outputs_bucket == self.outputs_bucket:
            problems.append(
                "private_outputs_bucket must differ from outputs_bucket: the outputs bucket is "
                "public-read, so private outputs there would not be private"
            )
        if self.private_outputs_bucket in self.source_buckets:
            problems.append(
                "private_outputs_bucket cannot be an input bucket: a job for one of its objects "
                "would publish a private output"
            )
        if 0 < self.reconcile_window_seconds <= self.reconcile_grace_seconds:
            problems.append("reconcile_window_seconds must exceed reconcile_grace_seconds")
        timeouts: dict[str, float | None] = {}
        for name in ("exec_timeout", "write_timeout", "gateway_upstream_timeout",
                     "queue_ack_wait"):  # fmt: skip
            raw = getattr(self, name)
            value = parse_duration(raw) if raw is not None and raw.strip() else None
            if raw is not None and raw.strip() and value is None:
                problems.append(f"{name} {raw!r} is not a duration (e.g. 30s, 5m, 1h)")
            timeouts[name] = value if value else None  # 0 means no limit
        for low, high, why in (
            ("exec_timeout", "write_timeout", "of-watchdog cuts the answer at write_timeout"),
            ("exec_timeout", "gateway_upstream_timeout", "the gateway gives up on the call"),
            ("gateway_upstream_timeout", "queue_ack_wait",
             "the queue delivers the call again while it still runs"),
            ("exec_timeout", "queue_ack_wait",
             "the queue delivers the call again while it still runs"),
        ):  # fmt: skip
            a, b = timeouts[low], timeouts[high]
            strict = high == "queue_ack_wait"
            if a is not None and b is not None and (a >= b if strict else a > b):
                op = "below" if strict else "at most"
                problems.append(f"{low} ({a:g}s) must be {op} {high} ({b:g}s): {why}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def media_suffixes(self) -> list[str]:
        """The file names split takes from a bucket: video's, then sound's."""
        return [*self.video_suffixes, *self.audio_suffixes]

    def target_for(self, rung: str) -> float:
        """The quality (VMAF) rung `rung` is encoded for."""
        return self.quality_targets.get(rung, self.quality_target)

    @property
    def public_gateway(self) -> str:
        return (self.public_gateway_url or self.gateway_url).rstrip("/")

    @property
    def public_s3_endpoint(self) -> str:
        return self.s3_public_endpoint or self.s3_endpoint

    @property
    def output_buckets(self) -> list[str]:
        """Where outputs are written: the public outputs bucket and the private one."""
        return [self.outputs_bucket, self.private_outputs_bucket]

    @property
    def source_buckets(self) -> list[str]:
        """The buckets sources may be read from (`input_buckets`, else the uploads bucket)."""
        return list(self.input_buckets or [self.uploads_bucket])

    @property
    def exec_timeout_seconds(self) -> float | None:
        """of-watchdog's exec_timeout in seconds; None when unset or 0 (no limit)."""
        if self.exec_timeout is None:
            return None
        seconds = parse_duration(self.exec_timeout)
        return seconds if seconds and seconds > 0 else None

    def work_deadline_seconds(self) -> float:
        """How long one call may work, from the moment its handler starts.

        The smaller of the encode budget (`ffmpeg_timeout_seconds`) and the function's
        exec_timeout minus a reserve for uploading outputs and recording the outcome (a tenth
        of it, between 5 s and 5 min): the call then ends, recorded, before of-watchdog gives
        up on it.
        """
        limit = self.exec_timeout_seconds
        if limit is None:
            return self.ffmpeg_timeout_seconds
        reserve = min(max(limit * 0.1, 5.0), 300.0)
        return max(min(self.ffmpeg_timeout_seconds, limit - reserve), 1.0)


def load_at_start() -> Settings:
    """The settings, read when a function starts; a bad value or combination stops the start
    with one readable line (in the function's log) instead of failing every call."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"vtp: invalid settings, not starting: {problems}") from None
    from vtp import access, logs

    logs.configure(settings.log_format)
    try:
        gate = access.Gate(settings)
    except ValueError as exc:
        raise SystemExit(f"vtp: invalid settings, not starting: {exc}") from None
    for warning in gate.warnings():
        logging.getLogger("vtp.access").warning(warning)
    return settings


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float | None:
    """Seconds from a duration as OpenFaaS components read them: Go's `time.ParseDuration`
    ("1h", "2m30s", "1.5h", "500ms") or, as of-watchdog also accepts, bare seconds ("30").
    None when it is neither."""
    value = text.strip()
    if not value:
        return None
    try:
        return float(int(value))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(value) and pos > 0 else None


def _whole_multiple(length: float, unit: float) -> bool:
    """`length` is 1, 2, 3... times `unit` (to a microsecond)."""
    n = round(length / unit)
    return n >= 1 and abs(n * unit - length) <= 1e-6
