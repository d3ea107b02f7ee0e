"""The product's core path on the real local stack: upload → ladder, manual jobs, duplicates,
rejections. Outputs are checked with ffprobe, rows are read from PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from minio import Minio

from localfaas.config import LocalConfig
from tests.api import http
from tests.clips import make_clip
from tests.manual import submit
from tests.receiver import Receiver


# --- helpers -------------------------------------------------------------------------------
def ffprobe(url: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", *extra, url],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def keyframe_times(url: str) -> list[float]:
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-select_streams", "v:0", "-skip_frame", "nokey",
            "-show_entries", "frame=pts_time", "-of", "csv=p=0", url,
        ],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return [round(float(x.strip(",")), 3) for x in out.split() if x.strip(",")]


# Manual jobs read from a bucket without a notification rule, so no bucket event races them.
MANUAL_BUCKET = "manual-sources"


@pytest.fixture(scope="module")
def s3(stack_env: dict[str, str]) -> Minio:
    endpoint = stack_env["VTP_S3_ENDPOINT"]
    client = Minio(
        endpoint.split("://", 1)[1],
        access_key=stack_env["VTP_S3_ACCESS_KEY"],
        secret_key=stack_env["VTP_S3_SECRET_KEY"],
        secure=False,
        region="us-east-1",
    )
    if not client.bucket_exists(MANUAL_BUCKET):
        client.make_bucket(MANUAL_BUCKET)
    return client


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "landscape": make_clip(d / "landscape.mp4"),
        "portrait": make_clip(d / "portrait.mp4", size="360x640", audio=True),
        "silent": make_clip(d / "silent.mp4", size="640x360", audio=False),
    }


def wait_for_job(gateway: str, bucket: str, key: str, timeout: float = 180) -> dict[str, Any]:
    """Poll the status function until the object's job ends; returns the job."""
    deadline = time.monotonic() + timeout
    job_id = None
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if job_id is None:
            r = http.get(
                f"{gateway}/function/status", params={"bucket": bucket, "key": key}, timeout=10
            )
            assert r.status_code == 200, r.text
            jobs = r.json()["jobs"]
            job_id = jobs[0]["id"] if jobs else None
        if job_id is not None:
            job = http.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10).json()
            if job["state"] in ("succeeded", "failed"):
                return job
        time.sleep(0.5)
    pytest.fail(f"job for s3://{bucket}/{key} did not finish in {timeout}s: {job}")


def outputs_url(stack_env: dict[str, str], job_id: str, path: str) -> str:
    return (
        f"{stack_env['VTP_S3_ENDPOINT']}/{stack_env['VTP_OUTPUTS_BUCKET']}/{job_id}/{quote(path)}"
    )


