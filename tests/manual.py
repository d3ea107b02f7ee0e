"""A manual job posted to split's sync route, as `faas-cli invoke split` does."""

from __future__ import annotations

from typing import Any

from tests.api import http


def submit(gateway: str, bucket: str, key: str, renditions: list[str], **fields: Any) -> str:
    """The new job's id; the answer must be 200 (split answers a sync job with the job)."""
    body = {"bucket": bucket, "key": key, "renditions": renditions, **fields}
    r = http.post(f"{gateway}/function/split", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["job_id"])
