"""What an operator does to jobs, and what a job shows while it runs, through the local
stack's gateway and functions: cancel in the middle of a real encode, redrive a dead
letter, delete, retention, and the master playlist playable before the job ends."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from tests.api import http
from tests.clips import make_clip
from tests.manual import submit
from tests.receiver import Receiver
from tests.test_pipeline import MANUAL_BUCKET, _ffmpeg_reading
from tests.test_pipeline import s3 as s3  # the same fixture: a client with MANUAL_BUCKET made


def _job(gateway: str, job_id: str) -> dict[str, Any]:
    r = http.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _outputs(s3: Minio, stack_env: dict[str, str], job_id: str) -> list[str]:
    return [
        str(o.object_name)
        for o in s3.list_objects(stack_env["VTP_OUTPUTS_BUCKET"], prefix=f"{job_id}/",
                                 recursive=True)
    ]  # fmt: skip


@pytest.mark.slow
def test_cancel_stops_a_running_encode_at_once_and_leaves_nothing(
    gateway: str, stack_env: dict[str, str], s3: Minio, tmp_path: Path
) -> None:
    """A job of two renditions, one encoding (ffmpeg running) and one whose call waits in
    the queue: cancelled, the ffmpeg is gone within 2 s (the transcode watches the flag),
    the waiting call is skipped when it arrives, every rendition and the job end
    `cancelled`, nothing is left in the outputs bucket, and the callback says so."""
    clip = make_clip(tmp_path / "long.mp4", size="1280x720", seconds=30)
    key = f"cancel/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    with Receiver() as rx:
        job_id = submit(gateway, MANUAL_BUCKET, key, ["360p", "720p"], callback_url=rx.url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            running = [
                r for r in _job(gateway, job_id)["renditions"]
                if r["state"] == "running" and (r.get("progress") or {}).get("percent", 0) > 0
            ]  # fmt: skip
            if running and _ffmpeg_reading(key):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"no rendition started encoding: {_job(gateway, job_id)}")
        encoders = _ffmpeg_reading(key)

        r = http.post(f"{gateway}/function/split/jobs/cancel", params={"job": job_id},
                          timeout=30)  # fmt: skip
        cancelled_at = time.monotonic()
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["state"] == "cancelled" and answer["tasks_cancelled"] >= 1
        while any(Path(f"/proc/{p}").exists() for p in encoders):
            assert time.monotonic() - cancelled_at < 2.0, "ffmpeg still runs 2 s after the cancel"
            time.sleep(0.05)

        job = _job(gateway, job_id)
        assert job["state"] == "cancelled" and job["error"] == "cancelled on request"
        assert {r["state"] for r in job["renditions"]} == {"cancelled"}, job["renditions"]

        callback = rx.get(timeout=30)
        body = json.loads(callback.body)
        assert body["event"] == "job.cancelled" and body["state"] == "cancelled"
        assert callback.headers["X-VTP-Event"] == "job.cancelled"

        # Whatever the attempts had written is gone, and stays gone once they have stopped.
        time.sleep(3)
        assert _outputs(s3, stack_env, job_id) == []
        assert not _ffmpeg_reading(key), "no encode of the cancelled job runs"

    again = http.post(f"{gateway}/function/split/jobs/cancel", params={"job": job_id},
                          timeout=30)  # fmt: skip
    assert again.status_code == 409 and "has ended (cancelled)" in again.json()["error"]
    unknown = http.post(
        f"{gateway}/function/split/jobs/cancel",
        params={"job": "00000000-0000-4000-8000-000000000000"},
        timeout=30,
    )
    assert unknown.status_code == 404


@pytest.mark.slow
def test_vtp_cancel(gateway: str, stack: Any, stack_env: dict[str, str], tmp_path: Path) -> None:
    """`vtp cancel` takes the short id the page shows; a job that has ended is refused with
    split's reason (exit 2). The job is made in-process and never dispatched, so what the
    cancel stops does not depend on how far an encode got."""
    from tests.inprocess import build_pipeline, job_for_clip
    from tests.test_cli import run_vtp

    p = build_pipeline(stack_env)
    try:
        clip = make_clip(tmp_path / "two.mp4", size="640x360", seconds=2, audio=False)
        job = job_for_clip(p, clip, ["360p"])
    finally:
        p.store.close()
    job_id = str(job.id)
    done = run_vtp("cancel", job_id[:8], env_file=stack.stack_env_file, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"job {job_id} cancelled: 1 task(s) stopped" in done.stdout
    assert _job(gateway, job_id)["state"] == "cancelled"
    again = run_vtp("cancel", job_id, env_file=stack.stack_env_file, timeout=60)
    assert again.returncode == 2 and "has ended (cancelled)" in again.stderr, again.stderr
    shown = run_vtp("status", job_id, env_file=stack.stack_env_file, timeout=60)
    assert shown.returncode == 1 and "cancelled" in shown.stdout


@pytest.mark.slow
def test_a_dead_letter_is_shown_with_its_reason_and_redriven_to_success(
    gateway: str, stack: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """A rendition dead after its budget (forced: three attempts that crashed, recorded
    in-process on the stack's database), its job failed. `vtp jobs --state failed` says
    which rendition and why; `vtp redrive` queues it again through split, the stack's
    transcode encodes it, and the job succeeds with a playable output."""
    from tests.inprocess import build_pipeline, job_for_clip
    from tests.test_cli import run_vtp
    from tests.test_pipeline import ffprobe

    p = build_pipeline(stack_env)
    try:
        clip = make_clip(tmp_path / "redrive.mp4", size="640x360", seconds=2, rate=25)
        job = job_for_clip(p, clip, ["360p"])
        for i in range(3):
            p.store.begin_attempt(job.id, "360p", f"crash-{i}")
            p.store.fail_task(job.id, "360p", "worker died: signal 9 (out of memory?)",
                              retryable=True, call_id=f"crash-{i}")  # fmt: skip
        p.fanin.maybe_finalize(job.id, claimer="test")
        assert p.store.get(job.id).state.value == "failed"
    finally:
        p.store.close()
    job_id = str(job.id)

    listing = run_vtp("jobs", "--state", "failed", "--limit", "100",
                      env_file=stack.stack_env_file, timeout=60)  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    block = listing.stdout[listing.stdout.index(job_id) :][:1500]
    assert "360p dead after 3 attempts: worker died: signal 9" in " ".join(block.split()), block

    done = run_vtp("redrive", job_id[:8], "--watch", env_file=stack.stack_env_file, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "360p: queued again (was: worker died: signal 9" in done.stdout, done.stdout
    view = _job(gateway, job_id)
    assert view["state"] == "succeeded" and view["redrives"] == 1
    (rend,) = view["renditions"]
    assert rend["attempts"] == 4 and rend["state"] == "succeeded"
    info = ffprobe(rend["urls"]["playlist"])
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    assert (video[0]["width"], video[0]["height"]) == (640, 360)
    again = http.post(f"{gateway}/function/split/jobs/redrive", params={"job": job_id},
                          timeout=30)  # fmt: skip
    assert again.status_code == 409 and "only a failed job" in again.json()["error"]


@pytest.mark.slow
def test_delete_removes_outputs_rows_and_asked_for_the_source(
    gateway: str, stack: Any, stack_env: dict[str, str], s3: Minio, tmp_path: Path
) -> None:
    from tests.test_cli import run_vtp
    from tests.test_pipeline import wait_for_job

    clip = make_clip(tmp_path / "del.mp4", size="640x360", seconds=1, rate=25)
    keep_key, drop_key = (f"delete/{time.time_ns()}-{n}.mp4" for n in ("keep", "drop"))
    for key in (keep_key, drop_key):
        s3.fput_object(MANUAL_BUCKET, key, str(clip))
        submit(gateway, MANUAL_BUCKET, key, ["360p"])
    kept = wait_for_job(gateway, MANUAL_BUCKET, keep_key)
    dropped = wait_for_job(gateway, MANUAL_BUCKET, drop_key)
    assert kept["state"] == dropped["state"] == "succeeded"
    assert _outputs(s3, stack_env, kept["id"])

    done = run_vtp("delete", kept["id"][:8], env_file=stack.stack_env_file, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "source kept" in done.stdout
    assert _outputs(s3, stack_env, kept["id"]) == []
    r = http.get(f"{gateway}/function/status", params={"id": kept["id"]}, timeout=10)
    assert r.status_code == 404
    assert s3.stat_object(MANUAL_BUCKET, keep_key).size > 0  # the source stays

    r = http.post(f"{gateway}/function/split/jobs/delete",
                      params={"job": dropped["id"], "source": "true"}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["source_removed"] is True and r.json()["outputs_removed"] > 0
    assert [o.object_name for o in s3.list_objects(MANUAL_BUCKET, prefix=drop_key)] == []
    assert _outputs(s3, stack_env, dropped["id"]) == []


@pytest.mark.slow
def test_retention_expires_old_outputs_and_keeps_the_rows(
    gateway: str, stack_env: dict[str, str], s3: Minio, tmp_path: Path
) -> None:
    """A job that ended longer ago than VTP_RETENTION_DAYS loses its outputs at the next
    sweep (in-process here, with that setting, on the stack's services); its row stays,
    marked, and status offers no URLs. A recent job keeps its outputs."""
    from tests.inprocess import build_pipeline
    from tests.test_pipeline import wait_for_job
    from vtp.pipeline import Pipeline

    clip = make_clip(tmp_path / "old.mp4", size="640x360", seconds=1, rate=25)
    old_key, new_key = (f"retention/{time.time_ns()}-{n}.mp4" for n in ("old", "new"))
    for key in (old_key, new_key):
        s3.fput_object(MANUAL_BUCKET, key, str(clip))
        submit(gateway, MANUAL_BUCKET, key, ["360p"])
    old = wait_for_job(gateway, MANUAL_BUCKET, old_key)
    new = wait_for_job(gateway, MANUAL_BUCKET, new_key)
    base = build_pipeline(stack_env)
    try:
        base.store._run(
            lambda cur: cur.execute(
                "UPDATE jobs SET finished_at = now() - interval '40 days' WHERE id = %s",
                (old["id"],),
            )
        )
        # Every second: an earlier run against this database may have had the hourly turn.
        settings = base.settings.model_copy(
            update={"retention_days": 30.0, "retention_every_seconds": 1.0}
        )
        p = Pipeline(settings, base.store, base.storage, base.bus, base.invoker)
        swept = p.sweep()
        assert swept["expired"] >= 1
    finally:
        base.store.close()
    assert _outputs(s3, stack_env, old["id"]) == []
    assert _outputs(s3, stack_env, new["id"]) != []
    view = _job(gateway, old["id"])
    assert view["state"] == "succeeded" and view["outputs_deleted_at"] is not None
    assert view["urls"] == {} and view["renditions"][0]["urls"] == {}


@pytest.mark.slow
def test_the_master_is_playable_as_each_rendition_finishes(
    gateway: str, stack_env: dict[str, str], s3: Minio, tmp_path: Path
) -> None:
    """While 720p still encodes, 360p's success rewrites the master with 360p alone: status
    says it is ready and gives the master's URL, a `rendition.ready` event says so, and
    ffprobe reads the early master. The final master lists both, smallest first, as it
    always did."""
    import redis

    from tests.test_pipeline import ffprobe
    from vtp.events import ProgressEvent
    from vtp.settings import Settings

    prefix = Settings.model_fields["redis_prefix"].get_default()
    bus = redis.Redis.from_url(stack_env["VTP_REDIS_URL"])
    sub = bus.pubsub()
    sub.subscribe(f"{stack_env.get('VTP_REDIS_PREFIX', prefix)}:progress")
    clip = make_clip(tmp_path / "early.mp4", size="1280x720", seconds=12)
    key = f"early/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    job_id = submit(gateway, MANUAL_BUCKET, key, ["360p", "720p"])
    deadline = time.monotonic() + 150
    early: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = _job(gateway, job_id)
        assert view["state"] != "succeeded", "the job ended before anything was seen early"
        if view["ready"]:
            early = view
            break
        time.sleep(0.1)
    assert early, "nothing became ready"
    assert early["ready"] == ["360p", "audio"] and early["state"] in ("queued", "running")
    assert [r["ready"] for r in early["renditions"]] == [True, False, True]
    assert "poster" not in early["urls"]  # written at the end, with the final master
    got = http.get(early["urls"]["master"], timeout=10)
    master = got.text
    assert master.count("#EXT-X-STREAM-INF") == 1 and "RESOLUTION=640x360" in master
    # Kept by no browser or CDN: the final master replaces it under the same key.
    assert got.headers.get("Cache-Control") == "no-store", got.headers
    # ffprobe reads the early master as it was fetched (the URL may hold the final one by
    # now): a local copy, its relative URIs made absolute.
    base = early["urls"]["master"].rsplit("/", 1)[0]
    local = tmp_path / "early-master.m3u8"
    absolute = re.sub(r'URI="([^"]+)"', rf'URI="{base}/\1"', master)
    local.write_text(re.sub(r"(?m)^(?!#)(\S+)$", rf"{base}/\1", absolute))
    probed = ffprobe(str(local), "-protocol_whitelist", "file,http,tcp")
    assert [s["height"] for s in probed["streams"] if s["codec_type"] == "video"] == [360]

    seen = []
    until = time.monotonic() + 10
    while time.monotonic() < until and not seen:
        message = sub.get_message(timeout=1.0)
        if message and message["type"] == "message":
            ev = ProgressEvent.model_validate_json(message["data"])
            if ev.job_id == job_id and ev.kind == "rendition.ready":
                seen.append(ev)
    sub.close()
    assert seen and seen[0].ready == ["360p", "audio"], seen

    # The poster and the storyboard (from 360p, the smallest) come with 360p, while 720p
    # still encodes, not from the job's last call (vtp.pipeline.pictures).
    pictures = {f"{job_id}/poster.jpg", f"{job_id}/storyboard.vtt"}
    until = time.monotonic() + 30
    while not pictures <= set(_outputs(s3, stack_env, job_id)) and time.monotonic() < until:
        time.sleep(0.1)
    assert pictures <= set(_outputs(s3, stack_env, job_id))
    assert _job(gateway, job_id)["state"] == "running"

    done = _job(gateway, job_id)
    deadline = time.monotonic() + 150
    while done["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.5)
        done = _job(gateway, job_id)
    assert done["state"] == "succeeded", done
    assert done["ready"] == ["360p", "720p", "audio"]
    got = http.get(done["urls"]["master"], timeout=10)
    final = got.text
    assert got.headers.get("Cache-Control") == "no-cache", got.headers
    assert final.count("#EXT-X-STREAM-INF") == 2
    assert final.index("RESOLUTION=640x360") < final.index("RESOLUTION=1280x720")
    assert {"poster", "storyboard"} <= set(done["urls"]), done["urls"]
