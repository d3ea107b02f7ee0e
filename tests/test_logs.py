"""Log lines that name the work they are about (vtp.logs): the context, its formats, and a
real transcode function logging JSON lines on the stack."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api import http
from vtp import logs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("vtp.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out, handler
    logger.removeHandler(handler)


def test_json_lines_carry_the_context_nested_and_bound(captured: Any) -> None:
    logger, out, handler = captured
    handler.setFormatter(logs.JsonFormatter())
    logger.info("outside")
    with logs.context(job_id="j1", rendition="360p", chunk=2):
        logs.bind(attempt=3, call_id="c-9")
        logger.warning("inside %s", "it")
        with logs.context(rendition="720p"):
            logger.info("nested")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.info("after")
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    by_message = {entry["message"]: entry for entry in lines}
    assert set(by_message) == {"outside", "inside it", "nested", "failed", "after"}
    assert "job_id" not in by_message["outside"] and "job_id" not in by_message["after"]
    inside = by_message["inside it"]
    fields = ("job_id", "rendition", "chunk", "attempt", "call_id", "level")
    assert [inside[f] for f in fields] == ["j1", "360p", 2, 3, "c-9", "warning"]
    assert by_message["nested"]["rendition"] == "720p" and by_message["nested"]["attempt"] == 3
    assert "ValueError: boom" in by_message["failed"]["exc"]
    assert inside["ts"].endswith("Z") and inside["logger"] == "vtp.test_logs"


def test_text_lines_show_the_fields_and_threads_keep_their_own(captured: Any) -> None:
    logger, out, handler = captured
    handler.setFormatter(logs.TextFormatter())

    def work(job: str) -> None:
        with logs.context(job_id=job, rendition="360p"):
            time.sleep(0.05)
            logger.info("working on %s", job)

    threads = [threading.Thread(target=work, args=(f"job-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for line in out.getvalue().splitlines():
        job = line.split("working on ", 1)[1].split(" ", 1)[0]
        assert line.endswith(f"[job_id={job} rendition=360p]"), line


@pytest.mark.slow
def test_a_transcode_function_logs_json_lines_naming_its_work(
    gateway: str, stack: Any, tmp_path: Path
) -> None:
    """The stack's transcode-720p runs with VTP_LOG_FORMAT=json: every line its pipeline
    code logs about a job is a JSON object with the job id, rendition, attempt and call id,
    the ffmpeg wrapper's and storage's lines included, which know nothing of jobs."""
    from minio import Minio

    from tests.clips import make_clip
    from tests.manual import submit
    from tests.test_pipeline import MANUAL_BUCKET, wait_for_job
    from vtp_cli.config import read_env_file

    env = read_env_file(stack.stack_env_file)
    s3 = Minio(env["VTP_S3_ENDPOINT"].split("://", 1)[1], access_key=env["VTP_S3_ACCESS_KEY"],
               secret_key=env["VTP_S3_SECRET_KEY"], secure=False, region="us-east-1")  # fmt: skip
    if not s3.bucket_exists(MANUAL_BUCKET):
        s3.make_bucket(MANUAL_BUCKET)
    clip = make_clip(tmp_path / "logs.mp4", size="1280x720", seconds=2)
    key = f"logs/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    job_id = submit(gateway, MANUAL_BUCKET, key, ["720p"])
    assert wait_for_job(gateway, MANUAL_BUCKET, key)["state"] == "succeeded"
    time.sleep(0.5)  # the last lines reach the log file
    lines = (stack.logs_dir / "fn-transcode-720p.log").read_text().splitlines()
    ours = [line for line in lines if job_id in line]
    assert ours, "the function logged nothing about the job"
    entries = []
    for line in ours:
        entry = json.loads(line)  # a text line about the job fails here
        if entry.get("job_id") == job_id:
            entries.append(entry)
    assert len(entries) == len(ours), "every line about the job carries its id as a field"
    for entry in entries:
        # 720p and its sound, which the same function encodes.
        assert entry["rendition"] in ("720p", "audio") and entry["call_id"], entry
    loggers = {e["logger"] for e in entries if "attempt" in e}
    assert {"vtp.media.ffmpeg", "vtp.storage", "vtp.pipeline.fanin"} <= loggers, loggers
    assert all(e["attempt"] == 1 for e in entries if "attempt" in e)


def test_the_local_runtime_prefixes_lines_as_of_watchdog_does(stack: Any) -> None:
    """of-watchdog starts each line with the date and the stream unless `prefix_logs` is
    false: localfaas does the same. The fixture functions keep the default; the pipeline's
    turn it off (config/pipeline.yml), so their lines, JSON ones too, arrive as written."""
    import re

    http.get(f"{stack.gateway_url}/function/shapes", timeout=30)
    fixture = (stack.logs_dir / "fn-shapes.log").read_text().splitlines()
    prefixed = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (stdout|stderr): ")
    started = [line for line in fixture if "serving on" in line]  # the log spans runs
    assert started and prefixed.match(started[-1]), started[-3:]
    ours = (stack.logs_dir / "fn-status.log").read_text().splitlines()
    assert any("serving on" in line for line in ours)
    assert not any(prefixed.match(line) for line in ours), [
        line for line in ours if prefixed.match(line)
    ][:3]


def test_prefix_logs_is_read_as_go_reads_a_bool() -> None:
    from localfaas.logprefix import enabled

    assert [enabled(v) for v in ("false", "0", "F", "False", "FALSE")] == [False] * 5
    assert [enabled(v) for v in (None, "true", "1", "yes", "")] == [True] * 5
