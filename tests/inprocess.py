"""Parts of the product run in the test process against the stack's real services: a
Pipeline (for paths hard to reach through uploads), and ws-relay's app served by uvicorn
(for tests that need a relay configured differently from the stack's)."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import uvicorn

from tests.ports import free_port
from tests.stackenv import FAST
from vtp import db
from vtp.events import EventBus
from vtp.invoker import Invoker
from vtp.jobs import Job, JobStore, SourceRef
from vtp.lifecycle import RetryPolicy
from vtp.media.ladder import plan_ladder
from vtp.media.probe import probe_source
from vtp.pipeline import Pipeline
from vtp.settings import Settings
from vtp.storage import Storage


def build_pipeline(stack_env: dict[str, str]) -> Pipeline:
    """A Pipeline on the stack's PostgreSQL, Redis, S3 and gateway (its calls go to the
    stack's functions), with a long back-off, so a callback leaves a retry to the sweeper
    instead of waiting. The caller closes `pipeline.store`."""
    settings = Settings(
        s3_endpoint=stack_env["VTP_S3_ENDPOINT"],
        s3_access_key=stack_env["VTP_S3_ACCESS_KEY"],  # type: ignore[arg-type]
        s3_secret_key=stack_env["VTP_S3_SECRET_KEY"],  # type: ignore[arg-type]
        postgres_dsn=stack_env["VTP_POSTGRES_DSN"],  # type: ignore[arg-type]
        redis_url=stack_env["VTP_REDIS_URL"],  # type: ignore[arg-type]
        gateway_url=stack_env["VTP_GATEWAY_URL"],
        dispatch_slots=int(FAST["VTP_DISPATCH_SLOTS"]),  # as the stack's own split counts
    )
    dsn = settings.postgres_dsn.get_secret_value()
    conn = db.connect(dsn)
    db.migrate(conn)
    conn.close()
    store = JobStore(functools.partial(db.connect, dsn), retry=RetryPolicy(base_s=120, max_s=600))
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    return Pipeline(
        settings,
        store,
        Storage.from_settings(settings),
        EventBus(client, settings.redis_prefix),
        Invoker(settings.gateway_url),
    )


def quiet_bucket(pipeline: Pipeline) -> str:
    """A bucket no event or reconciliation reads: the stack's own split must not make (or
    share) a job for what these tests encode in-process."""
    name = "core-sources"
    if not pipeline.storage.client.bucket_exists(name):
        pipeline.storage.client.make_bucket(name)
    return name


HELD = "held-by-test"


def hold(store: JobStore, job: Job) -> Job:
    """Keep a job recorded in the stack's database from ever being dispatched: each task is
    given a call (HELD) that no queue holds, so fair share (vtp.jobs.scheduling), which the
    stack's split and sweeper run after every call, counts it in flight instead of handing
    it to the stack's functions. The test runs or ends its tasks itself (a call of its own
    begins an attempt of a queued task whatever call it waits for)."""
    for rend in job.renditions:
        for task in rend.tasks:
            store.record_dispatch(job.id, rend.name, HELD, chunk=task.chunk)
    return store.get(job.id)


def record_job(pipeline: Pipeline, *args: Any, **kw: Any) -> tuple[Job, bool]:
    """`store.create_job` for a job the test runs itself: recorded and held (`hold`)."""
    job, created = pipeline.store.create_job(*args, **kw)
    return (hold(pipeline.store, job) if created else job), created


def job_for_clip(pipeline: Pipeline, clip: Path, renditions: list[str]) -> Job:
    """A job recorded for `clip` (uploaded to `quiet_bucket`, probed as split would) and not
    dispatched: the test runs or ends its tasks itself, whatever the stack is doing."""
    bucket = quiet_bucket(pipeline)
    key = f"inprocess/{time.time_ns()}-{clip.name}"
    pipeline.storage.client.fput_object(bucket, key, str(clip))
    stat = pipeline.storage.stat(bucket, key)
    info = probe_source(pipeline.storage.presigned_get(bucket, key, expires=600), pipeline.settings)
    ref = SourceRef(bucket=bucket, key=key, etag=stat.etag, size=stat.size)
    job, _ = record_job(pipeline, ref, info, plan_ladder(info, pipeline.settings, renditions))
    return job


def chunked_pipeline(pipeline: Pipeline, *, chunk_seconds: float = 8.0) -> Pipeline:
    """The same, planning every source over 10 s as chunks of `chunk_seconds`, with
    `quiet_bucket` as its input bucket (the stack's functions encode the chunks: what a
    chunk is comes with its task, not from their settings)."""
    settings = pipeline.settings.model_copy(
        update={"chunked_encoding": True, "chunk_threshold_seconds": 10.0,
                "chunk_seconds": chunk_seconds, "input_buckets": [quiet_bucket(pipeline)]}
    )  # fmt: skip
    return Pipeline(settings, pipeline.store, pipeline.storage, pipeline.bus, pipeline.invoker)


@contextlib.contextmanager
def serve_relay(app: Any, *, timeout: float = 15.0, **config: Any) -> Iterator[str]:
    """`host:port` of `app` once uvicorn listens and the relay's hub is subscribed."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not (server.started and app.state.relay.hub.ready):
            assert time.monotonic() < deadline, "in-process relay did not start"
            assert thread.is_alive(), "uvicorn stopped before the relay was ready"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
