"""Pipeline overhead: wall time from upload to master playlist, against bare ffmpeg.

For a 30 s 1080p30 clip with audio and for a 2 s clip: (a) upload to the uploads bucket of a
local stack and wait until the job's master playlist exists (notification, split, probe, three
queued transcodes, uploads, fan-in); (b) bare ffmpeg on the same machine, one process per
rendition in parallel, with the very same encoding arguments, reading the local file. Prints
both and the ratio. Runs a stack of its own (own run dir and ports).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from minio import Minio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localfaas import runtime  # noqa: E402
from localfaas.config import LocalConfig  # noqa: E402
from tests.ports import free_port, free_port_base  # noqa: E402
from tests.s3 import s3_client  # noqa: E402
from vtp.encode import _tee_outputs, encode_args  # noqa: E402
from vtp.ladder import plan_ladder  # noqa: E402
from vtp.probe import source_info_from_probe  # noqa: E402
from vtp.settings import Settings  # noqa: E402


def make_clip(path: Path, seconds: int) -> None:
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", "8M", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(path),
        ],
        check=True,
    )  # fmt: skip


def bare_ffmpeg(clip: Path, settings: Settings) -> float:
    import json

    probe = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", str(clip)],
            check=True,
            capture_output=True,
        ).stdout
    )
    info = source_info_from_probe(probe, settings, size_bytes=clip.stat().st_size)
    plan = plan_ladder(info, settings)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        procs = []
        for spec in plan:
            out = Path(tmp) / spec.name
            out.mkdir()
            args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(clip)]
            args += [*encode_args(info, spec, settings), "-f", "tee"]
            args.append(_tee_outputs(spec, settings, None))
            procs.append(subprocess.Popen(args, cwd=out))
        for p in procs:
            if p.wait() != 0:
                raise SystemExit("bare ffmpeg failed")
        return time.monotonic() - t0


def through_pipeline(cfg: LocalConfig, s3: Minio, clip: Path) -> float:
    key = f"bench/{time.time_ns()}/{clip.name}"
    t0 = time.monotonic()
    s3.fput_object(cfg.uploads_bucket, key, str(clip))
    status = f"{cfg.gateway_url}/function/status"
    deadline = t0 + 1800
    job_id = None
    while time.monotonic() < deadline:
        if job_id is None:
            jobs = requests.get(status, params={"bucket": "uploads", "key": key}, timeout=10)
            found = jobs.json().get("jobs", [])
            job_id = found[0]["id"] if found else None
        if job_id:
            job = requests.get(status, params={"id": job_id}, timeout=10).json()
            if job["state"] == "succeeded":
                return time.monotonic() - t0
            if job["state"] == "failed":
                raise SystemExit(f"job failed: {job['error']}")
        time.sleep(0.1)
    raise SystemExit("timed out")


def main() -> None:
    run_dir = REPO / ".run" / "bench-pipeline"
    # One queue-worker per rendition: the CE queue-worker runs one call at a time.
    cfg = LocalConfig(
        run_dir=run_dir, port_base=free_port_base(), gateway_port=free_port(), queue_workers=3
    )
    runtime.down(cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    settings = Settings()
    work = Path(tempfile.mkdtemp(prefix="vtp-bench-"))
    try:
        runtime.up(cfg)
        s3 = s3_client(cfg)
        for seconds in (2, 30):
            clip = work / f"clip-{seconds}s-1080p30.mp4"
            make_clip(clip, seconds)
            through_pipeline(cfg, s3, clip)  # warm-up: cold function imports, first probe
            piped = through_pipeline(cfg, s3, clip)
            bare = bare_ffmpeg(clip, settings)
            print(
                f"{seconds:>2} s 1080p30 + audio, 3 renditions: pipeline {piped:6.2f} s "
                f"(upload → master playlist), bare ffmpeg {bare:6.2f} s, ratio {piped / bare:.2f}"
            )
    finally:
        runtime.down(cfg)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