# --- the main path ---------------------------------------------------------------------------
@pytest.mark.slow
def test_upload_to_bucket_produces_abr_ladder(
    gateway: str, stack_env: dict[str, str], s3: Minio, clips: dict[str, Path], db: Any
) -> None:
    key = f"e2e/{time.time_ns()}/my clip é.mp4"  # spaces and non-ASCII survive the event
    s3.fput_object("uploads", key, str(clips["landscape"]), content_type="video/mp4")
    job = wait_for_job(gateway, "uploads", key)
    assert job["state"] == "succeeded", job
    names = [r["name"] for r in job["renditions"]]
    assert names == ["360p", "720p", "audio"], "a 720p source: no 1080p (never upscale)"

    master = http.get(job["urls"]["master"], timeout=10)
    assert master.status_code == 200
    text = master.text
    assert text.startswith("#EXTM3U")
    assert text.count("#EXT-X-STREAM-INF") == 2
    # The sound is a rendition of its own, stored once, which both variants name.
    assert text.count("#EXT-X-MEDIA:TYPE=AUDIO") == 1 and text.count('AUDIO="audio"') == 2
    for attr in ("BANDWIDTH=", "AVERAGE-BANDWIDTH=", "RESOLUTION=", "CODECS=", "FRAME-RATE="):
        assert attr in text
    poster = http.get(job["urls"]["poster"], timeout=10)
    assert poster.status_code == 200 and poster.content[:2] == b"\xff\xd8"

    source = ffprobe(str(clips["landscape"]))
    src_duration = float(source["format"]["duration"])
    grids = []
    for rend, (w, h) in zip(job["renditions"][:2], [(640, 360), (1280, 720)], strict=True):
        url = rend["urls"]["playlist"]
        info = ffprobe(url)
        video = [s for s in info["streams"] if s["codec_type"] == "video"]
        assert [s["codec_type"] for s in info["streams"]] == ["video"]
        assert (video[0]["width"], video[0]["height"]) == (w, h)
        assert abs(float(info["format"]["duration"]) - src_duration) <= 0.1
        grids.append(keyframe_times(url))
    assert grids[0] == grids[1], "keyframes must sit on the same grid in every rendition"
    assert len(grids[0]) >= 1
    sound = ffprobe(job["renditions"][2]["urls"]["playlist"])
    (audio,) = sound["streams"]
    assert (audio["codec_name"], audio["channels"], audio["sample_rate"]) == ("aac", 2, "48000")
    assert abs(float(sound["format"]["duration"]) - src_duration) <= 0.1

    with db.cursor() as cur:
        cur.execute(
            "SELECT r.state, t.state, t.attempts, r.size_bytes, r.avg_bitrate"
            " FROM renditions r JOIN tasks t ON t.job_id = r.job_id AND t.rendition = r.name"
            " WHERE r.job_id = %s ORDER BY r.name",
            (job["id"],),
        )
        rows = cur.fetchall()
    assert [r[:2] for r in rows] == [("succeeded", "succeeded")] * 3  # one task each
    assert all(r[2] == 1 and r[3] > 0 and r[4] > 0 for r in rows)

    # Constant quality, measured: each rendition's VMAF against the source is in its row,
    # in status, and (at the largest size, so higher rungs score higher) in the master.
    with db.cursor() as cur:
        cur.execute(
            "SELECT name, quality_metric, quality_score, quality_worst, quality_flagged,"
            " spec->>'crf' FROM renditions WHERE job_id = %s AND NOT (spec->>'audio_only')::bool"
            " ORDER BY ordinal",
            (job["id"],),
        )
        measured = cur.fetchall()
    for name, metric, score, worst, flagged, crf in measured:
        assert metric == "vmaf" and 60 < worst <= score <= 100, (name, score, worst)
        assert flagged is False and float(crf) == 23.0  # a 2 s clip is too short to sample
    shown = {r["name"]: r.get("quality") for r in job["renditions"]}
    assert shown["360p"]["score"] == measured[0][2] and shown["360p"]["target"] == 90.0
    assert 0.9 < shown["360p"]["ssim"] <= 1, "SSIM kept beside it"
    # Which tools made it, in status: the pinned build (vtp.media.build).
    assert job["tools"]["ffmpeg"].startswith("n9.0.2"), job["tools"]
    assert {r["tools"]["ffmpeg"] for r in job["renditions"]} == {job["tools"]["ffmpeg"]}
    assert shown["audio"] is None, "a sound track has no picture quality"
    assert job["plan"]["note"].startswith("a 2.0 s source is too short to sample")
    scores = [float(line.split("SCORE=")[1].split(",")[0]) for line in text.splitlines()
              if line.startswith("#EXT-X-STREAM-INF")]  # fmt: skip
    assert len(scores) == 2 and scores[0] < scores[1] <= 100, text


