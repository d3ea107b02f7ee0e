"""of-watchdog's `prefix_logs`: each line a function writes to stdout or stderr reaches the
function's log as `2026/12/02 01:19:29 stderr: <line>` (Go's log package: local date and
time, then the stream), unless the function's environment sets `prefix_logs` to false.

localfaas runs a watchdog template's function process without of-watchdog in front of it, so
when the prefix is on it runs the process under this: `python -m localfaas.logprefix --
ARGV...`. It pumps both streams line by line to its own stdout (the log file), exits with
the function's status, and lets the function handle SIGTERM (the process group gets it):
it waits for the function's last lines instead of dying first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import IO


def enabled(value: str | None) -> bool:
    """of-watchdog reads `prefix_logs` with Go's strconv.ParseBool, keeping its default
    (true) for anything that does not parse."""
    return value not in ("0", "f", "F", "false", "FALSE", "False")


def _pump(stream: IO[bytes], name: bytes, out: IO[bytes], lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        stamp = time.strftime("%Y/%m/%d %H:%M:%S").encode()
        with lock:
            out.write(stamp + b" " + name + b": " + line.rstrip(b"\n") + b"\n")
            out.flush()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: python -m localfaas.logprefix -- ARGV...")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the function, in our group, gets it too
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, lock = sys.stdout.buffer, threading.Lock()
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, b"stdout", out, lock), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, b"stderr", out, lock), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    code = proc.wait()
    for pump in pumps:
        pump.join(timeout=5)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
