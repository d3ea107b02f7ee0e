"""Waiting for a job of a benchmark's stack, as a client would: through status."""

from __future__ import annotations

import time

import requests

from localfaas.config import LocalConfig


def wait_for_success(cfg: LocalConfig, key: str, *, until: float, poll_s: float) -> str:
    """The id of the job for uploads/`key` once it has succeeded; exits on its failure or
    when time.monotonic() passes `until`. Returns as soon as the success is seen, so the
    caller's clock stops at it."""
    status = f"{cfg.gateway_url}/function/status"
    job_id = None
    while time.monotonic() < until:
        if job_id is None:
            found = requests.get(status, params={"bucket": "uploads", "key": key}, timeout=10)
            jobs = found.json().get("jobs", [])
            job_id = jobs[0]["id"] if jobs else None
        if job_id:
            job = requests.get(status, params={"id": job_id}, timeout=10).json()
            if job["state"] == "succeeded":
                return str(job_id)
            if job["state"] == "failed":
                raise SystemExit(f"job failed: {job['error']}")
        time.sleep(poll_s)
    raise SystemExit("timed out")