@pytest.mark.slow
def test_portrait_source_keeps_aspect(gateway: str, s3: Minio, clips: dict[str, Path]) -> None:
    key = f"e2e/{time.time_ns()}/portrait.mp4"
    s3.fput_object("uploads", key, str(clips["portrait"]))
    job = wait_for_job(gateway, "uploads", key)
    assert job["state"] == "succeeded", job
    assert [(r["name"], r.get("width"), r.get("height")) for r in job["renditions"]] == [
        ("360p", 360, 640), ("audio", None, None)
    ]  # fmt: skip
    assert job["renditions"][1]["channels"] == 2
    info = ffprobe(job["renditions"][0]["urls"]["playlist"])
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (360, 640)


@pytest.mark.slow
def test_source_without_audio_gives_silent_renditions(
    gateway: str, s3: Minio, clips: dict[str, Path]
) -> None:
    key = f"e2e/{time.time_ns()}/silent.mp4"
    s3.fput_object("uploads", key, str(clips["silent"]))
    job = wait_for_job(gateway, "uploads", key)
    assert job["state"] == "succeeded", job
    info = ffprobe(job["renditions"][0]["urls"]["playlist"])
    assert [s["codec_type"] for s in info["streams"]] == ["video"]
    assert "mp4a" not in http.get(job["urls"]["master"], timeout=10).text


@pytest.mark.slow
def test_multipart_upload_is_transcoded(gateway: str, s3: Minio, tmp_path: Path) -> None:
    # Lossless noise makes a short clip large: over 5 MiB, so the SDK uploads it in parts.
    big = make_clip(
        tmp_path / "big.mp4",
        size="640x360",
        seconds=2,
        audio=False,
        extra=["-vf", "noise=alls=100:allf=t", "-qp", "0"],
    )
    assert big.stat().st_size > 5 * 1024 * 1024 + 1
    key = f"e2e/{time.time_ns()}/big.mp4"
    s3.fput_object("uploads", key, str(big), part_size=5 * 1024 * 1024)
    etag = s3.stat_object("uploads", key).etag
    assert etag is not None and "-" in etag  # really multipart
    job = wait_for_job(gateway, "uploads", key)
    assert job["state"] == "succeeded", job


