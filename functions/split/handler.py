"""split: a MinIO bucket notification or a manual job in; a job with its ladder out.

Also receives the queue-worker's callbacks for transcode calls on `/callback`, sends a
finished job's callback again on `POST /callbacks/redeliver?job=<id>`, and acts on a job on
`POST /jobs/cancel`, `/jobs/redrive` and `/jobs/delete` `?job=<id>`, and mints a viewer's link
to one job on `POST /links?job=<id>[&ttl=<seconds>]`. Manual jobs and links need the `submit`
scope, the operator's routes `operate` (vtp.access.ROUTES); bucket notifications carry the
webhook token instead.

A sync call answers 200 with the job, new or not (`created` says which): `faas-cli invoke`
prints the body of a 200 or 201 only, and reports any 202 as "Function submitted
asynchronously." without it. An async call (`/async-function/split`) is answered 202 by the
gateway, whatever split says later.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from vtp import access, callbacks, links
from vtp.errors import Conflict, InvalidRequest, NotFound, Unauthorized, VtpError
from vtp.http import Response, authorize, guarded, header, ok, pipeline
from vtp.pipeline.views import kind_fields
from vtp.settings import load_at_start
from vtp.webhook import JobRequest, MinioEvent, SourceObject, parse_body, sources_from_event

log = logging.getLogger("split")

_OPEN_WEBHOOK = (
    "no vtp-webhook-token set: split accepts bucket notifications from anyone who can reach "
    "the gateway (set the secret, and MinIO's auth_token, to require one)"
)


def _warn_if_open() -> None:
    """Said once at start: an empty or missing token means "no token required", which suits
    MinIO releases that cannot send one (before 2019) but lets anyone post events. A bad
    setting or combination stops the start here, said in one line of the log."""
    if load_at_start().webhook_token is None:
        log.warning(_OPEN_WEBHOOK)


_warn_if_open()


def _bearer_token(p: Any) -> str | None:
    """The token bucket notifications must carry, or None: any caller is accepted."""
    token = p.settings.webhook_token
    return None if token is None else str(token.get_secret_value())


@guarded
def handle(event: Any, context: Any) -> Response:
    if event.path.rstrip("/") == "/callback":
        return _callback(event)
    if event.path.rstrip("/") in OPERATOR_ROUTES:
        return _operate(event, event.path.rstrip("/"))
    if event.path.rstrip("/") == "/links":
        return _link(event)
    if event.path.strip("/"):
        raise NotFound(f"split has no route {event.path[:80]!r}")
    if event.method != "POST":
        return {"statusCode": 405, "body": {"error": "POST a MinIO event or a job"}}
    request = parse_body(event.body)
    if isinstance(request, MinioEvent):
        return _bucket_event(event, request)
    caller = authorize(event, "split")
    return _manual_job(request, caller)


def _bucket_event(event: Any, request: MinioEvent) -> Response:
    p = pipeline()
    token = _bearer_token(p)
    if token is not None:
        expected = f"Bearer {token}"
        if not hmac.compare_digest(header(event, "Authorization") or "", expected):
            raise Unauthorized("bucket notification without the expected bearer token")
    wanted, ignored = sources_from_event(
        request,
        outputs_buckets=p.settings.output_buckets,
        caption_suffixes=p.settings.caption_suffixes,
        input_buckets=p.settings.source_buckets,
    )
    for reason in ignored:
        log.info("ignored: %s", reason)
    jobs = []
    for src in wanted:
        try:
            result = p.submit(src)
        except NotFound as exc:
            # Deleted before we got to it: nothing to do, and MinIO must not retry forever.
            ignored.append(exc.reason)
            continue
        jobs.append(_summary(result))
    # 2xx even when everything was ignored: MinIO's queue would otherwise block on it.
    return ok({"jobs": jobs, "ignored": ignored})


def _manual_job(request: JobRequest, caller: access.Principal) -> Response:
    p = pipeline()
    log.info("manual job for %s/%s by %s", request.bucket, request.key, caller.name)
    p.quotas.take_request(caller.name)
    src = SourceObject(bucket=request.bucket, key=request.key)
    if request.dry_run:
        planned = p.intake.preview(src, request.options())
        return ok(planned.preview())
    etag = p.intake.source_version(src)
    with p.quotas.admitting(
        caller.name, src.bucket, src.key, etag, reprocess=request.reprocess
    ) as admitted:
        result = p.submit(src, request.options(), reprocess=request.reprocess, manual=True)
        admitted.job_id = result.job.id
    body = _summary(result)
    if result.job.state == "failed" and not result.job.renditions:
        return ok(body, status=422)  # recorded, but the source is not something we can encode
    # 200 for a new job too, not 202: faas-cli drops the body of any 202 (see the docstring).
    return ok(body)


def _callback(event: Any) -> Response:
    job_id = event.query.get("job")
    rendition = event.query.get("rendition")
    if not job_id or not rendition:
        raise InvalidRequest("callback needs ?job=<id>&rendition=<name>")
    try:
        status = int(header(event, "X-Function-Status") or 0)
    except ValueError as exc:
        raise InvalidRequest("X-Function-Status is not a number") from exc
    chunk_text = event.query.get("chunk") or "0"
    if not chunk_text.isdigit() or len(chunk_text) > 6:
        raise InvalidRequest("callback's chunk is not a task number")
    chunk = int(chunk_text)
    p = pipeline()
    call_id = event.query.get("call")
    p.check_callback_signature(job_id, rendition, call_id, event.query.get("sig"), chunk)
    if call_id is None:
        call_id = header(event, "X-Call-Id")  # a URL from before calls were signed
    elif header(event, "X-Call-Id") not in (None, call_id):
        raise Unauthorized("rendition callback for another call than its URL was signed for")
    try:
        out = p.on_rendition_callback(
            job_id,
            rendition,
            function_status=status,
            call_id=call_id,
            body=event.body or b"",
            chunk=chunk,
        )
    except VtpError as exc:
        # The queue-worker ignores our answer; log it, and keep the status honest.
        log.warning("callback for %s/%s: %s", job_id, rendition, exc.reason)
        raise
    return ok(out)


def _redeliver(p: Any, job_id: str, query: Any) -> dict[str, Any]:
    """Send a finished job's callback again, now."""
    job = p.redeliver_callback(job_id)
    return {"job_id": str(job.id), "callback": p.describe_job(job, live=False)["callback"]}


