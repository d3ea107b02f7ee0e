"""The pipeline's figures in the Prometheus text format (status's `/metrics`).

Each scrape reads one snapshot from the job store (vtp.jobs.stats) and writes it with
prometheus_client's own families and exposition, so names, escaping, `_total`, `_bucket`
and `_sum` follow the format exactly. Scrape it with a `view` credential
(`authorization: {credentials: <token>}` in the scrape config).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from vtp.jobs.stats import Histogram, Snapshot, Stats
from vtp.lifecycle import JobState, RenditionState, TaskState
from vtp.quotas import Quotas

__all__ = ["CONTENT_TYPE_LATEST", "PipelineCollector", "exposition"]


class PipelineCollector(Collector):
    def __init__(self, store: Stats, quotas: Quotas | None = None) -> None:
        self.store = store
        self.quotas = quotas

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        snap = self.store.snapshot()
        yield from _families(snap)
        if self.quotas is not None:
            yield from _quota_families(*self.quotas.figures())
        took = GaugeMetricFamily(
            "vtp_metrics_scrape_seconds", "How long reading these figures from the database took."
        )
        took.add_metric([], time.monotonic() - started)
        yield took


def _families(snap: Snapshot) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("vtp_jobs", "Jobs by state.", labels=["state"])
    for state in JobState:  # every state, 0 included: a panel's series never vanish
        jobs.add_metric([state.value], snap.jobs.get(state.value, 0))
    yield jobs

    renditions = GaugeMetricFamily(
        "vtp_renditions", "Renditions by name and state.", labels=["rendition", "state"]
    )
    for name in sorted({n for n, _ in snap.renditions}):
        for rstate in RenditionState:
            renditions.add_metric(
                [name, rstate.value], snap.renditions.get((name, rstate.value), 0)
            )
    yield renditions

    tasks = GaugeMetricFamily("vtp_tasks", "Tasks (calls' units of work) by state.",
                              labels=["state"])  # fmt: skip
    for task_state in TaskState:
        tasks.add_metric([task_state.value], snap.tasks.get(task_state.value, 0))
    yield tasks

    yield _histogram(
        "vtp_encode_seconds",
        "Encode time of each succeeded task (a rendition, or a chunk of it), by rendition.",
        snap.encode_seconds,
    )
    yield _histogram(
        "vtp_queue_wait_seconds",
        "From a task's dispatch to its attempt's start (its latest attempt), by rendition.",
        snap.queue_wait_seconds,
    )

    retries = CounterMetricFamily(
        "vtp_retries", "Tasks sent back to wait for a retry (failed attempts and refused calls).",
        labels=["rendition"],
    )  # fmt: skip
    yield _per_rendition(retries, snap.retries)

    dead = CounterMetricFamily(
        "vtp_dead_letters", "Tasks dead-lettered (their budget spent).", labels=["rendition"]
    )
    yield _per_rendition(dead, snap.dead_letters)

    callbacks = GaugeMetricFamily(
        "vtp_callbacks", "Jobs with a callback URL, by the callback's status.", labels=["status"]
    )
    for status in ("pending", "delivered", "failed"):
        callbacks.add_metric([status], snap.callbacks.get(status, 0))
    yield callbacks

    failures = CounterMetricFamily(
        "vtp_callback_failures", "Job callback deliveries that failed (each try counted)."
    )
    failures.add_metric([], snap.callback_failures)
    yield failures

    written = CounterMetricFamily(
        "vtp_output_bytes", "Bytes of the renditions that succeeded, by rendition.",
        labels=["rendition"],
    )  # fmt: skip
    yield _per_rendition(written, snap.bytes_written)

    by = ["priority"]
    waiting = GaugeMetricFamily(
        "vtp_tasks_waiting", "Tasks waiting for a slot (fair share), by job priority.", labels=by
    )
    in_flight = GaugeMetricFamily(
        "vtp_calls_in_flight", "Calls queued or running on the platform, by job priority.",
        labels=by,
    )  # fmt: skip
    for name in sorted(set(snap.waiting) | {"normal"}):
        waiting.add_metric([name], snap.waiting.get(name, 0))
        in_flight.add_metric([name], snap.in_flight.get(name, 0))
    yield waiting
    yield in_flight
    yield _histogram(
        "vtp_start_wait_seconds",
        "From a task's creation to its first attempt's start, by its job's priority.",
        snap.wait_by_priority,
        label="priority",
    )


def _quota_families(
    refused: dict[tuple[str, str], int], at_work: dict[str, int]
) -> Iterator[Metric]:
    refusals = CounterMetricFamily(
        "vtp_quota_refusals", "Requests refused with 429, by credential and limit (vtp.quotas).",
        labels=["credential", "limit"],
    )  # fmt: skip
    for (credential, limit), n in sorted(refused.items()):
        refusals.add_metric([credential, limit], n)
    yield refusals
    active = GaugeMetricFamily(
        "vtp_credential_jobs_at_work", "Manual jobs queued or running, by the credential that "
        "submitted them.", labels=["credential"],
    )  # fmt: skip
    for credential, n in sorted(at_work.items()):
        active.add_metric([credential], n)
    yield active


def _per_rendition(family: CounterMetricFamily, values: dict[str, int]) -> Metric:
    for rendition, n in sorted(values.items()):
        family.add_metric([rendition], n)
    return family


def _histogram(
    name: str, documentation: str, by_key: dict[str, Histogram], *, label: str = "rendition"
) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for key, h in sorted(by_key.items()):
        family.add_metric(
            [key],
            [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.buckets],
            h.total,
        )
    return family


def exposition(store: Stats, quotas: Quotas | None = None) -> bytes:
    """The text format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(store, quotas))
    return generate_latest(registry)