@pytest.mark.slow
def test_manual_job_like_faas_cli_with_callback(
    gateway: str, s3: Minio, clips: dict[str, Path], stack: LocalConfig
) -> None:
    key = f"manual/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clips["silent"]))
    with Receiver() as rx:
        body = {"bucket": MANUAL_BUCKET, "key": key, "renditions": ["360p"],
                "callback_url": f"{rx.url}/hook", "formats": ["hls", "mp4"]}  # fmt: skip
        r = http.post(
            f"{gateway}/function/split",
            data=json.dumps(body),
            headers={"Content-Type": "text/plain"},  # what faas-cli sends by default
            timeout=60,
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["created"] is True
        assert [x["name"] for x in answer["renditions"]] == ["360p"]
        cb = rx.get(timeout=180)
    payload = json.loads(cb.body)
    assert payload["job_id"] == answer["job_id"]
    assert payload["state"] == "succeeded"
    assert payload["master_url"].endswith(f"{answer['job_id']}/master.m3u8")
    secret = stack.credentials["callback_secret"].encode()
    expected = "sha256=" + hmac.new(secret, cb.body, hashlib.sha256).hexdigest()
    assert cb.headers["X-VTP-Signature"] == expected
    mp4 = payload["renditions"][0]["urls"]["mp4"]
    info = ffprobe(mp4)
    assert info["format"]["format_name"].startswith("mov,mp4")
    quality = payload["renditions"][0]["quality"]
    assert quality["metric"] == "vmaf" and 60 < quality["score"] <= 100
    assert quality["flagged"] is False and payload["plan"]["metric"] == "vmaf"


@pytest.mark.slow
def test_dry_run_returns_the_tuned_plan_and_records_nothing(
    gateway: str, s3: Minio, tmp_path: Path
) -> None:
    """`"dry_run": true`: samples are encoded, the plan comes back with each rendition's
    factor and predicted size, bit rate, quality and encode time; no job exists after."""
    clip = make_clip(tmp_path / "long.mp4", size="320x180", seconds=100, rate=25, audio=False)
    key = f"dry/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    body = {"bucket": MANUAL_BUCKET, "key": key, "dry_run": True}
    r = http.post(f"{gateway}/function/split", data=json.dumps(body), timeout=120)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["dry_run"] is True and plan["plan"]["note"] is None, plan
    assert plan["plan"]["samples"] == [[48.0, 2.0]]  # 2% of 100 s: one 2 s sample, mid-way
    [rend] = plan["renditions"]
    assert rend["name"] == "180p" and 16 <= rend["crf"] <= 36
    predicted = rend["predicted"]
    assert predicted["metric"] == "vmaf" and predicted["bitrate"] > 0
    assert 60 < predicted["quality"] <= 100
    assert predicted["size_bytes"] == pytest.approx(predicted["bitrate"] * 100 / 8, rel=0.01)
    assert predicted["encode_cpu_seconds"] > 0 and len(rend["probes"]) >= 2
    assert plan["predicted"]["size_bytes"] == predicted["size_bytes"]
    status = http.get(
        f"{gateway}/function/status", params={"bucket": MANUAL_BUCKET, "key": key}, timeout=10
    )
    assert status.json()["jobs"] == [], "a dry run records no job"
    # An object left in an input bucket without a job is a lost event to the sweeper's
    # reconciliation, which would encode it while other tests run.
    s3.remove_object(MANUAL_BUCKET, key)


@pytest.mark.slow
def test_duplicate_event_yields_one_job(
    gateway: str, s3: Minio, clips: dict[str, Path], stack: LocalConfig, db: Any
) -> None:
    key = f"dup/{time.time_ns()}.mp4"
    s3.fput_object("uploads", key, str(clips["silent"]))
    first = wait_for_job(gateway, "uploads", key)
    etag = s3.stat_object("uploads", key).etag
    event = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"uploads/{key}",
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "uploads"},
                    "object": {"key": quote(key, safe=""), "eTag": etag, "size": 1},
                },
            }
        ],
    }
    token = stack.credentials["webhook_token"]
    r = http.post(
        f"{gateway}/function/split",
        json=event,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["jobs"][0]["job_id"] == first["id"]
    assert r.json()["jobs"][0]["duplicate"] is True
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE source_key = %s", (key,))
        assert cur.fetchone()[0] == 1


def test_an_uploads_metadata_options_and_a_manual_job_with_others(
    gateway: str, stack_env: dict[str, str], s3: Minio, clips: dict[str, Path], db: Any
) -> None:
    """Options ride with the upload (x-amz-meta-vtp-*): the S3 server's notification reaches
    split, which reads them and makes that job. A manual job for the same object with
    other options then makes a second job with its own outputs, where it used to be told
    `duplicate` and lose its options; the same request again is that second job."""
    key = f"meta/{time.time_ns()}.mp4"
    s3.fput_object(
        "uploads", key, str(clips["silent"]), content_type="video/mp4",
        metadata={"vtp-renditions": "360p", "vtp-formats": "hls,mp4"},
    )  # fmt: skip
    job = wait_for_job(gateway, "uploads", key)
    assert job["state"] == "succeeded", job
    assert [r["name"] for r in job["renditions"]] == ["360p"] and job["formats"] == ["hls", "mp4"]
    assert job["options"]["origin"] == "metadata"
    assert http.get(job["renditions"][0]["urls"]["mp4"], timeout=10).status_code == 200

    body = {"bucket": "uploads", "key": key, "renditions": ["360p"]}
    r = http.post(f"{gateway}/function/split", json=body, timeout=60)
    assert r.status_code == 200, r.text
    other = r.json()
    assert other["created"] is True and other["job_id"] != job["id"]
    assert other["options_key"] == "renditions=360p;formats=hls"
    assert other["other_jobs"] == [{"job_id": job["id"], "options_key": job["options_key"]}]
    again = http.post(f"{gateway}/function/split", json=body, timeout=60).json()
    assert again["duplicate"] is True and again["job_id"] == other["job_id"]
    assert again["reason"].startswith(f"duplicate: job {other['job_id']} has this object")
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE source_key = %s", (key,))
        assert cur.fetchone()[0] == 2


def test_non_video_upload_fails_with_reason(gateway: str, s3: Minio, db: Any) -> None:
    import io

    key = f"bad/{time.time_ns()}/notes.mp4"
    data = b"these are meeting notes, not a video\n" * 50
    s3.put_object("uploads", key, io.BytesIO(data), len(data))
    job = wait_for_job(gateway, "uploads", key, timeout=60)
    assert job["state"] == "failed"
    assert job["error"]
    with db.cursor() as cur:
        cur.execute("SELECT state, error FROM jobs WHERE id = %s", (job["id"],))
        state, error = cur.fetchone()
    assert state == "failed" and error == job["error"]


def test_bad_requests_get_clear_4xx(gateway: str, stack: LocalConfig) -> None:
    split = f"{gateway}/function/split"
    r = http.post(split, data=b"{not json", timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = http.post(split, json={"bucket": "uploads"}, timeout=10)
    assert r.status_code == 400 and "key" in r.json()["error"]
    r = http.post(split, json={"bucket": "uploads", "key": "x.mp4", "colour": 1}, timeout=10)
    assert r.status_code == 400 and "colour" in r.json()["error"]
    r = http.post(split, json={"bucket": "uploads", "key": "missing.mp4"}, timeout=30)
    assert r.status_code == 404
    event = {"EventName": "s3:ObjectCreated:Put", "Key": "uploads/a.mp4", "Records": []}
    assert http.post(split, json=event, timeout=10).status_code == 401  # no token
    st = f"{gateway}/function/status"
    assert (
        http.get(st, params={"id": "00000000-0000-0000-0000-000000000000"}, timeout=10).status_code
        == 404
    )
    r = http.get(st, params={"id": "not-a-uuid"}, timeout=10)
    assert r.status_code == 404 and "Traceback" not in r.text
    assert http.get(st, params={"state": "bogus"}, timeout=10).status_code == 400


def test_ignored_events_are_acknowledged(gateway: str, stack: LocalConfig) -> None:
    token = stack.credentials["webhook_token"]

    def event(bucket: str, key: str, name: str = "s3:ObjectCreated:Put") -> dict[str, Any]:
        return {
            "EventName": name,
            "Key": f"{bucket}/{key}",
            "Records": [
                {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
            ],
        }

    for ev in (
        event("uploads", "readme.txt"),
        event("outputs", "job/720p/seg_00001.mp4"),
        event("uploads", "a.mp4", "s3:ObjectCreated:PutTagging"),
        event("uploads", "a.mp4", "s3:ObjectRemoved:Delete"),
    ):
        r = http.post(
            f"{gateway}/function/split",
            json=ev,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.json()["jobs"] == [] and len(r.json()["ignored"]) == 1


@pytest.mark.slow
def test_worker_killed_mid_encode_is_retried_and_job_finishes(
    gateway: str, s3: Minio, stack: LocalConfig, db: Any, tmp_path: Path
) -> None:
    """The queue-worker never retries; our callback route and sweeper must. Kill the
    transcode function in the middle of an encode and the job still ends succeeded."""
    import os
    import signal

    from localfaas import procs

    # Long enough (several seconds of encoding) that the kill lands mid-encode on any machine.
    clip = make_clip(tmp_path / "long.mp4", size="1280x720", seconds=10)
    key = f"retry/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    job_id = submit(gateway, MANUAL_BUCKET, key, ["720p"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = http.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10).json()
        rend = job["renditions"][0]
        percent = (rend.get("progress") or {}).get("percent", 0)
        if rend["state"] == "running" and 0 < percent < 60:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the rendition never started: {job}")
    rec = procs.load(stack, "fn-transcode-720p")
    assert rec is not None
    encoders = _ffmpeg_reading(key)
    assert encoders, "no ffmpeg encodes the source"
    os.killpg(rec.pid, signal.SIGKILL)  # as the OOM killer would
    # ffmpeg runs in a session of its own; it must die with the function, not encode on.
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}").exists() for p in encoders) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in encoders), "an orphan ffmpeg runs on"

    job = wait_for_job(gateway, MANUAL_BUCKET, key, timeout=120)
    # The restarted function removed the scratch folder its killed predecessor left.
    import tempfile

    left = list(Path(tempfile.gettempdir()).glob(f"vtp-work-{rec.pid}-*"))
    assert left == [], left
    assert job["state"] == "succeeded", job
    assert job["renditions"][0]["attempts"] == 2
    with db.cursor() as cur:
        cur.execute(
            "SELECT from_state, to_state, detail FROM state_changes"
            " WHERE job_id = %s AND rendition = '720p' ORDER BY id",
            (job_id,),
        )
        states = cur.fetchall()
    # One attempt failed (the killed one); a retry that came while the function was still
    # restarting is a refusal (queued -> retrying), which spends no attempt.
    failed = [d for f, t, d in states if f == "running" and t == "retrying"]
    assert len(failed) == 1 and "without a result" in (failed[0] or ""), states


def test_sweeper_answers_what_it_did(gateway: str) -> None:
    """The cron sweeper, invoked as the cron-connector does (sync, through the gateway)."""
    r = http.post(f"{gateway}/function/sweeper", timeout=60)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {
        "confirmed_deaths",
        "reaped",
        "backups",
        "retried",
        "redispatched",
        "finalized",
        "callbacks",
        "reconciled",
        "expired",
    }
    assert all(isinstance(v, int) and v >= 0 for v in r.json().values())


def test_rendition_callback_route_needs_its_signature(gateway: str) -> None:
    """split's /callback route is as public as the gateway: without the signature split put
    in the callback URL, a forged report is refused before it touches any job."""
    url = f"{gateway}/function/split/callback"
    params = {"job": "00000000-0000-0000-0000-000000000000", "rendition": "360p"}
    headers = {"X-Function-Status": "500", "X-Call-Id": "forged"}
    r = http.post(url, params=params, headers=headers, timeout=10)
    assert r.status_code == 401, r.text
    r = http.post(url, params=params | {"sig": "0" * 64}, headers=headers, timeout=10)
    assert r.status_code == 401, r.text


def _ffmpeg_reading(key: str) -> list[int]:
    """Pids of the ffmpeg processes whose command line names the object `key`."""
    needle = quote(key).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ffmpeg") and any(needle in a for a in argv):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_progress_events_follow_the_recorded_transitions(
    gateway: str, s3: Minio, clips: dict[str, Path], db: Any, stack: LocalConfig
) -> None:
    """Every state a rendition went through, as the store recorded it, reached the event
    stream in the same order (events are derived from the transitions, not written beside
    them); progress samples in between repeat the running state and nothing else."""
    import redis

    from vtp.events import EventBus

    key = f"transitions/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clips["landscape"]))
    submit(gateway, MANUAL_BUCKET, key, ["360p"])
    job = wait_for_job(gateway, MANUAL_BUCKET, key)
    assert job["state"] == "succeeded", job
    with db.cursor() as cur:
        cur.execute(
            "SELECT to_state FROM state_changes WHERE job_id = %s AND rendition = '360p'"
            " ORDER BY id",
            (job["id"],),
        )
        recorded = ["queued"] + [row[0] for row in cur.fetchall()]  # created queued
    bus = EventBus(redis.Redis.from_url(stack.redis_url), "vtp")
    events = [e for e in bus.since("0", job["id"]) if e.rendition == "360p"]
    published = [e.state for i, e in enumerate(events) if i == 0 or e.state != events[i - 1].state]
    assert published == recorded, (published, recorded)
    assert events[-1].percent == 100.0 and events[-1].attempt == 1
