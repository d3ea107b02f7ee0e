"""MinIO's webhook notification target, played for the local S3 server.

moto (our local S3) has no webhooks, but it does what AWS S3 does: it sends the uploads bucket's
`s3:ObjectCreated:*` events to an SQS queue on the same server (services.py sets that up). This
process reads that queue and POSTs each event to `cfg.notify_url` exactly as a MinIO webhook
target with a queue dir would, so the functions only ever see MinIO's format and semantics:

- body `{"EventName", "Key", "Records": [record]}`, one event per request, the record as MinIO
  builds it (`eventSource` "minio:s3", `eventName` with its `s3:` prefix, the object key
  `url.QueryEscape`d, `userMetadata` holding `content-type` and `X-Amz-Meta-*`, empty fields
  omitted as Go's `omitempty` does), `Authorization: Bearer <webhook_token>`;
- a completed multipart upload is one `s3:ObjectCreated:CompleteMultipartUpload` event (moto
  also emits a `Put` for it, which is dropped);
- at-least-once: a non-2xx answer or a connection error keeps the event and retries it every
  few seconds, blocking the events behind it; it leaves the queue only after a 2xx.

The translation is the pure `to_minio_event`; the rest is plumbing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import requests
from botocore.exceptions import BotoCoreError, ClientError

from localfaas import services
from localfaas.config import LocalConfig

# Not __name__: run as `python -m localfaas.notifier` that would be "__main__".
log = logging.getLogger("localfaas.notifier")

# Seconds a received message stays invisible to other readers; extended while we retry it.
VISIBILITY_TIMEOUT = 30
# Retry back-off after a failed delivery: doubles from the first to the last, then stays.
RETRY_FIRST = 0.5
RETRY_MAX = 3.0

_MULTIPART_ETAG = re.compile(r"-\d+$")


# --- the pure translation ---------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectHead:
    """What a HEAD of the object adds to moto's record: MinIO's event carries both."""

    content_type: str | None = None
    # User metadata names without the `x-amz-meta-` prefix, as boto3 returns them.
    user_metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Origin:
    """The parts of a MinIO event that describe the server and the request, not the object."""

    principal_id: str  # the access key that made the request
    endpoint: str  # x-minio-origin-endpoint
    deployment_id: str  # x-minio-deployment-id
    region: str = ""  # MinIO's site region; empty unless configured
    source_host: str = "127.0.0.1"  # the client's address (the local server only listens here)
    user_agent: str = ""  # moto does not tell us the client's User-Agent


def minio_event_name(record: dict[str, Any]) -> str:
    """`ObjectCreated:Put` (moto, as AWS) -> `s3:ObjectCreated:Put` (MinIO)."""
    name = str(record.get("eventName", ""))
    return name if name.startswith("s3:") else f"s3:{name}"


def is_duplicate_multipart_put(record: dict[str, Any]) -> bool:
    """moto completes a multipart upload by a Put (no `s3:` event of its own in MinIO) and then
    a CompleteMultipartUpload event; only the latter is MinIO's. The Put is recognisable by the
    multipart ETag (`<md5 of part md5s>-<parts>`), which a single PUT never has."""
    etag = str(record.get("s3", {}).get("object", {}).get("eTag", "")).strip('"')
    return minio_event_name(record) == "s3:ObjectCreated:Put" and bool(_MULTIPART_ETAG.search(etag))


def should_forward(record: dict[str, Any]) -> bool:
    """Object-created events, minus moto's extra Put for a multipart upload."""
    return minio_event_name(record).startswith("s3:ObjectCreated:") and not (
        is_duplicate_multipart_put(record)
    )


def encode_key(key: str) -> str:
    """MinIO encodes the record's key with Go's url.QueryEscape: every byte but
    [A-Za-z0-9-_.~] percent-encoded (UTF-8, upper-case hex), `/` as %2F, space as `+`.
    Python's quote_plus with no safe characters is the same function."""
    return quote_plus(key, safe="")


def _canonical_header(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey, as MinIO stores user metadata names."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _event_time(record: dict[str, Any]) -> datetime:
    raw = record.get("eventTime")
    if isinstance(raw, str) and raw:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


def to_minio_event(
    record: dict[str, Any], head: ObjectHead | None, origin: Origin
) -> dict[str, Any]:
    """One moto (AWS-shaped) S3 event record -> the body of MinIO's webhook POST for it.

    Field order and omissions follow MinIO's `event.Log`/`event.Event` structs: `size`,
    `eTag`, `contentType` and `userMetadata` are left out when empty (Go `omitempty`).
    `sequencer` and `x-amz-request-id` come from the event time (MinIO uses the object's
    modification time in nanoseconds, upper-case hex); nothing here is random, so the same
    record always gives the same body.
    """
    s3 = record["s3"]
    bucket = str(s3["bucket"]["name"])
    key = unquote_plus(str(s3["object"]["key"]))  # moto quote_plus-encodes it
    name = minio_event_name(record)
    when = _event_time(record).astimezone(UTC)
    nanos = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    unique = f"{nanos:X}"

    obj: dict[str, Any] = {"key": encode_key(key)}
    size = int(s3["object"].get("size") or 0)
    if size:
        obj["size"] = size
    etag = str(s3["object"].get("eTag") or "").strip('"')
    if etag:
        obj["eTag"] = etag
    if head is not None and head.content_type:
        obj["contentType"] = head.content_type
    meta: dict[str, str] = {}
    if head is not None:
        if head.content_type:
            meta["content-type"] = head.content_type
        for k, v in sorted(head.user_metadata.items()):
            meta[_canonical_header(f"x-amz-meta-{k}")] = v
    if meta:
        obj["userMetadata"] = meta
    obj["sequencer"] = unique

    identity = {"principalId": origin.principal_id}
    event = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": origin.region,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "eventName": name,
        "userIdentity": identity,
        "requestParameters": {
            "principalId": origin.principal_id,
            "region": origin.region,
            "sourceIPAddress": origin.source_host,
        },
        "responseElements": {
            # MinIO: the SHA-256 of the node name; ours: of the endpoint.
            "x-amz-id-2": hashlib.sha256(origin.endpoint.encode()).hexdigest(),
            "x-amz-request-id": unique,
            "x-minio-deployment-id": origin.deployment_id,
            "x-minio-origin-endpoint": origin.endpoint,
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {
                "name": bucket,
                "ownerIdentity": dict(identity),
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
        "source": {"host": origin.source_host, "port": "", "userAgent": origin.user_agent},
    }
    # The top-level Key is bucket/key decoded, as MinIO's webhook target writes it.
    return {"EventName": name, "Key": f"{bucket}/{key}", "Records": [event]}


# --- the process ------------------------------------------------------------------------------


def origin_for(cfg: LocalConfig) -> Origin:
    return Origin(
        principal_id=cfg.credentials["s3_access_key"],
        endpoint=cfg.s3_endpoint,
        # Stable per stack, like a MinIO deployment's id.
        deployment_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"localfaas:{cfg.run_dir}")),
    )


