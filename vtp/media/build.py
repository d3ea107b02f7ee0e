"""Which ffmpeg and ffprobe the pipeline runs, and their versions.

One ffmpeg build everywhere (docs/ffmpeg.md): the static ffmpeg inside the `imageio-ffmpeg`
wheel, pinned by the wheel's version in every requirements file. The same binary on every
replica is what keeps chunks encoded on different replicas byte-compatible at their joins,
and makes a measurement repeatable: x264, x265, SVT-AV1 and libvmaf all change their output
from one release to the next.

That wheel has no ffprobe. ffprobe only reads containers and stream headers, so it comes from
the OS (Debian's `ffmpeg` package); its version is recorded beside ffmpeg's, and
tests/test_build.py checks that the two read our corpus alike.

`VTP_FFMPEG` / `VTP_FFPROBE` name other binaries (an operator's own build); the versions
recorded with every result then say so.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)


@functools.cache
def ffmpeg_path() -> str:
    """The ffmpeg to run: `VTP_FFMPEG`, else the pinned build from the imageio-ffmpeg wheel,
    else (the wheel missing, which a warning reports) whatever `ffmpeg` is on PATH."""
    explicit = os.environ.get("VTP_FFMPEG")
    if explicit:
        return explicit
    try:
        # Imported here: a process that never encodes (status, the relay) does not need it.
        import imageio_ffmpeg

        pinned = str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as exc:
        log.warning("the pinned ffmpeg build is missing (%s); using ffmpeg from PATH", exc)
        return shutil.which("ffmpeg") or "ffmpeg"
    # Run through the `ffmpeg` link to it where there is one (make setup's, the image's), so
    # that `ps` and `pgrep ffmpeg` name the process as operators expect.
    linked = shutil.which("ffmpeg")
    if linked and os.path.realpath(linked) == os.path.realpath(pinned):
        return linked
    return pinned


@functools.cache
def ffprobe_path() -> str:
    """The ffprobe to run: `VTP_FFPROBE`, else `ffprobe` on PATH (the OS's)."""
    return os.environ.get("VTP_FFPROBE") or shutil.which("ffprobe") or "ffprobe"


class Build(BaseModel):
    """The tools' own words for their versions (`ffmpeg -version`'s first line, shortened)."""

    model_config = ConfigDict(frozen=True)

    ffmpeg: str
    ffprobe: str

    def label(self) -> str:
        return f"ffmpeg {self.ffmpeg}, ffprobe {self.ffprobe}"


def _version(exe: str) -> str:
    try:
        out = subprocess.run(
            [exe, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    words = (out.splitlines() or [""])[0].split()
    # "ffmpeg version n9.0.2-17-g2a571b6068-20260930 Copyright ...": the third word
    return words[2] if len(words) > 2 and words[1] == "version" else "unknown"


@functools.cache
def build() -> Build:
    """The versions of the ffmpeg and ffprobe this process runs (asked once per process)."""
    return Build(ffmpeg=_version(ffmpeg_path()), ffprobe=_version(ffprobe_path()))
