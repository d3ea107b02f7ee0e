"""The ffmpeg wrapper: redaction, progress parsing, time limits, cancellation, cleanup."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from vtp.errors import FfmpegError, FfmpegStalled, FfmpegTimeout, InvalidRequest
from vtp.media.ffmpeg import (
    Progress,
    _run,
    parse_progress,
    redact,
    redact_args,
    run_ffmpeg,
    run_ffprobe,
    untrusted_input,
)

# A lavfi encode that runs far longer than any test waits for it.
ENDLESS = [
    "-re",  # read the generator at real time: the run lasts as long as the clip
    "-f",
    "lavfi",
    "-i",
    "testsrc2=size=320x240:rate=25:duration=600",
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-f",
    "null",
    "-",
]


def _children(name: str) -> set[int]:
    """Pids of this process's children whose command name is `name` (zombies excluded)."""
    found = set()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == me and comm == name and state != "Z":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _watch_children(name: str, stop: threading.Event, seen: set[int]) -> threading.Thread:
    def watch() -> None:
        while not stop.is_set():
            seen.update(_children(name))
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_redact_hides_query_strings_and_credentials():
    url = (
        "https://minio:9000/uploads/a%20b/clip.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=deadbeef"
    )
    text = f"[http @ 0x1] {url}: Server returned 403 Forbidden"
    shown = redact(text)
    assert "deadbeef" not in shown and "AKIA" not in shown
    assert "https://minio:9000/uploads/a%20b/clip.mp4?<redacted>" in shown
    assert redact("http://user:pw@host/x") == "http://<redacted>@host/x"
    assert redact_args(["-i", url, "out.mp4"])[1].endswith("?<redacted>")
    assert redact("no urls here: a=b?c") == "no urls here: a=b?c"


def test_parse_progress_block():
    block = {
        "frame": "90",
        "fps": "45.5",
        "bitrate": "N/A",
        "total_size": "1024",
        "out_time_us": "3008000",
        "out_time_ms": "3008000",
        "speed": "1.5x",
        "progress": "continue",
    }
    progress = parse_progress(block)
    assert progress == Progress(
        out_time=3.008, frame=90, fps=45.5, speed=1.5, total_size=1024, done=False
    )
    assert progress.fraction(6.016) == pytest.approx(0.5)
    start = parse_progress(
        {"out_time_us": "-9223372036854775807", "speed": "N/A", "progress": "continue"}
    )
    assert start.out_time == 0.0 and start.speed is None
    # ffmpeg 9's last block under -copyts: the unset timestamp's difference, positive.
    end = parse_progress({"out_time_us": "9223372036851533000", "progress": "end"})
    assert end.out_time == 0.0 and end.done
    assert parse_progress({"out_time_us": "N/A", "progress": "end"}).fraction(10) == 1.0


@pytest.mark.parametrize(
    "url", ["/etc/passwd", "file:///etc/passwd", "-i", "concat:a.mp4|b.mp4", "http://"]
)
def test_untrusted_input_accepts_only_http_urls(url):
    with pytest.raises(InvalidRequest):
        untrusted_input(url)


def test_untrusted_input_puts_whitelists_before_the_input():
    args = untrusted_input("https://s3.example/b/k.mp4?sig=1", seek=2.5)
    i = args.index("-i")
    assert args[i + 1] == "https://s3.example/b/k.mp4?sig=1"
    for option in ("-protocol_whitelist", "-format_whitelist", "-ss"):
        assert args.index(option) < i
    assert "hls" not in args[args.index("-format_whitelist") + 1].split(",")
    assert "file" not in args[args.index("-protocol_whitelist") + 1].split(",")


def test_progress_callback_sees_increasing_time_and_the_end():
    reports: list[Progress] = []
    result = run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-f",
            "null",
            "-",
        ],
        timeout=60,
        on_progress=reports.append,
    )
    assert result.returncode == 0
    assert reports, "no progress reported"
    times = [r.out_time for r in reports]
    assert times == sorted(times)
    assert reports[-1].done
    assert not any(r.done for r in reports[:-1])
    assert reports[-1].out_time == pytest.approx(3.0, abs=0.1)
    assert reports[-1].frame == 75


def test_timeout_kills_ffmpeg():
    seen: set[int] = set()
    stop = threading.Event()
    watcher = _watch_children("ffmpeg", stop, seen)
    started = time.monotonic()
    try:
        with pytest.raises(FfmpegTimeout) as caught:
            run_ffmpeg(ENDLESS, timeout=1.0)
    finally:
        stop.set()
        watcher.join()
    elapsed = time.monotonic() - started
    assert seen, "the ffmpeg child was never observed"
    assert not any(_alive(pid) for pid in seen), "ffmpeg survived its timeout"
    assert not _children("ffmpeg")
    assert elapsed < 1.0 + 3.0 + 2.0  # timeout + SIGTERM grace + slack
    assert caught.value.http_status == 504
    assert "time limit" in caught.value.reason


@pytest.mark.slow
def test_timeout_kills_the_whole_process_group(tmp_path):
    """Grandchildren go too: the group is signalled, not just the direct child."""
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    with pytest.raises(FfmpegTimeout):
        _run(
            [sys.executable, "-c", script],
            timeout=1.5,
            on_progress=None,
            capture_stdout=True,
            cancel=None,
            cwd=None,
            check=True,
        )
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild outlived the process group kill"


