"""Job callbacks: the SSRF guard, the signature, and delivery against a real HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from pydantic import BaseModel

from tests.receiver import Receiver
from vtp import callbacks
from vtp.errors import InvalidRequest


class Body(BaseModel):
    job_id: str
    state: str


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://[::1]/hook",
    ],
)
def test_private_destinations_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest, match="non-public"):
        callbacks.check_destination(url, allow_private=False)
    callbacks.check_destination(url, allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost"])
def test_non_http_destinations_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest, match="http"):
        callbacks.check_destination(url, allow_private=True)


def test_delivery_is_signed() -> None:
    with Receiver() as rx:
        out = callbacks.deliver(
            f"{rx.url}/hook",
            Body(job_id="j1", state="succeeded"),
            delivery_id="j1",
            event="job.finished",
            secret="s3cret",
        )
        got = rx.get(timeout=5)
    assert out.ok and out.attempts == 1 and out.status == 200
    assert json.loads(got.body) == {"job_id": "j1", "state": "succeeded"}
    expected = "sha256=" + hmac.new(b"s3cret", got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-VTP-Signature"] == expected
    assert got.headers["X-VTP-Delivery"] == "j1"
    assert got.headers["X-VTP-Event"] == "job.finished"


def test_server_errors_are_retried_client_errors_are_not() -> None:
    with Receiver(status=503) as rx:
        out = callbacks.deliver(
            rx.url, Body(job_id="j", state="failed"), delivery_id="j", event="e", backoff=0.01
        )
        assert [rx.get(timeout=5) for _ in range(3)]
    assert not out.ok and out.attempts == 3 and out.error == "HTTP 503"
    with Receiver(status=404) as rx:
        out = callbacks.deliver(
            rx.url, Body(job_id="j", state="failed"), delivery_id="j", event="e", backoff=0.01
        )
        rx.get(timeout=5)
        assert rx.requests.empty()
    assert not out.ok and out.status == 404
