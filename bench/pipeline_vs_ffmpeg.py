"""Pipeline overhead: wall time from upload to master playlist, against bare ffmpeg, and
where the pipeline's time goes.

For a 2 s and a 30 s 1080p30 clip with audio, RUNS times each (after one warm-up):

- the pipeline: upload to the uploads bucket of a local stack (3 queue-workers, one per
  rendition), until the job has succeeded (its own record of the moment). Its parts come
  from the job's own records, along its critical path, the task that ended last: upload
  (the client's PUT), to job (notification and split, until the job row exists), queue
  wait (until that task's attempt began), its encode (which measures its own quality as it
  goes: vtp.media.measure), output upload and the rest of its call (records, the early
  master), fan-in (that task done until the job succeeded); and when the sound task,
  which waits for a queue-worker, began;
- bare ffmpeg: one process per rendition in parallel, running the very command a
  transcode runs (`vtp.media.encode.ffmpeg_command`), reading the same object through the same
  kind of presigned URL, writing to a local folder.

Every figure is the median of the runs, with min and max. Runs a stack of its own.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
from minio import Minio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stackjobs  # noqa: E402  (bench/, this script's folder, is on the path)

from localfaas import runtime  # noqa: E402
from localfaas.config import LocalConfig  # noqa: E402
from tests.ports import free_port, free_port_base  # noqa: E402
from tests.s3 import s3_client  # noqa: E402
from vtp.media.encode import ffmpeg_command  # noqa: E402
from vtp.media.ladder import plan_ladder  # noqa: E402
from vtp.media.probe import probe_source  # noqa: E402
from vtp.settings import Settings  # noqa: E402
from vtp.storage import Storage  # noqa: E402

RUNS = 3
PARTS = (
    "upload", "to job", "queue wait", "encode", "output upload", "rest of call",
    "fan-in", "sound began",
)  # fmt: skip


def make_clip(path: Path, seconds: int) -> None:
    stackjobs.lavfi_clip(path, seconds, size="1920x1080", rate=30, bitrate="8M", faststart=False)


def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot (/proc/stat), to set what a
    run cost beside its wall time: the stack's own processes as well as ffmpeg's."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def bare_ffmpeg(storage: Storage, bucket: str, key: str, settings: Settings) -> float:
    """The transcodes' own commands, in parallel, on a presigned URL of the same object."""
    url = storage.presigned_get(bucket, key, expires=3600)
    size = storage.stat(bucket, key).size
    info = probe_source(url, settings, size_bytes=size)
    plan = plan_ladder(info, settings)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        procs = []
        for spec in plan:
            out = Path(tmp) / spec.name
            out.mkdir()
            args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
            args += ffmpeg_command(url, info, spec, settings)
            procs.append(subprocess.Popen(args, cwd=out))
        for p in procs:
            if p.wait() != 0:
                raise SystemExit("bare ffmpeg failed")
        return time.monotonic() - t0


def through_pipeline(cfg: LocalConfig, s3: Minio, clip: Path) -> dict[str, Any]:
    """One upload through the stack: the total and its parts in seconds, and its key."""
    key = f"bench/{time.time_ns()}/{clip.name}"
    t0 = time.monotonic()
    s3.fput_object(cfg.uploads_bucket, key, str(clip))
    uploaded = time.monotonic()
    uploaded_at = datetime.now().astimezone()
    # The end is the job's own record of it, not when a poll saw it: a status poll every
    # 50 ms cost the stack 6 CPU-seconds of a 30 s job's 85 (status, gateway, PostgreSQL),
    # taken from the encodes the bare commands run alone; twice a second costs nothing.
    job_id = stackjobs.wait_for_success(cfg, key, until=t0 + 1800, poll_s=0.5)
    parts = _parts(cfg, job_id, uploaded_at)
    total = (uploaded - t0) + parts.pop("to end")
    return {"key": key, "total": total, "upload": uploaded - t0} | parts