def test_a_run_that_writes_nothing_is_stopped_long_before_its_time_limit(tmp_path):
    """An input that never answers (a FIFO nobody writes to: ffmpeg waits for it for ever,
    as in a deadlock) makes no progress; stopped after `stall_seconds`, not at `timeout`.
    A run that keeps writing is left alone however slowly it writes."""
    fifo = tmp_path / "never"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(FfmpegStalled) as caught:
        run_ffmpeg(["-f", "rawvideo", "-s", "16x16", "-i", str(fifo), "-f", "null", "-"],
                   timeout=60, stall_seconds=1.0)  # fmt: skip
    assert time.monotonic() - started < 1.0 + 3.0 + 2.0  # stall + SIGTERM grace + slack
    assert not isinstance(caught.value, FfmpegTimeout) and "wrote nothing" in caught.value.reason
    assert not _children("ffmpeg")
    slow = ["-readrate", "1", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=4:duration=3",
            "-f", "null", "-"]  # fmt: skip
    assert run_ffmpeg(slow, timeout=30, stall_seconds=1.5).returncode == 0


def test_cancel_event_stops_ffmpeg():
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(FfmpegError) as caught:
        run_ffmpeg(ENDLESS, timeout=60, cancel=cancel)
    assert not isinstance(caught.value, FfmpegTimeout)
    assert "cancelled" in caught.value.reason
    assert time.monotonic() - started < 5
    assert not _children("ffmpeg")


def test_exception_in_progress_callback_kills_ffmpeg_and_propagates():
    class Stop(Exception):
        pass

    def callback(progress: Progress) -> None:
        if progress.out_time > 0.2:
            raise Stop

    with pytest.raises(Stop):
        run_ffmpeg(ENDLESS, timeout=60, on_progress=callback)
    assert not _children("ffmpeg")


def test_failure_reason_is_the_redacted_stderr_tail(caplog):
    caplog.set_level(logging.DEBUG, logger="vtp.media.ffmpeg")
    # Port 9 (discard) is closed here: the connection is refused at once.
    url = "http://127.0.0.1:9/uploads/clip.mp4?X-Amz-Signature=topsecret"
    with pytest.raises(FfmpegError) as caught:
        run_ffmpeg(["-i", url, "-f", "null", "-"], timeout=30)
    reason = caught.value.reason
    assert "Connection refused" in reason
    assert "http://127.0.0.1:9/uploads/clip.mp4?<redacted>" in reason
    assert "topsecret" not in reason
    assert "topsecret" not in caplog.text
    assert "?<redacted>" in caplog.text  # the command line itself was logged, redacted


def test_ffprobe_captures_stdout():
    result = run_ffprobe(
        [
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=1",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ],
        timeout=30,
    )
    assert result.stdout.decode().strip() == "320,240"


def test_nonzero_exit_without_check_returns_the_result():
    result = run_ffprobe(["-v", "error", "/nonexistent/file.mp4"], timeout=30, check=False)
    assert result.returncode != 0
    assert "No such file" in result.stderr_tail


def test_ffmpeg_dies_with_the_process_that_started_it(tmp_path):
    """A transcode killed with SIGKILL (the OOM killer) left its ffmpeg encoding to the end;
    now the kernel kills ffmpeg with its parent."""
    import signal
    import subprocess

    pid_file = tmp_path / "parent.pid"
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "from vtp.media.ffmpeg import run_ffmpeg\n"
        f"run_ffmpeg({ENDLESS!r}, timeout=300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        encoders: set[int] = set()
        while time.monotonic() < deadline and not encoders:
            encoders = {
                int(e.name)
                for e in Path("/proc").iterdir()
                if e.name.isdigit()
                and _ppid(int(e.name)) == parent.pid
                and _comm(int(e.name)) == "ffmpeg"
            }
            time.sleep(0.1)
        assert encoders, "ffmpeg never started"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in encoders) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in encoders), "ffmpeg outlived its killed parent"
    finally:
        parent.kill()


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _comm(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.index("(") + 1 : stat.rindex(")")]


@pytest.mark.parametrize(
    ("returncode", "output", "transient"),
    [
        (1, "moov atom not found", False),
        (1, "Invalid data found when processing input", False),
        (1, "Server returned 503 Service Unavailable", True),
        (1, "Server returned 403 Forbidden (access denied)", True),
        (1, "Connection refused", True),
        (1, "No space left on device", True),
        (-9, "", True),
        (1, "Error while decoding stream #0:0: Invalid data found", False),
    ],
)
def test_failures_tell_the_input_from_its_surroundings(returncode, output, transient):
    from vtp.media.ffmpeg import transient_failure

    assert transient_failure(returncode, output) is transient


def test_an_input_ffmpeg_cannot_read_is_a_permanent_failure(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    with pytest.raises(FfmpegError) as caught:
        run_ffmpeg(["-i", str(junk), "-f", "null", "-"], timeout=30)
    assert caught.value.transient is False, caught.value.reason


def test_scratch_folders_of_dead_processes_are_removed(tmp_path):
    import subprocess

    from vtp import workdirs

    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"{workdirs.PREFIX}{gone.pid}-720p-abc"
    (stale / "seg").mkdir(parents=True)
    mine = tmp_path / f"{workdirs.PREFIX}{os.getpid()}-720p-def"
    mine.mkdir()
    live = tmp_path / f"{workdirs.PREFIX}1-360p-ghi"  # pid 1 always runs
    live.mkdir()
    other = tmp_path / "someone-elses"
    other.mkdir()
    assert workdirs.clean_stale(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and live.exists() and other.exists()
