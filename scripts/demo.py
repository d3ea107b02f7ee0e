"""The main job, end to end on the local stack: upload a sample clip straight to the bucket,
watch it transcode, and print where the outputs are.

Run by `make demo` after `make up`; reads the stack's settings from .run/stack.env.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests
from minio import Minio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
console = Console()


def read_env(path: Path) -> dict[str, str]:
    import shlex

    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = shlex.split(v)[0] if v else ""
    return env


def make_clip(path: Path, seconds: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(path),
        ],
        check=True,
    )  # fmt: skip


def main() -> int:
    env = read_env(REPO / ".run" / "stack.env")
    gateway = env["VTP_GATEWAY_URL"]
    endpoint = env["VTP_S3_ENDPOINT"]
    clip = REPO / ".run" / "demo" / "sample-1080p.mp4"
    if not clip.exists():
        console.print("generating a 12 s 1080p30 sample clip with ffmpeg…")
        make_clip(clip)
    s3 = Minio(
        endpoint.split("://", 1)[1],
        access_key=env["VTP_S3_ACCESS_KEY"],
        secret_key=env["VTP_S3_SECRET_KEY"],
        secure=endpoint.startswith("https"),
        region="us-east-1",
    )
    key = f"demo/sample {time.strftime('%Y%m%d-%H%M%S')}.mp4"
    bucket = env["VTP_UPLOADS_BUCKET"]
    s3.fput_object(bucket, key, str(clip), content_type="video/mp4")
    console.print(f"uploaded [bold]s3://{bucket}/{key}[/bold]; waiting for the job…")

    status_url = f"{gateway}/function/status"
    job = None
    deadline = time.monotonic() + 60
    while job is None and time.monotonic() < deadline:
        r = requests.get(status_url, params={"bucket": bucket, "key": key}, timeout=10)
        jobs = r.json().get("jobs", []) if r.ok else []
        job = jobs[0] if jobs else None
        if job is None:
            time.sleep(0.5)
    if job is None:
        console.print("[red]no job was created within 60 s; see `make status` and the logs[/red]")
        return 1
    job_id = job["id"]
    console.print(f"job [bold]{job_id}[/bold]")

    with Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%  {task.fields[info]}"),
        console=console,
    ) as progress:
        bars: dict[str, TaskID] = {}
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            job = requests.get(status_url, params={"id": job_id}, timeout=10).json()
            for rend in job["renditions"]:
                live = rend.get("progress") or {}
                pct = 100.0 if rend["state"] == "succeeded" else float(live.get("percent") or 0)
                info = rend["state"]
                if live.get("fps"):
                    info += f"  {live['fps']:.0f} fps  {live.get('speed') or 0:.2f}x"
                if rend["name"] not in bars:
                    bars[rend["name"]] = progress.add_task(rend["name"], total=100, info="")
                progress.update(bars[rend["name"]], completed=pct, info=info)
            if job["state"] in ("succeeded", "failed"):
                break
            time.sleep(0.5)

    table = Table(title=f"job {job_id}: {job['state']}")
    for col in ("rendition", "size", "bitrate", "state", "playlist"):
        table.add_column(col)
    for rend in job["renditions"]:
        table.add_row(
            rend["name"],
            f"{rend.get('width')}x{rend.get('height')}",
            f"{(rend.get('avg_bitrate') or 0) / 1000:.0f} kb/s",
            rend["state"] + (f" ({rend['error']})" if rend.get("error") else ""),
            (rend.get("urls") or {}).get("playlist", ""),
        )
    console.print(table)
    if job["state"] != "succeeded":
        console.print(f"[red]job failed:[/red] {job.get('error')}")
        return 1
    console.print(f"master playlist: [bold]{job['urls']['master']}[/bold]")
    console.print(f"poster:          {job['urls'].get('poster', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
