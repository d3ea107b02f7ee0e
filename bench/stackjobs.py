"""What the benchmarks share: the test pattern they upload, and waiting for a job of a
benchmark's stack, as a client would: through status."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import requests

from localfaas.config import LocalConfig


def lavfi_clip(
    path: Path,
    seconds: int,
    *,
    size: str,
    rate: int,
    bitrate: str,
    tone_hz: int = 440,
    faststart: bool = True,
) -> None:
    """An H.264 + AAC file of ffmpeg's moving test pattern and a sine tone (a distinct
    `tone_hz` makes distinct bytes, so uploads of several are distinct sources), made once
    per run from lavfi sources: nothing to download or keep in the repository."""
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=48000:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", bitrate, "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", *(["-movflags", "+faststart"] if faststart else []),
            str(path),
        ],
        check=True,
    )  # fmt: skip


def _view(cfg: LocalConfig) -> dict[str, str]:
    """The stack's view credential: status is closed to callers without one (vtp.access)."""
    return {"Authorization": f"Bearer {cfg.credentials['view_token']}"}


def wait_for_success(cfg: LocalConfig, key: str, *, until: float, poll_s: float) -> str:
    """The id of the job for uploads/`key` once it has succeeded; exits on its failure or
    when time.monotonic() passes `until`. Returns as soon as the success is seen, so the
    caller's clock stops at it."""
    status = f"{cfg.gateway_url}/function/status"
    auth = _view(cfg)
    job_id = None
    while time.monotonic() < until:
        if job_id is None:
            found = requests.get(
                status, params={"bucket": "uploads", "key": key}, headers=auth, timeout=10
            )
            found.raise_for_status()  # a refusal (401: no credential) is not "not yet"
            jobs = found.json().get("jobs", [])
            job_id = jobs[0]["id"] if jobs else None
        if job_id:
            job = requests.get(status, params={"id": job_id}, headers=auth, timeout=10).json()
            if job["state"] == "succeeded":
                return str(job_id)
            if job["state"] == "failed":
                raise SystemExit(f"job failed: {job['error']}")
        time.sleep(poll_s)
    raise SystemExit("timed out")


def prediction_lines(cfg: LocalConfig, job_id: str) -> list[str]:
    """What the samples predicted of each video rendition (its `estimate`) against what the
    job's encode measured: bit rate (AVERAGE-BANDWIDTH of its segments, its sound included
    when it is muxed in), SSIM, and encode CPU (the calls' encode seconds with
    `-threads 1`)."""
    job = requests.get(
        f"{cfg.gateway_url}/function/status",
        params={"id": job_id},
        headers=_view(cfg),
        timeout=10,
    ).json()
    lines = []
    for r in job["renditions"]:
        q = r.get("quality") or {}
        if r.get("kind") == "audio" or not q.get("predicted_bitrate"):
            continue
        lines.append(
            f"{r['name']:>6} crf {r['crf']:g}: {q['predicted_bitrate'] / 1000:.0f} kbit/s "
            f"predicted, {r['avg_bitrate'] / 1000:.0f} real; SSIM {q['predicted']:.4f} "
            f"predicted, {q['score'] or 0:.4f} real"
        )
    plan = job.get("plan") or {}
    if plan.get("note"):
        lines.append(f"plan: {plan['note']}")
    elif plan:
        lines.append(f"sampling: {plan.get('sampling_cpu_seconds')} s CPU, "
                     f"{plan.get('sampling_wall_seconds')} s wall")  # fmt: skip
    return lines
