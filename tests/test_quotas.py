"""Limits per credential (vtp.quotas): a flood of submissions is answered 429 with
`Retry-After` and the limit named, and starts no encode; the counts live in PostgreSQL, so
they hold across replicas; refusals reach the metrics.

Through the session stack with the `submitter` credential (the defaults: 3 reprocesses of a
version an hour, 5 requests a second in bursts of 20), and in-process against the stack's
PostgreSQL for the jobs-at-work limit, whose default (20) a test would not reach cheaply.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import requests
from minio import Minio
from pydantic import SecretStr

from localfaas.config import LocalConfig
from tests.api import http
from tests.clips import make_clip
from tests.test_access import INFO, SPEC  # a job's smallest plan, for rows made here
from tests.test_pipeline import MANUAL_BUCKET
from tests.test_pipeline import s3 as s3  # the fixture: a client with MANUAL_BUCKET made
from vtp import db
from vtp.errors import TooManyRequests
from vtp.jobs import JobStore, SourceRef
from vtp.quotas import Quotas
from vtp.settings import Settings


def _split(gateway: str, token: str, body: dict[str, object]) -> requests.Response:
    return requests.post(
        f"{gateway}/function/split",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def _jobs_of(gateway: str, key: str) -> list[dict[str, object]]:
    r = http.get(f"{gateway}/function/status", params={"bucket": MANUAL_BUCKET, "key": key},
                 timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    return list(r.json()["jobs"])


def test_a_flood_of_requests_is_answered_429_with_retry_after(
    gateway: str, stack_env: dict[str, str]
) -> None:
    """Dry runs of an object that is not there: nothing is probed or encoded, but each is a
    request of the submitter's, and the 21st of a burst is refused."""
    token = stack_env["VTP_SUBMIT_TOKEN"]
    body = {"bucket": MANUAL_BUCKET, "key": f"flood/{uuid.uuid4().hex}.mp4", "dry_run": True}
    answers = [_split(gateway, token, body) for _ in range(30)]
    codes = [a.status_code for a in answers]
    assert set(codes) <= {404, 429}, codes
    refused = [a for a in answers if a.status_code == 429]
    assert refused, f"30 requests in a burst of 20 must meet the limit: {codes}"
    first = refused[0]
    assert int(first.headers["Retry-After"]) >= 1
    assert first.json()["limit"] == "requests_per_second"
    assert "VTP_QUOTA_REQUESTS_PER_SECOND" in first.json()["error"]
    assert token not in first.text
    # The bucket refills: a second later the submitter is let in again.
    time.sleep(int(first.headers["Retry-After"]))
    assert _split(gateway, token, body).status_code == 404
    # Other credentials have buckets of their own.
    assert _split(gateway, stack_env["VTP_TOKEN"], body).status_code == 404


def test_reprocesses_of_one_version_are_bounded_and_start_no_encode(
    gateway: str, stack_env: dict[str, str], s3: Minio, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", size="320x180", seconds=1.0)
    key = f"quota/{uuid.uuid4().hex}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    token = stack_env["VTP_SUBMIT_TOKEN"]
    body = {"bucket": MANUAL_BUCKET, "key": key, "renditions": ["360p"], "reprocess": True}
    made = []
    for _ in range(3):
        r = _split(gateway, token, body)
        assert r.status_code == 200, r.text
        made.append(r.json()["job_id"])
    assert len(set(made)) == 3
    refused = _split(gateway, token, body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["limit"] == "reprocesses_per_hour"
    assert 3000 < int(refused.headers["Retry-After"]) <= 3600
    assert sorted(j["id"] for j in _jobs_of(gateway, key)) == sorted(made), "no fourth job"
    # The limit is the submitter's: the operator may still reprocess (its own count).
    assert _split(gateway, stack_env["VTP_TOKEN"], body).status_code == 200
    metrics = http.get(f"{gateway}/function/status/metrics", timeout=10).text
    assert 'vtp_quota_refusals_total{credential="submitter",limit="reprocesses_per_hour"}' in (
        metrics
    )


def test_jobs_at_work_are_bounded_across_replicas(stack: LocalConfig) -> None:
    """Two Quotas on their own connections (two replicas of split) admit two jobs of one
    credential at most; a job that ends gives its place back."""
    conn = db.connect(stack.postgres_dsn)
    try:
        db.migrate(conn)
    finally:
        conn.close()
    settings = Settings(quota_active_jobs=2, postgres_dsn=SecretStr(stack.postgres_dsn))
    store = JobStore(lambda: db.connect(stack.postgres_dsn))
    replicas = [Quotas(lambda: db.connect(stack.postgres_dsn), settings) for _ in range(2)]
    who = f"tenant-{uuid.uuid4().hex[:8]}"
    made = []
    for i in range(2):
        src = SourceRef(bucket="uploads", key=f"q/{uuid.uuid4().hex}.mp4", etag="e", size=1)
        with replicas[i].admitting(who, src.bucket, src.key, "e", reprocess=False) as admitted:
            job, _ = store.create_job(src, INFO, [SPEC])
            admitted.job_id = job.id
            made.append(job)
    third = replicas[1].admitting(who, "uploads", "q/third.mp4", "e", reprocess=False)
    with pytest.raises(TooManyRequests, match="VTP_QUOTA_ACTIVE_JOBS") as info, third:
        pytest.fail("a third job must not be admitted")
    assert info.value.limit == "active_jobs" and info.value.retry_after >= 1
    store.cancel_job(made[0].id, reason="test")  # a place again: the first job ended
    # A submission that made nothing gives its place back at once.
    failing = replicas[0].admitting(who, "uploads", "q/x.mp4", "e", reprocess=False)
    with pytest.raises(RuntimeError), failing:
        raise RuntimeError("probe failed")
    with replicas[1].admitting(who, "uploads", "q/fourth.mp4", "e", reprocess=False):
        pass
    refused, at_work = replicas[0].figures()
    assert refused[(who, "active_jobs")] == 1
    assert at_work[who] == 1


def test_upload_tickets_count_against_the_same_rate(
    relay_url: str, stack_env: dict[str, str]
) -> None:
    """A ticket is a submit request too: the viewer credential gets none at all (no scope),
    the submitter's flood meets its rate, answered as split answers it."""
    ask = {"filename": "a.mp4", "content_type": "video/mp4", "size": 10}
    view = {"Authorization": f"Bearer {stack_env['VTP_VIEW_TOKEN']}"}
    viewer = requests.post(f"{relay_url}api/uploads", json=ask, headers=view, timeout=10)
    assert viewer.status_code == 403
    headers = {"Authorization": f"Bearer {stack_env['VTP_SUBMIT_TOKEN']}"}
    answers = [
        requests.post(f"{relay_url}api/uploads", json=ask, headers=headers, timeout=10)
        for _ in range(30)
    ]
    refused = [a for a in answers if a.status_code == 429]
    assert refused, [a.status_code for a in answers]
    assert refused[0].json()["limit"] == "requests_per_second"
    assert int(refused[0].headers["Retry-After"]) >= 1
    time.sleep(int(refused[0].headers["Retry-After"]) + 1)  # leave the bucket to the next test
