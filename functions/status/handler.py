"""status: one job (`id`), or recent jobs (`state`, `limit`, `bucket` and `key`); and the
pipeline's figures for Prometheus on `GET /metrics` (vtp.metrics).

The query comes from the query string or a JSON body, and GET and POST both work:
`curl .../function/status?id=...` and `faas-cli invoke status --query id=...` (which POSTs,
unless given `-m GET`) give the same answer. `id` may be the short form the progress page
shows (the first 8 digits).

Every call needs the `view` scope (vtp.access): a credential in `Authorization: Bearer`, or a
signed link (`?link=`), which shows its one job and nothing else. Listings never show callback
URLs, only whether a job has one.
"""

from __future__ import annotations

from typing import Any

from vtp import access, metrics
from vtp.http import Response, authorize, guarded, ok, pipeline
from vtp.models import StatusQuery
from vtp.settings import load_at_start

# A bad setting or combination stops the start here, said in one line of the log.
load_at_start()


@guarded
def handle(event: Any, context: Any) -> Response:
    if event.method not in ("GET", "HEAD", "POST"):
        return {"statusCode": 405, "body": {"error": "use GET or POST"}}
    p = pipeline()
    caller = authorize(event, "status")
    if event.path.rstrip("/") == "/metrics":
        caller.sees(None)
        return {
            "statusCode": 200,
            "body": metrics.exposition(p.store, p.quotas),
            "headers": {"Content-Type": metrics.CONTENT_TYPE_LATEST},
        }
    params = {k: v for k, v in event.query.items() if k != access.LINK_PARAM}
    query = StatusQuery.parse(params, event.body if event.method == "POST" else b"")
    if query.id:
        job = p.find_job(query.id)
        caller.sees(str(job.id))
        return ok(p.describe_job(job))
    caller.sees(None)
    jobs = p.store.list(query.state, query.limit, bucket=query.bucket, key=query.key)
    return ok({"jobs": [p.describe_job(j, live=False, listing=True) for j in jobs]})
