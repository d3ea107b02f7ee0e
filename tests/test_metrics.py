"""status's /metrics: the pipeline's figures from PostgreSQL, in the Prometheus text format,
read back with prometheus_client's own parser."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.api import http
from tests.test_jobs import INFO, PLAN, source
from vtp import metrics
from vtp.jobs import CallbackStatus, JobStore
from vtp.models import JobState


def scrape(store: JobStore) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape: (name, sorted labels) -> value."""
    text = metrics.exposition(store).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_figures_follow_what_the_jobs_did(store: JobStore) -> None:
    """A job through a retry, a success and a callback that failed once; another whose
    rendition died: each figure moves by exactly what happened (deltas, so whatever else the
    database holds does not matter)."""
    before = scrape(store)
    job, _ = store.create_job(source(), INFO, PLAN[:1])
    store.attach_callback(job.id, "https://example.com/hook")
    store.begin_attempt(job.id, "360p", "a1")
    store.fail_task(job.id, "360p", "oom", retryable=True, call_id="a1")
    store.begin_attempt(job.id, "360p", "a2")
    result = {"output_prefix": "x", "size_bytes": 12345, "timings": {"encode_s": 3.25}}
    store.succeed_task(job.id, "360p", result, call_id="a2")
    assert store.claim_finalization(job.id, "w") is not None
    store.complete_job(job.id, JobState.SUCCEEDED, claimer="w")
    store.record_callback(job.id, CallbackStatus.PENDING, "HTTP 503", retry_in=30)

    dead, _ = store.create_job(source(), INFO, PLAN[:1])
    for i in range(3):
        store.begin_attempt(dead.id, "360p", f"d{i}")
        store.fail_task(dead.id, "360p", "oom", retryable=True, call_id=f"d{i}")
    after = scrape(store)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vtp_jobs", state="succeeded") == 1
    assert delta("vtp_jobs", state="queued") + delta("vtp_jobs", state="running") == 1  # dead's
    assert delta("vtp_renditions", rendition="360p", state="dead") == 1
    assert delta("vtp_tasks", state="succeeded") == 1
    assert delta("vtp_encode_seconds_count", rendition="360p") == 1
    assert abs(delta("vtp_encode_seconds_sum", rendition="360p") - 3.25) < 1e-9
    assert delta("vtp_encode_seconds_bucket", rendition="360p", le="2.5") == 0
    assert delta("vtp_encode_seconds_bucket", rendition="360p", le="5.0") == 1
    assert delta("vtp_encode_seconds_bucket", rendition="360p", le="+Inf") == 1
    assert delta("vtp_retries_total", rendition="360p") == 1 + 2  # a1, then d0 and d1
    assert delta("vtp_dead_letters_total", rendition="360p") == 1
    assert delta("vtp_callbacks", status="pending") == 1
    assert delta("vtp_callback_failures_total") == 1
    assert delta("vtp_output_bytes_total", rendition="360p") == 12345
    assert value(after, "vtp_metrics_scrape_seconds") > 0
    # Every state is a series, 0 included, so a dashboard's lines do not come and go.
    assert ("vtp_jobs", (("state", "cancelled"),)) in after


def test_status_serves_them_to_a_scraper(gateway: str, db: Any) -> None:
    r = http.get(f"{gateway}/function/status/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=")  # the text format
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {"vtp_jobs", "vtp_renditions", "vtp_tasks", "vtp_encode_seconds",
            "vtp_queue_wait_seconds", "vtp_retries", "vtp_dead_letters", "vtp_callbacks",
            "vtp_callback_failures", "vtp_output_bytes"} <= set(families)  # fmt: skip
    assert families["vtp_encode_seconds"].type == "histogram"
    assert families["vtp_retries"].type == "counter"
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs")
        (jobs,) = cur.fetchone()
    assert sum(s.value for s in families["vtp_jobs"].samples) == jobs


def test_the_dashboard_queries_only_figures_that_exist(store: JobStore) -> None:
    """deploy/grafana/vtp-dashboard.json: valid JSON whose every query names a metric
    /metrics serves (a renamed metric would leave a panel blank without this)."""
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "deploy/grafana/vtp-dashboard.json").read_text()
    )
    text = metrics.exposition(store).decode()
    families = list(text_string_to_metric_families(text))
    served = {f.name for f in families} | {s.name for f in families for s in f.samples}
    # A histogram's and a counter's series: _bucket, _sum, _count, _total.
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}
    served |= {f"{f.name}{x}" for f in families for x in suffixes.get(f.type, ())}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 9
    for expr in exprs:
        names = set(re.findall(r"\bvtp_[a-z_]+", expr))
        assert names and names <= served, (expr, names - served)