class Notifier:
    """Reads the events queue one message at a time, in order, and delivers it."""

    def __init__(self, cfg: LocalConfig, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.origin = origin_for(cfg)
        self.s3 = services.boto_client(cfg, "s3")
        self.sqs = services.boto_client(cfg, "sqs")
        self.http = requests.Session()
        self.queue_url: str | None = None
        self.headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {cfg.credentials['webhook_token']}",
        }

    def run(self) -> None:
        log.info("notifier: %s events -> %s", self.cfg.uploads_bucket, self.cfg.notify_url)
        last_error = ""
        while not self.stop.is_set():
            try:
                if self.queue_url is None:
                    self.queue_url = self.sqs.get_queue_url(QueueName=services.EVENTS_QUEUE)[
                        "QueueUrl"
                    ]
                got = self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=1,  # strictly in order, as MinIO's queue store
                    WaitTimeSeconds=1,
                    VisibilityTimeout=VISIBILITY_TIMEOUT,
                )
                last_error = ""
            except (BotoCoreError, ClientError) as exc:
                # S3 server down or restarted (moto forgets its queue): wait and look again.
                if str(exc) != last_error:
                    log.warning("events queue not reachable (%s); retrying", exc)
                    last_error = str(exc)
                self.queue_url = None
                self.stop.wait(1.0)
                continue
            for msg in got.get("Messages", []):
                self.handle(msg)

    def handle(self, msg: dict[str, Any]) -> None:
        received = time.monotonic()
        try:
            body = json.loads(msg["Body"])
        except (KeyError, ValueError):
            log.error("dropping a queue message that is not JSON: %.200r", msg.get("Body"))
            self._delete(msg)
            return
        payloads = []
        for record in body.get("Records", []):  # no Records: moto's s3:TestEvent
            if not should_forward(record):
                log.debug("skipping %s", minio_event_name(record))
                continue
            payloads.append(to_minio_event(record, self._head(record), self.origin))
        for payload in payloads:
            if not self._deliver(payload, msg, received):
                # Stopping: hand the message back at once so the next start delivers it.
                self._release(msg)
                return
        self._delete(msg)

    def _head(self, record: dict[str, Any]) -> ObjectHead | None:
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])
        try:
            res = self.s3.head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            # Deleted since: MinIO would still have sent its metadata; we send what we know.
            log.warning("HEAD %s/%s failed (%s): event without content type", bucket, key, exc)
            return None
        return ObjectHead(
            content_type=res.get("ContentType"), user_metadata=dict(res.get("Metadata", {}))
        )

    def _deliver(self, payload: dict[str, Any], msg: dict[str, Any], received: float) -> bool:
        """POST until a 2xx (True) or until asked to stop (False)."""
        data = json.dumps(payload).encode()
        attempt = 0
        while True:
            attempt += 1
            status: int | str
            try:
                resp = self.http.post(
                    self.cfg.notify_url, data=data, headers=self.headers, timeout=(5, 60)
                )
                status = resp.status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            if isinstance(status, int) and 200 <= status < 300:
                log.info(
                    "delivered %s %s -> %s (attempt %d)",
                    payload["EventName"],
                    payload["Key"],
                    status,
                    attempt,
                )
                return True
            delay = min(RETRY_FIRST * 2 ** (attempt - 1), RETRY_MAX)
            log.warning(
                "delivery of %s %s failed: %s (attempt %d, retrying in %.1fs)",
                payload["EventName"],
                payload["Key"],
                status,
                attempt,
                delay,
            )
            if time.monotonic() - received > VISIBILITY_TIMEOUT / 2:
                self._keep_invisible(msg)
                received = time.monotonic()
            if self.stop.wait(delay):
                return False

    def _keep_invisible(self, msg: dict[str, Any]) -> None:
        self._visibility(msg, VISIBILITY_TIMEOUT)

    def _release(self, msg: dict[str, Any]) -> None:
        self._visibility(msg, 0)

    def _visibility(self, msg: dict[str, Any], seconds: int) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=msg["ReceiptHandle"],
                VisibilityTimeout=seconds,
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not change a message's visibility: %s", exc)

    def _delete(self, msg: dict[str, Any]) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
        except (BotoCoreError, ClientError) as exc:
            # It will come back: a duplicate, which receivers handle anyway (at-least-once).
            log.warning("could not delete a delivered message: %s", exc)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Notifier(LocalConfig(), stop).run()
    log.info("notifier stopped")


if __name__ == "__main__":
    main()
