"""The async-invocation queue: one JetStream stream, the message the gateway puts on it.

The CE gateway publishes each `/async-function/` request on the NATS subject `faas-request`
and the queue-worker consumes it. We keep that subject name; the payload is ours (the request's
method, path, query, headers and body), small by design: like NATS Streaming's ~1 MB limit, a
queue message carries object keys, never video bytes.
"""

from __future__ import annotations

import base64
import logging

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

__all__ = [
    "NATS",
    "JetStreamContext",
    "Msg",
    "QueuedRequest",
    "connect",
    "ensure_consumer",
    "ensure_stream",
]

SUBJECT = "faas-request"
STREAM = "faas-request"
CONSUMER = "faas-queue-worker"
# Deliveries awaiting an ack, over all queue-workers. Each worker holds at most one, so this
# only needs to exceed the replica count; messages of a worker that died hold their place
# until ack_wait, and must not keep the others from fetching.
MAX_ACK_PENDING = 1000
# The CE queue-worker's payload limit is about 1 MB; refusing larger bodies at the gateway
# keeps the local stack from accepting what production would not.
MAX_PAYLOAD_BYTES = 1024 * 1024


class QueuedRequest(BaseModel):
    """One async invocation, as it waits on the queue."""

    function: str
    namespace: str
    method: str = "POST"
    path: str = "/"
    query: str = ""
    headers: list[tuple[str, str]] = Field(default_factory=list)
    body_b64: str = ""
    call_id: str
    callback_url: str | None = None
    queued_at: float

    @property
    def body(self) -> bytes:
        return base64.b64decode(self.body_b64)

    @staticmethod
    def encode_body(body: bytes) -> str:
        return base64.b64encode(body).decode()


async def connect(url: str) -> tuple[NATS, JetStreamContext]:
    nc = await nats.connect(url, name="localfaas", max_reconnect_attempts=-1)
    js = nc.jetstream()
    await ensure_stream(js)
    return nc, js


async def ensure_stream(js: JetStreamContext) -> None:
    """Create the stream if missing. Work-queue retention: a message is gone once acked."""
    config = StreamConfig(
        name=STREAM,
        subjects=[SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_msg_size=MAX_PAYLOAD_BYTES * 2,  # base64 and headers on top of the body limit
    )
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        # Already exists with the same config (idempotent) or a different one: update it.
        log.debug("add_stream: %s; updating", exc)
        await js.update_stream(config)


async def ensure_consumer(js: JetStreamContext, *, ack_wait: float) -> None:
    """The queue-workers' shared durable consumer, created or brought to this config (an
    older stack's consumer keeps its settings otherwise: a durable outlives its workers)."""
    config = ConsumerConfig(
        durable_name=CONSUMER,
        name=CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=MAX_ACK_PENDING,
        filter_subject=SUBJECT,
    )
    await js.add_consumer(STREAM, config=config)
