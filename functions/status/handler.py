"""status: one job (`?id=`), or recent jobs (`?state=`, `?limit=`, `?bucket=&key=`)."""

from __future__ import annotations

from typing import Any

from vtp.errors import InvalidRequest
from vtp.http import Response, guarded, ok, pipeline
from vtp.models import JobState


@guarded
def handle(event: Any, context: Any) -> Response:
    if event.method not in ("GET", "HEAD"):
        return {"statusCode": 405, "body": {"error": "use GET"}}
    p = pipeline()
    q = event.query
    job_id = q.get("id")
    if job_id:
        return ok(p.describe_job(p.find_job(job_id)))
    state = q.get("state")
    try:
        wanted = JobState(state) if state else None
        limit = int(q.get("limit") or 50)
    except ValueError as exc:
        raise InvalidRequest(
            f"state must be one of {[s.value for s in JobState]} and limit a number"
        ) from exc
    jobs = p.store.list(wanted, limit, bucket=q.get("bucket"), key=q.get("key"))
    return ok({"jobs": [p.describe_job(j, live=False) for j in jobs]})