def _parts(cfg: LocalConfig, job_id: str, uploaded_at: datetime) -> dict[str, float]:
    """The job's own timestamps (PostgreSQL's clock, the same machine) as parts of the run."""
    conn = psycopg2.connect(cfg.postgres_dsn)
    with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT created_at, finished_at FROM jobs WHERE id = %s", (job_id,))
        job = cur.fetchone()
        cur.execute(
            "SELECT rendition, attempt_started_at, finished_at, result FROM tasks"
            " WHERE job_id = %s",
            (job_id,),
        )
        tasks = cur.fetchall()
    conn.close()
    assert job is not None and tasks
    last = max(tasks, key=lambda t: t["finished_at"])  # the critical path's last task
    timings = {k: float(v) for k, v in ((last["result"] or {}).get("timings") or {}).items()}
    call = (last["finished_at"] - last["attempt_started_at"]).total_seconds()
    sound = [t["attempt_started_at"] for t in tasks if t["rendition"] == "audio"]
    return {
        "to end": (job["finished_at"] - uploaded_at).total_seconds(),
        "to job": (job["created_at"] - uploaded_at).total_seconds(),
        "queue wait": (last["attempt_started_at"] - job["created_at"]).total_seconds(),
        "encode": timings.get("encode_s", 0.0),
        "output upload": timings.get("upload_s", 0.0),
        "rest of call": call - sum(timings.values()),
        "fan-in": (job["finished_at"] - last["finished_at"]).total_seconds(),
        # After the job row: the sound is a fourth task for three queue-workers.
        "sound began": (min(sound) - job["created_at"]).total_seconds() if sound else 0.0,
    }


def _figure(values: Sequence[float]) -> str:
    return f"{statistics.median(values):6.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    # Which clips, in seconds: `pipeline_vs_ffmpeg.py 2` times the short clip alone.
    lengths = [int(a) for a in sys.argv[1:]] or [2, 30]
    run_dir = REPO / ".run" / "bench-pipeline"
    # One queue-worker per rendition: the CE queue-worker runs one call at a time.
    cfg = LocalConfig(
        run_dir=run_dir, port_base=free_port_base(), gateway_port=free_port(), queue_workers=3
    )
    runtime.down(cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="vtp-bench-"))
    try:
        runtime.up(cfg)
        env = runtime.stack_env(cfg)
        settings = Settings(
            s3_endpoint=env["VTP_S3_ENDPOINT"],
            s3_access_key=env["VTP_S3_ACCESS_KEY"],  # type: ignore[arg-type]
            s3_secret_key=env["VTP_S3_SECRET_KEY"],  # type: ignore[arg-type]
        )
        storage = Storage.from_settings(settings)
        s3 = s3_client(cfg)
        print(f"median of {RUNS} runs (min, max), after one warm-up; 3 renditions each")
        for seconds in lengths:
            clip = work / f"clip-{seconds}s-1080p30.mp4"
            make_clip(clip, seconds)
            through_pipeline(cfg, s3, clip)  # warm-up: cold function imports, first probe
            runs: list[dict[str, Any]] = []
            bares: list[float] = []
            bare_cpus: list[float] = []
            for _ in range(RUNS):
                cpu = busy_cpu_s()
                figures = through_pipeline(cfg, s3, clip)
                figures["cpu"] = busy_cpu_s() - cpu
                runs.append(figures)
                # The same object the job just read, by the same kind of presigned URL.
                cpu = busy_cpu_s()
                bares.append(bare_ffmpeg(storage, cfg.uploads_bucket, figures["key"], settings))
                bare_cpus.append(busy_cpu_s() - cpu)
            totals = [r["total"] for r in runs]
            ratios = [t / b for t, b in zip(totals, bares, strict=True)]
            print(f"{seconds:>2} s 1080p30 + audio:")
            print(f"   pipeline, upload -> master playlist  {_figure(totals)}")
            for part in PARTS:
                print(f"     {part:<33}  {_figure([r[part] for r in runs])}")
            print(f"     CPU, whole machine                {_figure([r['cpu'] for r in runs])}")
            print(f"   bare ffmpeg, same commands and URL   {_figure(bares)}")
            print(f"     CPU, whole machine                {_figure(bare_cpus)}")
            print(f"   ratio                                {statistics.median(ratios):6.2f}"
                  f" (min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip
    finally:
        runtime.down(cfg)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