def _delete(p: Any, job_id: str, query: Any) -> dict[str, Any]:
    source = (query.get("source") or "").lower() in ("1", "true", "yes")
    return dict(p.delete_job(job_id, source=source))


# The operator's routes, one job each (`POST <route>?job=<id>`), for the `operate` scope:
# what they do is in vtp.pipeline.operations and vtp.pipeline.fanin.
OPERATOR_ROUTES: dict[str, Callable[[Any, str, Any], dict[str, Any]]] = {
    "/callbacks/redeliver": _redeliver,
    "/jobs/cancel": lambda p, job_id, _q: p.cancel_job(job_id),  # 409 if it has ended
    "/jobs/redrive": lambda p, job_id, _q: p.redrive_job(job_id),  # a failed job's dead letters
    "/jobs/delete": _delete,  # an ended job's outputs and rows (&source=true: its source)
}


def _operate(event: Any, route: str) -> Response:
    if event.method != "POST":
        return {"statusCode": 405, "body": {"error": f"POST {route}?job=<id>"}}
    job_id = event.query.get("job")
    if not job_id:
        raise InvalidRequest(f"{route} needs ?job=<id>")
    p = pipeline()
    caller = authorize(event, "split")
    if caller.job is not None:  # a caller held to one job (none with operate, today)
        caller.sees(str(p.find_job(job_id).id))
    log.info("%s of job %s by %s", route, job_id, caller.name)  # the audit trail
    return ok(OPERATOR_ROUTES[route](p, job_id, event.query))


def _link(event: Any) -> Response:
    """A viewer's link to one job: its page, status and events, until it expires."""
    if event.method != "POST":
        return {"statusCode": 405, "body": {"error": "POST /links?job=<id>[&ttl=<seconds>]"}}
    p = pipeline()
    caller = authorize(event, "split")
    p.quotas.take_request(caller.name)
    job_id = event.query.get("job")
    if not job_id:
        raise InvalidRequest("/links needs ?job=<id>")
    ttl_text = event.query.get("ttl") or str(p.settings.link_ttl_seconds)
    if not ttl_text.isdigit() or not 0 < int(ttl_text) <= p.settings.link_ttl_seconds:
        raise InvalidRequest(f"ttl must be 1 to {p.settings.link_ttl_seconds} seconds")
    job = p.find_job(job_id)
    caller.sees(str(job.id))
    secret = p.settings.link_secret
    if secret is None:
        raise Conflict("this deployment signs no links: set the vtp-link-secret secret")
    expires = time.time() + int(ttl_text)
    token = links.mint(secret, str(job.id), expires, access.Scope.VIEW, name=caller.name)
    base = p.settings.public_gateway
    query = urlencode({"job": str(job.id), access.LINK_PARAM: token})
    log.info("link to job %s for %ss by %s", job.id, ttl_text, caller.name)
    return ok(
        {
            "job_id": str(job.id),
            "link": token,
            "page": f"{base}/function/ws-relay/?{query}",
            "status": f"{base}/function/status?id={job.id}&{access.LINK_PARAM}={token}",
            "expires_at": datetime.fromtimestamp(int(expires), UTC).isoformat(),
        }
    )


def _summary(result: Any) -> dict[str, Any]:
    job = result.job
    return {
        "job_id": str(job.id),
        "created": result.created,
        "duplicate": not result.created,
        "reason": result.reason,
        "state": job.state,
        "error": job.error,
        "source": {"bucket": job.source.bucket, "key": job.source.key, "etag": job.source.etag},
        "options_key": job.options_key,
        "options": job.options,
        "callback_url": callbacks.shown_url(job.callback_url) if job.callback_url else None,
        "other_jobs": [{"job_id": str(i), "options_key": k} for i, k in result.others],
        "renditions": [
            {
                "name": r.name,
                "kind": r.spec.kind,
                "function": r.function,
                **kind_fields(r.spec),
                "video_bitrate": r.spec.video_bitrate if r.spec.kind == "video" else None,
                "audio_bitrate": r.spec.audio_bitrate,
                "crf": r.spec.crf,
                "predicted": r.spec.estimate.model_dump(exclude={"probes"})
                if r.spec.estimate
                else None,
            }
            for r in job.renditions
        ],
        "plan": job.plan,
    }
