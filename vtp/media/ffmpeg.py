"""The one place that runs ffmpeg and ffprobe.

Every media step (probe, encode, poster) goes through `run_ffmpeg` / `run_ffprobe` so that the
rules for running an external tool on untrusted input live in one place:

* argument lists only, never a shell;
* the command is logged with URL query strings and credentials redacted, because the source is
  a presigned S3 URL whose signature grants read access to whoever sees it;
* a wall-time budget; on timeout, cancellation or any exception (including one raised by the
  progress callback) the whole process group is terminated, then killed, so no encoder is left
  burning CPU in a function replica that has already answered;
* stderr is drained on its own thread so a chatty ffmpeg never blocks on a full pipe, and its
  tail (redacted) becomes the reason of `FfmpegError`;
* `-progress pipe:1` output is parsed into `Progress` values for an optional callback.

`untrusted_input` builds the input half of a command: the whitelists and network options that
must precede `-i` for a source we did not create.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from vtp.errors import FfmpegError, FfmpegStalled, FfmpegTimeout, InvalidRequest
from vtp.media.build import ffmpeg_path, ffprobe_path

log = logging.getLogger(__name__)

# Protocols an input may use: a presigned S3 URL is http or https; https is http over the
# `tls` protocol, which itself runs over `tcp`. Anything a hostile file could try to reach
# from inside a demuxer (file:, concat:, subfile:, data:, pipe:, crypto:, rtmp: ...) is refused.
PROTOCOL_WHITELIST = "http,https,tls,tcp"

# Demuxers an input may be read with: the containers we accept uploads in. ffmpeg matches this
# list against each alias of the probed demuxer ("mov,mp4,m4a,3gp,3g2,mj2" matches "mov").
# Deliberately absent: hls and dash (playlists that open further URLs), concat (lists of
# files), image2 (image sequences), tty/lavfi and raw video elementary streams. Sound alone
# comes in its own containers: MP3, ADTS AAC, WAV, FLAC and Ogg (Opus, Vorbis).
FORMAT_WHITELIST = "mov,mp4,matroska,webm,avi,mpegts,mpeg,mp3,aac,wav,flac,ogg"
# A job's caption files: SubRip, ASS/SSA and WebVTT, nothing else.
CAPTION_FORMATS = "srt,ass,webvtt"

# Give up on a stalled network read after this long instead of waiting for the wall-time
# budget; ffmpeg wants microseconds.
RW_TIMEOUT_US = 30_000_000

# How much of stderr to keep for error reasons.
STDERR_TAIL_LINES = 30
STDERR_TAIL_CHARS = 2000

# Grace period between SIGTERM (lets ffmpeg finish writing a trailer) and SIGKILL.
TERM_GRACE_SECONDS = 3.0

# ffmpeg dies with the process that started it: a transcode killed with SIGKILL (the OOM
# killer, a node drain) would otherwise leave its encoder running to the end, and its files
# in /tmp. setpriv (util-linux, on every Debian) sets the parent-death signal and execs the
# tool; it survives the exec.
_PDEATHSIG = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []

# SVT-AV1 logs its configuration to stderr whatever ffmpeg's -loglevel; SVT_LOG=1 keeps its
# errors only, so an error's reason (the stderr tail) is ffmpeg's, not twenty config lines.
_TOOL_ENV = {**os.environ, "SVT_LOG": "1"}

# Words in a tool's error output that mean the environment failed, not the input: the same
# run may well succeed later. Anything else (invalid data, unsupported streams) is the input.
_TRANSIENT_OUTPUT = (
    "connection refused",
    "connection reset",
    "connection timed out",
    "timed out",
    "server returned 5",
    "server returned 403",  # a presigned URL that expired: the retry signs a new one
    "server returned 429",
    "broken pipe",
    "network is unreachable",
    "no route to host",
    "temporary failure in name resolution",
    "no space left on device",
    "cannot allocate memory",
    "resource temporarily unavailable",
)


def transient_failure(returncode: int, output: str) -> bool:
    """Whether a failed run is worth trying again (see FfmpegError.transient)."""
    if returncode < 0:
        return True  # killed by a signal: the OOM killer, a stop
    lowered = output.lower()
    return any(words in lowered for words in _TRANSIENT_OUTPUT)


_ADDRESS = re.compile(r" @ 0x[0-9a-f]+\]")
_URL_QUERY = re.compile(r"(?P<base>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"]*)\?[^\s'\"#]*")
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"]+@")


def redact(text: str) -> str:
    """`text` with every URL query string and user-info replaced by a placeholder.

    Presigned URLs carry their signature and credential in the query string; the path (bucket
    and key) is kept because it is what makes a log line useful.
    """
    text = _URL_QUERY.sub(r"\g<base>?<redacted>", text)
    return _URL_USERINFO.sub(r"\g<scheme><redacted>@", text)


def redact_args(args: Sequence[str]) -> list[str]:
    return [redact(a) for a in args]


def untrusted_input(
    url: str,
    *,
    seek: float | None = None,
    threads: int = 0,
    duration: float | None = None,
    formats: str | None = None,
) -> list[str]:
    """Input options and `-i url` for a source we did not create (a user's upload).

    Only http(s) URLs are accepted: a bare path or a `-`-prefixed string would otherwise be
    read as a local file or an option. `formats`: the demuxers allowed, for an input that
    is not a video (CAPTION_FORMATS).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest("the source must be an http(s) URL")
    args = [
        "-protocol_whitelist",
        PROTOCOL_WHITELIST,
        "-format_whitelist",
        formats or FORMAT_WHITELIST,
        "-rw_timeout",
        str(RW_TIMEOUT_US),
        # A long encode reads the object over one HTTP connection for a long time; if it
        # drops, reopen it at the current offset (range request) instead of failing the job.
        "-reconnect",
        "1",
        "-reconnect_on_network_error",
        "1",
        "-reconnect_delay_max",
        "5",
    ]
    if seek is not None and seek > 0:
        # Input-side seek: jumps by index (a range request) instead of decoding from the start.
        args += ["-ss", f"{seek:.3f}"]
    if duration is not None:
        args += ["-t", f"{duration:.3f}"]  # read no more of the input than this
    if threads > 0:
        args += ["-threads", str(threads)]  # the decoder's; 0: ffmpeg decides
    return [*args, "-i", url]


class Progress(BaseModel):
    """One `-progress` report from ffmpeg (about every 0.5 s, and once more at the end)."""

    model_config = ConfigDict(frozen=True)

    out_time: float = 0.0  # seconds of output written so far
    frame: int = 0
    fps: float | None = None  # encoding speed in frames per second
    speed: float | None = None  # multiple of real time
    total_size: int | None = None  # bytes written so far, when ffmpeg knows
    done: bool = False  # `progress=end`: ffmpeg finished writing

    def fraction(self, duration: float) -> float:
        """Share of `duration` encoded, in [0, 1]; 1 once ffmpeg says it is done."""
        if self.done:
            return 1.0
        if duration <= 0:
            return 0.0
        return max(0.0, min(1.0, self.out_time / duration))


def _num(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip().rstrip("x"))
    except ValueError:  # "N/A"
        return None
    return number if number == number and abs(number) != float("inf") else None


# ffmpeg's unset timestamp is -2**63; before the first frame (and, in 9.0 under -copyts, in
# the last block) it prints that, or a difference with it, as a time: centuries either way.
_UNSET_US = 2**62


def parse_progress(fields: dict[str, str]) -> Progress:
    """A `Progress` from one block of `key=value` lines ending with `progress=...`."""
    out_us = _num(fields.get("out_time_us"))
    if out_us is None:
        out_us = _num(fields.get("out_time_ms"))  # also microseconds, despite the name
    if out_us is not None and abs(out_us) >= _UNSET_US:
        out_us = None  # arithmetic on an unset timestamp: no time at all
    frame = _num(fields.get("frame"))
    total = _num(fields.get("total_size"))
    return Progress(
        # ffmpeg prints a negative number before the first frame is written.
        out_time=max(0.0, out_us / 1e6) if out_us is not None else 0.0,
        frame=max(0, int(frame)) if frame is not None else 0,
        fps=_num(fields.get("fps")),
        speed=_num(fields.get("speed")),
        total_size=int(total) if total is not None and total >= 0 else None,
        done=fields.get("progress", "").strip() == "end",
    )


@dataclass(frozen=True)
class RunResult:
    """What a finished ffmpeg/ffprobe run left behind."""

    returncode: int
    stdout: bytes  # empty when stdout carried progress reports
    stderr_tail: str  # redacted
    elapsed: float  # seconds
    cpu_seconds: float = 0.0  # user + system time of the process, when it was reaped here


def run_ffmpeg(
    args: Sequence[str],
    *,
    timeout: float,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    cwd: Path | None = None,
    check: bool = True,
    loglevel: str = "error",
    stall_seconds: float | None = None,
) -> RunResult:
    """Run `ffmpeg <args>` with progress reporting; `args` excludes the global flags added here.

    `stall_seconds`: FfmpegStalled once its progress reports have shown nothing more written
    (no frame, no output time, no byte) for that long, whatever is left of `timeout`: a
    run that hangs is stopped in seconds, not at the end of the call.

    `loglevel` "info" for a run whose result a filter logs (loudnorm's measurement): the
    last STDERR_TAIL_LINES lines are in the result's `stderr_tail`.

    Raises FfmpegTimeout past `timeout` seconds, FfmpegError on a non-zero exit (when `check`)
    or when `cancel` is set; an exception from `on_progress` is re-raised after the kill.
    `on_progress` runs on the calling thread.
    """
    argv = [
        ffmpeg_path(),
        "-hide_banner",
        "-nostdin",  # never read the terminal; ffmpeg otherwise treats stdin as commands
        "-loglevel",
        loglevel,
        "-nostats",  # no carriage-return status line on stderr; -progress replaces it
        "-progress",
        "pipe:1",
        "-y",  # outputs go to directories we own; overwrite what a failed attempt left
        *args,
    ]
    return _run(
        argv,
        timeout=timeout,
        on_progress=on_progress,
        capture_stdout=False,
        cancel=cancel,
        cwd=cwd,
        check=check,
        stall_seconds=stall_seconds,
    )


def run_ffprobe(
    args: Sequence[str],
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    check: bool = True,
) -> RunResult:
    """Run `ffprobe <args>` and capture its stdout (JSON, when asked for)."""
    argv = [ffprobe_path(), "-hide_banner", *args]
    return _run(
        argv,
        timeout=timeout,
        on_progress=None,
        capture_stdout=True,
        cancel=cancel,
        cwd=None,
        check=check,
    )


class _Cancelled(Exception):
    pass


class _Timeout(Exception):
    pass


class _Stalled(Exception):
    pass


def _run(
    argv: Sequence[str],
    *,
    timeout: float,
    on_progress: Callable[[Progress], None] | None,
    capture_stdout: bool,
    cancel: threading.Event | None,
    cwd: Path | None,
    check: bool,
    stall_seconds: float | None = None,
) -> RunResult:
    """Run `argv` in its own process group under a wall-time budget. See the module docstring."""
    tool = Path(argv[0]).name
    shown = shlex.join(redact_args(argv))
    log.info("running %s", shown)
    started = time.monotonic()
    deadline = started + timeout
    try:
        proc = subprocess.Popen(
            [*_PDEATHSIG, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=_TOOL_ENV,
            # A new session makes the child the leader of its own process group, so the
            # whole group (the tool and anything it spawns) can be signalled with killpg.
            start_new_session=True,
        )
    except OSError as exc:  # not installed, not executable, bad working directory
        raise FfmpegError(f"could not start {tool}: {exc.strerror or exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    stdout_chunks: list[bytes] = []
    reports: queue.Queue[Progress] = queue.Queue()

    stderr_reader = threading.Thread(
        target=_drain_stderr, args=(proc.stderr, tail, tool), daemon=True, name=f"{tool}-stderr"
    )
    if capture_stdout:
        stdout_reader = threading.Thread(
            target=_collect, args=(proc.stdout, stdout_chunks), daemon=True, name=f"{tool}-out"
        )
    else:
        stdout_reader = threading.Thread(
            target=_read_progress, args=(proc.stdout, reports), daemon=True, name=f"{tool}-prog"
        )
    stderr_reader.start()
    stdout_reader.start()

    cpu: float | None = None
    # What the last report showed written, and since when.
    written: tuple[int, float, int | None] | None = None
    advanced = started
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise _Cancelled
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            if stall_seconds is not None and time.monotonic() - advanced > stall_seconds:
                raise _Stalled
            try:
                report = reports.get(timeout=min(0.1, remaining))
            except queue.Empty:
                if stdout_reader.is_alive() or not reports.empty():
                    continue
                # stdout is closed: the tool is exiting (or closed it on purpose); wait for it.
                cpu = _reap(proc, min(0.1, max(remaining, 0.001)))
                if cpu is None:
                    continue
                break
            now_written = (report.frame, report.out_time, report.total_size)
            if now_written != written:
                written, advanced = now_written, time.monotonic()
            if on_progress is not None:
                on_progress(report)
    except BaseException as exc:
        _kill_group(proc)
        stdout_reader.join(timeout=2)
        stderr_reader.join(timeout=2)
        elapsed = time.monotonic() - started
        reason_tail = _tail_text(tail)
        if isinstance(exc, _Timeout):
            log.warning("%s timed out after %.1fs and was killed: %s", tool, elapsed, shown)
            raise FfmpegTimeout(
                f"{tool} exceeded its {_seconds(timeout)} time limit and was killed"
                + (f"; last output: {reason_tail}" if reason_tail else "")
            ) from None
        if isinstance(exc, _Stalled):
            log.warning("%s wrote nothing for %.0fs and was killed: %s", tool, stall_seconds, shown)
            raise FfmpegStalled(
                f"{tool} wrote nothing for {_seconds(stall_seconds or 0)} and was killed"
                + (f"; last output: {reason_tail}" if reason_tail else "")
            ) from None
        if isinstance(exc, _Cancelled):
            log.warning("%s cancelled after %.1fs and was killed", tool, elapsed)
            raise FfmpegError(f"{tool} was cancelled") from None
        log.warning("%s killed after %.1fs because of %r", tool, elapsed, exc)
        raise

    stdout_reader.join(timeout=5)
    stderr_reader.join(timeout=5)
    elapsed = time.monotonic() - started
    reason_tail = _tail_text(tail)
    result = RunResult(
        returncode=proc.returncode,
        stdout=b"".join(stdout_chunks),
        stderr_tail=reason_tail,
        elapsed=elapsed,
        cpu_seconds=cpu or 0.0,
    )
    if proc.returncode != 0:
        log.warning(
            "%s exited with status %d after %.1fs: %s",
            tool,
            proc.returncode,
            elapsed,
            reason_tail or "(no error output)",
        )
        if check:
            raise FfmpegError(
                f"{tool} exited with status {proc.returncode}: {reason_tail or 'no error output'}",
                transient=transient_failure(proc.returncode, reason_tail),
            )
    else:
        log.info("%s finished in %.1fs", tool, elapsed)
    return result


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    """Wait up to `timeout` for `proc` to exit and reap it here, with wait4, for its CPU
    time (what the sampler's cost and the benchmarks report); None if it still runs."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.returncode is not None:  # reaped elsewhere: its usage is gone
            return 0.0
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by Popen after all
            proc.wait()
            return 0.0
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _drain_stderr(stream: IO[bytes], tail: deque[str], tool: str) -> None:
    """Keep reading stderr so the pipe never fills; remember the last lines, redacted.

    Context addresses ("[tcp @ 0x55d...]") are dropped and repeats collapsed, so the tail
    that becomes an error reason is short and stable.
    """
    with contextlib.closing(stream):
        for raw in stream:
            line = _ADDRESS.sub("]", redact(raw.decode("utf-8", "replace").rstrip()))
            if line:
                log.debug("%s: %s", tool, line)
                if not tail or tail[-1] != line:
                    tail.append(line)


def _collect(stream: IO[bytes], chunks: list[bytes]) -> None:
    with contextlib.closing(stream):
        while chunk := stream.read(65536):
            chunks.append(chunk)


def _read_progress(stream: IO[bytes], reports: queue.Queue[Progress]) -> None:
    """Turn `-progress` blocks (key=value lines closed by `progress=...`) into reports.

    The position never goes back: ffmpeg 9 under `-copyts` reports no time (an unset
    timestamp) in its last block, which would otherwise read as a return to zero."""
    fields: dict[str, str] = {}
    furthest = 0.0
    with contextlib.closing(stream):
        for raw in stream:
            key, sep, value = raw.decode("utf-8", "replace").strip().partition("=")
            if not sep:
                continue
            fields[key] = value
            if key == "progress":
                report = parse_progress(fields)
                furthest = max(furthest, report.out_time)
                reports.put(report.model_copy(update={"out_time": furthest}))
                fields = {}


def _tail_text(tail: deque[str]) -> str:
    text = " | ".join(tail)
    return text[-STDERR_TAIL_CHARS:]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait a grace period, then SIGKILL whatever is left.

    The group leader is not reaped until the end: while it is a zombie its pid (the group id)
    cannot be reused, so the SIGKILL cannot hit an unrelated process group.
    """
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    grace_end = time.monotonic() + TERM_GRACE_SECONDS
    while time.monotonic() < grace_end and not _has_exited(proc):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child exited, without reaping it (WNOWAIT)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _seconds(value: float) -> str:
    """3300 -> "3300s", 2.96885 -> "3.0s": a time limit as a person reads it."""
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"
