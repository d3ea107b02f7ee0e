"""The `vtp` command line: the event -> progress-bar model and wire parsers (pure), settings
resolution, and one real `vtp upload --watch` on the session's stack."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from localfaas.config import LocalConfig
from tests.clips import make_clip
from vtp.errors import InvalidRequest
from vtp.events import ProgressEvent
from vtp_cli.config import ClientConfig, find_stack_env, load_config, read_env_file
from vtp_cli.progress import JobProgress, bar_rows, format_eta
from vtp_cli.transport import Event, Snapshot, SseParser, Tick, parse_ws_message, with_query

JOB = "0b6a4f1e-0000-4000-8000-000000000001"


def ev(id_: str | None, rendition: str | None, state: str, percent: float = 0.0, **kw: Any):
    return ProgressEvent(
        id=id_, job_id=kw.pop("job_id", JOB), rendition=rendition, state=state, percent=percent,
        **kw,
    )  # fmt: skip


# --- the model --------------------------------------------------------------------------------
def test_events_move_bars_in_ladder_order() -> None:
    job = JobProgress(JOB)
    assert job.apply_event(ev("1-0", None, "queued"))
    assert job.apply_event(ev("2-0", "720p", "queued"))
    assert job.apply_event(ev("2-1", "360p", "queued"))
    assert job.apply_event(
        ev("3-0", "720p", "running", 12.5, fps=48.0, speed=1.6, eta_seconds=75, attempt=1)
    )
    assert job.state == "running", "a running rendition means a running job"
    rows = bar_rows(job)
    assert [r.name for r in rows] == ["360p", "720p"]
    r720 = rows[1]
    assert (r720.percent, r720.state, r720.fps, r720.speed, r720.eta) == (
        12.5, "running", "48 fps", "1.60x", "ETA 1:15",
    )  # fmt: skip
    assert rows[0].fps == rows[0].speed == rows[0].eta == "", "no rates before it runs"
    assert job.last_event_id == "3-0"
    # A sound track's encode reports 0 fps: it has no frames, so no rate is shown.
    assert job.apply_event(ev("4-0", "audio", "running", 40.0, fps=0.0, speed=9.5))
    sound = next(r for r in bar_rows(job) if r.name == "audio")
    assert (sound.fps, sound.speed) == ("", "9.50x")


def test_old_and_duplicate_events_are_ignored() -> None:
    job = JobProgress(JOB)
    job.apply_event(ev("10-0", "360p", "running", 50.0))
    assert not job.apply_event(ev("10-0", "360p", "running", 50.0)), "duplicate"
    assert not job.apply_event(ev("9-5", "360p", "running", 30.0)), "older (a replay)"
    assert job.renditions["360p"].percent == 50.0
    assert job.apply_event(ev("10-1", "360p", "running", 60.0))
    assert not job.apply_event(ev("1-0", "360p", "running", 1.0, job_id="another-job"))
    assert job.renditions["360p"].percent == 60.0


def test_terminal_states_stick_and_succeeded_is_full() -> None:
    job = JobProgress(JOB)
    job.apply_event(ev("5-0", "360p", "running", 97.0, eta_seconds=1.0, fps=30.0))
    job.apply_event(ev("6-0", "360p", "succeeded", 99.0))
    r = job.renditions["360p"]
    assert (r.state, r.percent, r.eta_seconds) == ("succeeded", 100.0, 0.0)
    # A late keep-alive of the same attempt, with a newer id, must not reopen it.
    assert not job.apply_event(ev("7-0", "360p", "running", 99.0))
    assert bar_rows(job)[0].state == "succeeded"
    job.apply_event(ev("8-0", None, "succeeded", 100.0))
    assert job.finished and job.succeeded and job.failure_reason() is None
    assert not job.apply_event(ev("9-0", None, "running"))


def test_a_redrive_reopens_what_had_ended() -> None:
    """`vtp redrive` takes a failed job and its dead rendition back to queued: those events
    say `reopened`, and only they leave an end."""
    job = JobProgress(JOB)
    job.apply_event(ev("1-0", "360p", "dead", error="oom"))
    job.apply_event(ev("2-0", None, "failed", error="rendition 360p dead: oom"))
    assert not job.apply_event(ev("3-0", "360p", "running", 5.0))  # a late event: ignored
    assert job.apply_event(ev("4-0", None, "queued", reopened=True))
    assert job.apply_event(ev("4-1", "360p", "queued", reopened=True))
    assert (job.state, job.error, job.renditions["360p"].state) == ("queued", None, "queued")
    assert job.apply_event(ev("5-0", "360p", "running", 10.0))
    assert not job.finished and bar_rows(job)[0].state == "running"


def test_retry_then_failure_has_a_reason() -> None:
    job = JobProgress(JOB)
    job.apply_event(ev("1-0", "720p", "running", 40.0, attempt=1))
    job.apply_event(ev("2-0", "720p", "retrying", 40.0, attempt=1, error="ffmpeg died"))
    job.apply_event(ev("3-0", "720p", "running", 5.0, attempt=2))
    row = bar_rows(job)[0]
    assert (row.percent, row.state) == (5.0, "running (attempt 2)"), "a retry starts over"
    job.apply_event(ev("4-0", "720p", "dead", 5.0, attempt=3, error="ffmpeg died again"))
    job.apply_event(ev("5-0", None, "failed", error="720p: ffmpeg died again"))
    assert job.finished and not job.succeeded
    assert job.failure_reason() == "720p: ffmpeg died again"
    job.error = None
    assert job.failure_reason() == "720p: ffmpeg died again", "falls back to rendition errors"


def test_snapshot_then_replay_does_not_go_backwards() -> None:
    job = JobProgress(JOB)
    snap = {
        JOB: {
            "_job": ev("1-0", None, "running").model_dump(),
            "360p": ev("20-0", "360p", "running", 80.0).model_dump(),
            "720p": ev("19-0", "720p", "running", 40.0).model_dump() | {"rendition": None},
        },
        "other-job": {"360p": ev("21-0", "360p", "running", 1.0, job_id="other-job").model_dump()},
    }
    assert job.apply_snapshot(snap) == 3
    assert set(job.renditions) == {"360p", "720p"}, "the field name names the rendition"
    # The server replays what followed the client's last id; older ones change nothing.
    assert not job.apply_event(ev("15-0", "360p", "running", 60.0))
    assert job.apply_event(ev("22-0", "720p", "running", 45.0))
    assert [r.percent for r in job.ordered()] == [80.0, 45.0]
    assert job.apply_snapshot({JOB: {"360p": "garbage", "bad": {"state": "exploded"}}}) == 0


def test_job_view_is_the_authority_on_endings_and_urls() -> None:
    job = JobProgress(JOB)
    job.apply_event(ev("5-0", "360p", "running", 70.0))
    view: dict[str, Any] = {
        "id": JOB,
        "state": "succeeded",
        "error": None,
        "source": {"bucket": "uploads", "key": "a/clip.mp4"},
        "urls": {"master": "http://s3/outputs/j/master.m3u8"},
        "renditions": [
            {"name": "360p", "state": "succeeded", "width": 640, "height": 360,
             "avg_bitrate": 800_000, "urls": {"playlist": "http://s3/o/360p/index.m3u8"}},
            {"name": "720p", "state": "queued", "width": 1280, "height": 720, "urls": {},
             "progress": {"id": "6-0", "state": "running", "percent": 33.0, "fps": 25.0,
                          "speed": 1.1, "eta_seconds": 3.0, "ts": 1.0}},
        ],
    }  # fmt: skip
    job.apply_view(view)
    assert job.succeeded and job.master_url == view["urls"]["master"]
    assert job.source_key == "a/clip.mp4"
    r360, r720 = job.ordered()
    assert (r360.state, r360.percent, r360.width, r360.avg_bitrate) == (
        "succeeded", 100.0, 640, 800_000,
    )  # fmt: skip
    assert r360.playlist_url == "http://s3/o/360p/index.m3u8"
    assert (r720.state, r720.percent) == ("running", 33.0), "live progress beats a queued row"
    job.apply_view(view | {"state": "running"})
    assert job.succeeded, "a stale view does not undo an ending"
    job.apply_view(view | {"id": "someone-else", "state": "failed"})
    assert job.succeeded


def test_the_renditions_table_shows_each_kind_as_what_it_is() -> None:
    """A picture by its size, a sound track by its channels, a subtitle track by a dash:
    nothing a reader sees says None (a sound track's size once read `NonexNone`)."""
    from rich.console import Console

    from vtp_cli.views import renditions_table

    view = {"id": JOB, "state": "succeeded", "renditions": [
        {"name": "360p", "kind": "video", "state": "succeeded", "width": 640, "height": 360,
         "crf": 24.5, "avg_bitrate": 800_000, "attempts": 1},
        {"name": "audio", "kind": "audio", "state": "succeeded", "codec": "aac", "channels": 2,
         "avg_bitrate": 128_000, "attempts": 1},
        {"name": "audio-2", "kind": "audio", "state": "failed", "channels": 1,
         "error": "bad data", "attempts": 3},
        {"name": "text", "kind": "text", "state": "succeeded", "language": "en"},
    ]}  # fmt: skip
    console = Console(record=True, width=200, color_system=None)
    console.print(renditions_table(view))
    lines = {line.split()[1]: line for line in console.export_text().splitlines()
             if line.startswith("│ ")}  # fmt: skip
    assert "640x360" in lines["360p"] and "24.5" in lines["360p"]
    assert "stereo" in lines["audio"] and "128 kb/s" in lines["audio"]
    assert "mono" in lines["audio-2"] and "bad data" in lines["audio-2"]
    assert lines["text"].split("│")[2].strip() == "-"
    assert "None" not in console.export_text()


def test_a_job_shows_its_vmaf_and_the_tools_that_made_it() -> None:
    """`vtp status JOB`: each picture's VMAF against its target (SSIM, from jobs measured
    before VMAF, at its own precision), and the ffmpeg and ffprobe builds on a line."""
    from rich.console import Console

    from vtp_cli.views import print_job

    quality = {"metric": "vmaf", "score": 94.567, "target": 95.0, "flagged": False}
    old = {"metric": "ssim", "score": 0.98612, "target": 0.985, "flagged": False}
    view: dict[str, Any] = {"id": JOB, "state": "succeeded", "renditions": [
        {"name": "720p", "kind": "video", "state": "succeeded", "width": 1280, "height": 720,
         "quality": quality},
        {"name": "360p", "kind": "video", "state": "succeeded", "width": 640, "height": 360,
         "quality": old},
    ]}  # fmt: skip
    view["tools"] = {"ffmpeg": "n9.0.2-17-g2a571b6068-20260930", "ffprobe": "5.1.9-0+deb12u1"}
    console = Console(record=True, width=200, color_system=None)
    print_job(console, view)
    text = console.export_text()
    assert "VMAF 94.6 (target 95)" in text and "SSIM 0.9861 (target 0.985)" in text
    assert "tools:           ffmpeg n9.0.2-17-g2a571b6068-20260930, ffprobe 5.1.9" in text


def test_format_eta() -> None:
    assert format_eta(None) == "-"
    assert format_eta(5.4) == "0:05"
    assert format_eta(75) == "1:15"
    assert format_eta(3 * 3600 + 62) == "3:01:02"
    assert format_eta(-3) == "0:00"


# --- wire formats ---------------------------------------------------------------------------
def test_ws_messages() -> None:
    snap = parse_ws_message(json.dumps({"type": "snapshot", "jobs": {JOB: {}}}))
    assert snap == Snapshot({JOB: {}})
    msg = parse_ws_message(
        json.dumps({"type": "event", "event": ev("1-2", "360p", "running", 3.0).model_dump()})
    )
    assert isinstance(msg, Event) and msg.event.id == "1-2" and msg.event.percent == 3.0
    assert parse_ws_message('{"type": "ping"}') == Tick()
    assert parse_ws_message("not json") is None
    assert parse_ws_message('{"type": "event", "event": {"state": "exploded"}}') is None
    assert parse_ws_message("[1, 2]") is None


def test_sse_parser_handles_chunks_crlf_comments_and_ids() -> None:
    e1 = ev(None, "360p", "running", 10.0).model_dump_json()
    e2 = ev("7-1", "360p", "running", 20.0).model_dump_json()
    stream = (
        "retry: 2000\r\n"
        f"event: snapshot\r\ndata: {json.dumps({'jobs': {JOB: {}}})}\r\n\r\n"
        ": ping\n"
        f"id: 7-0\nevent: progress\ndata: {e1}\n\n"
        f"id: 7-1\ndata: {e2}\n\n"
        "event: progress\ndata: {not json\n\n"
        "event: unknown\ndata: {}\n\n"
    )
    parser = SseParser()
    out: list[Any] = []
    for i in range(0, len(stream), 7):  # arbitrary chunk boundaries, CRLF split included
        out += parser.feed(stream[i : i + 7])
    assert out[0] == Snapshot({JOB: {}})
    assert out[1] == Tick()
    assert isinstance(out[2], Event) and out[2].event.id == "7-0", "id from the id: field"
    assert isinstance(out[3], Event) and out[3].event.percent == 20.0
    assert len(out) == 4
    assert parser.last_id == "7-1"


def test_multiline_sse_data_is_joined() -> None:
    parser = SseParser()
    body = json.dumps({"jobs": {JOB: {}}}, indent=1).splitlines()
    text = "event: snapshot\n" + "".join(f"data: {line}\n" for line in body) + "\n"
    assert parser.feed(text) == [Snapshot({JOB: {}})]


def test_with_query() -> None:
    assert with_query("ws://h:1/ws", job="j", last_id=None) == "ws://h:1/ws?job=j"
    assert (
        with_query("ws://h/ws?x=1", job="a b", last_id="5-0") == "ws://h/ws?x=1&job=a+b&last_id=5-0"
    )


# --- settings -----------------------------------------------------------------------------------
def test_settings_precedence(tmp_path: Path) -> None:
    run = tmp_path / "proj" / ".run"
    run.mkdir(parents=True)
    env_file = run / "stack.env"
    env_file.write_text(
        "# Written by `make up`\n\n"
        "VTP_GATEWAY_URL=http://127.0.0.1:18080\n"
        "VTP_WS_URL=ws://127.0.0.1:16430/ws\n"
        "VTP_S3_ENDPOINT=http://127.0.0.1:16404\n"
        "VTP_S3_SECRET_KEY='with space$'\n"
        "export VTP_UPLOADS_BUCKET=from-file\n"
    )
    deep = tmp_path / "proj" / "a" / "b"
    deep.mkdir(parents=True)
    assert find_stack_env(deep) == env_file
    assert read_env_file(env_file)["VTP_S3_SECRET_KEY"] == "with space$"

    cfg = load_config({}, {}, cwd=deep)
    assert cfg.gateway_url == "http://127.0.0.1:18080"
    assert cfg.ws_url == "ws://127.0.0.1:16430/ws"
    assert cfg.uploads_bucket == "from-file"
    assert cfg.s3_secret_key.get_secret_value() == "with space$"
    assert "with space" not in repr(cfg), "secrets never print"
    assert cfg.sse_url == "http://127.0.0.1:18080/function/ws-relay/events"
    assert cfg.status_url == "http://127.0.0.1:18080/function/status"

    environ = {"VTP_GATEWAY_URL": "http://env:8080/", "VTP_UPLOADS_BUCKET": "from-env"}
    cfg = load_config({"uploads_bucket": "from-flag", "gateway_url": None}, environ, cwd=deep)
    assert cfg.gateway_url == "http://env:8080", "env beats the file (trailing / dropped)"
    assert cfg.uploads_bucket == "from-flag", "flags beat env"

    other = tmp_path / "other.env"
    other.write_text("VTP_GATEWAY_URL=http://other:1\n")
    assert load_config({}, {}, env_file=other, cwd=deep).gateway_url == "http://other:1"
    assert load_config({}, {}, cwd=tmp_path).gateway_url == ClientConfig().gateway_url

    with pytest.raises(InvalidRequest, match="does not exist"):
        load_config({}, {}, env_file=tmp_path / "missing.env")
    with pytest.raises(InvalidRequest, match="ws_url"):
        load_config({"ws_url": "http://not-ws"}, {}, cwd=tmp_path)


# --- end to end on the stack ----------------------------------------------------------------------
def run_vtp(*args: str, env_file: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VTP_")}
    env["COLUMNS"] = "200"  # rich wraps tables at the terminal width; keep URLs whole
    return subprocess.run(
        [sys.executable, "-m", "vtp_cli", *args, "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.slow
def test_upload_and_watch_end_to_end(stack: LocalConfig, tmp_path: Path) -> None:
    env_file = stack.stack_env_file
    assert env_file.is_file(), "the stack writes its stack.env"
    clip = make_clip(tmp_path / "cli clip.mp4", seconds=3)
    key = f"cli-e2e/{time.time_ns()}/cli clip.mp4"

    started = time.monotonic()
    done = run_vtp("upload", str(clip), "--watch", "--key", key, env_file=env_file)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert f"s3://uploads/{key}" in out
    job_id = re.search(r"job ([0-9a-f-]{36})", out)
    assert job_id, out
    job_id_s = job_id.group(1)
    # Per-rendition summary and the master playlist.
    assert re.search(r"360p.*succeeded", out) and re.search(r"720p.*succeeded", out), out
    master = re.search(r"master playlist: (\S+)", out)
    assert master and master.group(1).endswith(f"{job_id_s}/master.m3u8"), out
    # Which live transport fed the bars is printed; the ws-relay's WebSocket when it is there.
    assert "live updates:" in out
    env = read_env_file(env_file)
    if env.get("VTP_WS_URL"):
        assert "live updates: websocket" in out, out
    assert time.monotonic() - started < 300

    status = run_vtp("status", job_id_s, "--json", env_file=env_file, timeout=60)
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["id"] == job_id_s and view["state"] == "succeeded"
    assert view["source"]["key"] == key
    assert [r["name"] for r in view["renditions"]] == ["360p", "720p", "audio"]
    assert all(r["state"] == "succeeded" for r in view["renditions"])

    table = run_vtp("status", job_id_s, env_file=env_file, timeout=60)
    assert table.returncode == 0 and "succeeded" in table.stdout and job_id_s in table.stdout

    listing = run_vtp("jobs", "--state", "succeeded", "--limit", "50", "--json",
                      env_file=env_file, timeout=60)  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    jobs = json.loads(listing.stdout)["jobs"]
    assert job_id_s in [j["id"] for j in jobs]
    assert all(j["state"] == "succeeded" for j in jobs)
    rich_list = run_vtp("jobs", "--limit", "5", env_file=env_file, timeout=60)
    assert rich_list.returncode == 0 and job_id_s in rich_list.stdout

    missing = run_vtp("status", "00000000-0000-4000-8000-000000000000", env_file=env_file)
    assert missing.returncode == 2 and "no job" in missing.stderr


@pytest.mark.slow
def test_watch_reports_a_failed_job(stack: LocalConfig, tmp_path: Path) -> None:
    """Not a video: the job fails at probing; watch exits 1 and says why."""
    bogus = tmp_path / "notes.mp4"
    bogus.write_bytes(b"this is not a video at all\n" * 100)
    done = run_vtp("upload", str(bogus), "--watch", env_file=stack.stack_env_file, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "job failed:" in out
    job_id = re.search(r"job ([0-9a-f-]{36})", out)
    assert job_id, out
    # status says the same, for the short id the page shows, and keeps long lines whole.
    status = run_vtp("status", job_id.group(1)[:8], env_file=stack.stack_env_file, timeout=60)
    assert status.returncode == 1, status.stdout + status.stderr
    assert job_id.group(1) in status.stdout and "failed" in status.stdout


@pytest.mark.slow
def test_upload_carries_the_jobs_options(stack: LocalConfig, tmp_path: Path) -> None:
    """`vtp upload --renditions --formats` puts them in the object's metadata, where split
    reads them; a bad one is refused before anything is uploaded."""
    clip = make_clip(tmp_path / "opts.mp4", size="640x360", seconds=1, rate=25)
    bad = run_vtp("upload", str(clip), "--renditions", "999p,360p", "--formats", "webm",
                  env_file=stack.stack_env_file, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "x-amz-meta-vtp-formats" in bad.stderr, bad.stderr
    assert "uploaded" not in bad.stdout
    done = run_vtp("upload", str(clip), "--renditions", "360p", "--formats", "hls,mp4",
                   "--watch", env_file=stack.stack_env_file, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = re.search(r"job ([0-9a-f-]{36})", done.stdout)
    assert job_id, done.stdout
    view = json.loads(
        run_vtp("status", job_id.group(1), "--json", env_file=stack.stack_env_file).stdout
    )
    assert view["options_key"] == "renditions=360p;formats=hls,mp4"
    assert view["options"]["origin"] == "metadata" and view["formats"] == ["hls", "mp4"]


def test_output_is_not_cut_when_piped(stack: LocalConfig) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VTP_") and k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-m", "vtp_cli", "jobs", "--limit", "3",
         "--env-file", str(stack.stack_env_file)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", done.stdout)
    rows = [line for line in done.stdout.splitlines() if line.strip()]
    assert ids or "no jobs" in done.stdout, done.stdout
    assert all(len(line) <= 250 for line in rows)


@pytest.mark.slow
def test_watch_through_a_gateway_that_buffers_streams(
    stack: LocalConfig, buffered_gateway: str, tmp_path: Path
) -> None:
    """Gateway 0.25.4 buffers the SSE stream and carries no WebSocket: watch notices the
    stream delivers nothing, says so, polls the relay's events route and still shows the
    job to its end."""
    env = read_env_file(stack.stack_env_file)
    env.pop("VTP_WS_URL", None)
    env["VTP_GATEWAY_URL"] = buffered_gateway
    # The stall detection after 1.5 s without the stream's snapshot (5 s by default).
    env["VTP_STALL_SECONDS"] = "1.5"
    env_file = tmp_path / "buffered.env"
    env_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    # Long enough to outlast the stall detection.
    clip = make_clip(tmp_path / "buffered.mp4", seconds=8)
    done = run_vtp("upload", str(clip), "--watch", env_file=env_file, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "live updates: polling" in out and "holds the event stream back" in out, out
    assert "live updates: sse" not in out, out
    assert re.search(r"360p.*succeeded", out) and re.search(r"720p.*succeeded", out), out


def test_playable_early_follows_the_ready_event_and_the_view() -> None:
    job = JobProgress(JOB)
    job.apply_event(ev("1-0", "360p", "succeeded", 100.0))
    assert job.apply_event(ev("1-1", None, "running", kind="rendition.ready", ready=["360p"]))
    assert job.ready == ["360p"] and not job.finished
    job.apply_view({"id": JOB, "state": "running", "ready": ["360p"],
                    "urls": {"master": "http://s3/outputs/j/master.m3u8"}})  # fmt: skip
    assert job.master_url and job.ready == ["360p"]
    job.apply_view({"id": JOB, "state": "running", "ready": []})  # an older view: kept
    assert job.ready == ["360p"]
