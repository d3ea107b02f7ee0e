"""Upload to job accepted while the transcode pool is busy: bucket events through split's
sync route (how docs/deploy.md configures MinIO) against the async route.

The CE queue-worker runs one call at a time and every async call shares one queue, so with
all queue-workers busy on long transcodes, a bucket event sent to /async-function/split waits
until one of them finishes. Sent to /function/split it does not queue at all.

For each route: a stack of its own with 3 queue-workers (the size the deploy files give a
three-rung ladder), three manual jobs whose 720p transcodes keep all three busy, then an
upload to the uploads bucket; the figure is the time from the end of the upload until the
status function knows its job. Prints both, and how long the transcodes had left.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localfaas import runtime  # noqa: E402
from localfaas.config import LocalConfig  # noqa: E402
from tests.ports import free_port, free_port_base  # noqa: E402
from tests.s3 import s3_client  # noqa: E402

WORKERS = 3
RUNS = 3
LONG_SECONDS = 40  # of 720p: long enough that the encodes outlast the measurement
GIVE_UP_S = 300.0


def clip(path: Path, seconds: int, size: str) -> Path:
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path


def running_transcodes(gateway: str, job_ids: list[str]) -> int:
    running = 0
    for job_id in job_ids:
        view = requests.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10)
        running += sum(1 for r in view.json()["renditions"] if r["state"] == "running")
    return running


def measure(route: str, long_clip: Path, short_clip: Path) -> tuple[float | None, int]:
    run_dir = REPO / ".run" / f"bench-ingest-{route}"
    gateway_port = free_port()
    cfg = LocalConfig(
        run_dir=run_dir,
        port_base=free_port_base(),
        gateway_port=gateway_port,
        queue_workers=WORKERS,
        notify_endpoint=f"http://127.0.0.1:{gateway_port}/{route}/split",
        function_env={"*": {"VTP_INPUT_BUCKETS": '["uploads", "bench-sources"]'}},
    )
    runtime.down(cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        runtime.up(cfg)
        s3 = s3_client(cfg, "bench-sources")
        jobs = []
        for i in range(WORKERS):
            key = f"long-{i}.mp4"
            s3.fput_object("bench-sources", key, str(long_clip))
            r = requests.post(
                f"{cfg.gateway_url}/function/split",
                json={"bucket": "bench-sources", "key": key, "renditions": ["720p"]},
                timeout=60,
            )
            r.raise_for_status()
            jobs.append(r.json()["job_id"])
        deadline = time.monotonic() + 60
        while running_transcodes(cfg.gateway_url, jobs) < WORKERS:
            if time.monotonic() > deadline:
                raise SystemExit("the long transcodes did not all start")
            time.sleep(0.2)
        key = f"bench/{time.time_ns()}.mp4"
        s3.fput_object(cfg.uploads_bucket, key, str(short_clip))
        uploaded = time.monotonic()
        while time.monotonic() - uploaded < GIVE_UP_S:
            r = requests.get(
                f"{cfg.gateway_url}/function/status",
                params={"bucket": cfg.uploads_bucket, "key": key},
                timeout=10,
            )
            if r.json()["jobs"]:
                return time.monotonic() - uploaded, running_transcodes(cfg.gateway_url, jobs)
            time.sleep(0.05)
        return None, running_transcodes(cfg.gateway_url, jobs)
    finally:
        runtime.down(cfg)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="vtp-bench-ingest-"))
    try:
        long_clip = clip(work / "long.mp4", LONG_SECONDS, "1280x720")
        short_clip = clip(work / "short.mp4", 2, "640x360")
        print(f"median of {RUNS} runs (min, max), each on a fresh stack")
        for route, what in (
            ("function", "sync route (/function/split, the deployed way)"),
            ("async-function", "async route (/async-function/split)"),
        ):
            runs = [measure(route, long_clip, short_clip) for _ in range(RUNS)]
            seconds = [s if s is not None else GIVE_UP_S for s, _ in runs]
            still = [n for _, n in runs]
            shown = (
                f"{statistics.median(seconds):.2f} s (min {min(seconds):.2f}, "
                f"max {max(seconds):.2f})"
            )
            if any(s is None for s, _ in runs):
                shown += f", {sum(s is None for s, _ in runs)} run(s) gave up at {GIVE_UP_S:.0f} s"
            print(
                f"upload -> job accepted, {WORKERS} queue-workers busy on {WORKERS} transcodes, "
                f"{what}: {shown} ({min(still)}-{max(still)} of the transcodes still running then)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
