"""Small test clips generated with ffmpeg's lavfi sources: nothing committed, any size."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_clip(
    path: Path,
    *,
    size: str = "1280x720",
    seconds: float = 2.0,
    rate: int = 30,
    audio: bool = True,
    extra: list[str] | None = None,
) -> Path:
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    args += extra or []
    if audio:
        args += ["-c:a", "aac", "-shortest"]
    args.append(str(path))
    subprocess.run(args, check=True)
    return path
