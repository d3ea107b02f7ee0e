"""Small test clips generated with ffmpeg's lavfi sources: nothing committed, any size.

Each distinct clip is encoded once per test session and copied wherever a test asks for
it: many tests want the same few seconds of 640x360, and a copy costs nothing next to an
encode. A copy, not a link, so a test that truncates or corrupts its clip on purpose
cannot spoil another's.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

_CACHE = Path(tempfile.mkdtemp(prefix="vtp-test-clips-"))
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


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
    # The same arguments make the same clip; the suffix picks the container.
    name = hashlib.sha256("\0".join(args).encode()).hexdigest()[:20] + path.suffix
    cached = _CACHE / name
    if not cached.exists():
        partial = cached.with_name(f".{cached.name}")  # the same suffix: the same muxer
        subprocess.run([*args, str(partial)], check=True)
        partial.replace(cached)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, path)
    return path
