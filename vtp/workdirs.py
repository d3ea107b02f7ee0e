"""Scratch folders for encodes, and the cleaning up of those a killed process left behind.

An encode writes its segments under the system's temporary folder before uploading them. A
function process killed with SIGKILL (the OOM killer, a node drain) cannot remove its folder,
and each one left is the size of an encode; in a long-lived replica they would fill the disk.
So each folder is named after the process that made it, and a process removes, when it
starts, the folders of processes that no longer exist.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "vtp-work-"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def scratch(purpose: str) -> tempfile.TemporaryDirectory[str]:
    """A scratch folder for this process, removed when the `with` block ends."""
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-{purpose}-")


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc to look in: believe kill()
    return stat[stat.rindex(")") + 2] != "Z"


def clean_stale(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders of processes that are gone; returns what was removed."""
    base = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _NAME.match(entry.name)
        if not match or not entry.is_dir() or int(match.group(1)) == os.getpid():
            continue
        if _alive(int(match.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        log.warning("removed %d scratch folder(s) of processes that died: %s", len(removed),
                    ", ".join(p.name for p in removed))  # fmt: skip
    return removed
