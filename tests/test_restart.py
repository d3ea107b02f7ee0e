"""The whole stack stopped in the middle of jobs (`make down`, then `make up`): the next upload
starts at once, the interrupted jobs end recorded, succeeded after a retry, and objects (their
sources, a multipart upload's ETag, the published outputs) are kept across restarts, as MinIO
keeps them.

What happened before: the stopped queue-workers left their messages delivered but never
acknowledged, as many as the consumer's max_ack_pending (4), so after `make up` no new call
ran until ack_wait (1 h) expired; and the interrupted renditions stayed "running" until the
sweeper noticed their heartbeats had stopped.

A stack of its own (its own run dir and ports): this test stops and starts it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from boto3.s3.transfer import TransferConfig

from localfaas import runtime, services
from localfaas.config import REPO_ROOT, LocalConfig
from tests.api import http
from tests.clips import make_clip
from tests.manual import submit
from tests.ports import free_port, free_port_base
from tests.s3 import s3_client
from tests.stackenv import FAST


@pytest.fixture
def own_stack(test_slot: int) -> Iterator[LocalConfig]:
    cfg = LocalConfig(
        run_dir=REPO_ROOT / ".run" / f"test-restart-{test_slot}",
        port_base=free_port_base(),
        gateway_port=free_port(),
        queue_workers=2,
        function_env={"*": FAST | {"VTP_INPUT_BUCKETS": '["uploads", "restart-sources"]'}},
    )

    def wipe() -> None:
        # PostgreSQL's data may live outside the run dir (its OS user cannot always reach
        # it): remove that too, or a second run would find the first one's jobs.
        runtime.down(cfg)
        services.remove_data(cfg)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)

    wipe()
    try:
        runtime.up(cfg)
        http.add_stack(cfg)
        yield cfg
    finally:
        wipe()


def view(cfg: LocalConfig, job_id: str) -> dict[str, Any]:
    r = http.get(f"{cfg.gateway_url}/function/status", params={"id": job_id}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


@pytest.mark.slow
def test_stack_stopped_mid_job(own_stack: LocalConfig, tmp_path: Path) -> None:
    cfg = own_stack
    client = s3_client(cfg, "restart-sources")
    # Long enough that both encodes still run when the stack stops, on any machine.
    long_clip = make_clip(tmp_path / "long.mp4", size="1280x720", seconds=20, audio=False)
    jobs = []
    tag = uuid.uuid4().hex[:8]  # keys of this run only, whatever an earlier one left
    for i in range(2):
        key = f"long-{tag}-{i}.mp4"
        client.fput_object("restart-sources", key, str(long_clip))
        jobs.append(submit(cfg.gateway_url, "restart-sources", key, ["720p"]))

    def both_encoding() -> bool:
        rends = [view(cfg, j)["renditions"][0] for j in jobs]
        return all(
            r["state"] == "running" and (r.get("progress") or {}).get("percent", 0) > 0
            for r in rends
        )

    wait("both long transcodes encoding", both_encoding, 60)

    # A multipart upload's ETag (<md5 of the parts' md5s>-<parts>) is part of its job's
    # identity: the restart must keep it, not make it a plain md5 of the bytes.
    boto = services.boto_client(cfg, "s3")
    boto.upload_file(
        str(long_clip), "restart-sources", f"multi-{tag}.mp4",
        Config=TransferConfig(multipart_threshold=64 * 1024, multipart_chunksize=5 << 20),
    )  # fmt: skip
    kept = {o.object_name: o.etag for o in client.list_objects("restart-sources", recursive=True)}
    assert "-" in kept[f"multi-{tag}.mp4"], kept  # a multipart ETag

    runtime.down(cfg)
    runtime.up(cfg)
    # The sources are still there, as MinIO would have kept them: same keys, same ETags.
    again = {o.object_name: o.etag for o in client.list_objects("restart-sources", recursive=True)}
    assert again == kept

    # The next upload is not held up by what the stopped queue-workers left behind.
    small = make_clip(tmp_path / "small.mp4", size="640x360", seconds=2)
    key = f"after-restart/{uuid.uuid4().hex}.mp4"
    client.fput_object(cfg.uploads_bucket, key, str(small))
    uploaded = time.monotonic()

    def new_job_running() -> str | None:
        r = http.get(
            f"{cfg.gateway_url}/function/status",
            params={"bucket": cfg.uploads_bucket, "key": key},
            timeout=10,
        )
        found = r.json()["jobs"]
        if found and any(x["state"] != "queued" for x in view(cfg, found[0]["id"])["renditions"]):
            return str(found[0]["id"])
        return None

    new_job = wait("the new upload's transcode started", new_job_running, 30)
    assert time.monotonic() - uploaded < 15, "the new job waited behind the stopped calls"
    # The interrupted renditions wait for the sweeper to dispatch their retries: its cron
    # runs it every minute; run it now rather than wait for that.
    swept = http.post(f"{cfg.gateway_url}/function/sweeper", timeout=60)
    assert swept.status_code == 200, swept.text
    wait("the new job finished", lambda: view(cfg, new_job)["state"] == "succeeded", 120)

    # The interrupted ones were recorded as such when the stack stopped, and retried.
    for job_id in jobs:
        done = wait(
            f"interrupted job {job_id} ended",
            lambda j=job_id: (v := view(cfg, j))["state"] in ("succeeded", "failed") and v,
            150,
        )
        assert done["state"] == "succeeded", done["renditions"][0]["error"]
        assert done["renditions"][0]["attempts"] == 2, done
    with psycopg2.connect(cfg.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT job_id, from_state, to_state, coalesce(detail, ''), attempt FROM state_changes"
            " WHERE job_id = ANY(%s::uuid[]) AND rendition = '720p' ORDER BY id",
            (jobs,),
        )
        rows = cur.fetchall()
    conn.close()
    # And once more: what the finished jobs published is still served after a restart (the
    # database says "succeeded"; the outputs must not be 404s).
    runtime.down(cfg)
    runtime.up(cfg)
    for job_id in [*jobs, new_job]:
        urls = view(cfg, job_id)
        for url in [urls["urls"]["master"], *(r["urls"]["playlist"] for r in urls["renditions"])]:
            assert http.get(url, timeout=10).status_code == 200, url
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
             urls["urls"]["master"]],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert probe.returncode == 0 and float(probe.stdout.strip()) > 1, probe.stderr

    for job_id in jobs:
        steps = [(a, b, d, n) for j, a, b, d, n in rows if str(j) == job_id]
        ended = [s for s in steps if s[0] == "running"]
        assert ended[0][1] == "retrying" and "interrupted: the function was stopped" in ended[0][2]
        assert [s[1] for s in ended] == ["retrying", "succeeded"], steps
        starts = [s for s in steps if s[1] == "running"]
        assert [s[3] for s in starts] == [1, 2], "one attempt at a time, never two at once"
