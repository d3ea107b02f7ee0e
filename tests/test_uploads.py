"""Bounded uploads: the page's tickets (ws-relay's /api/uploads...) against the stack's own S3
server, which refuses what a ticket does not allow as MinIO does (localfaas.s3browser).

The relays here are ws-relay's app in-process (tests.inprocess.serve_relay) on the stack's
S3, Redis and PostgreSQL, with small bounds (settings), so that "one byte over" is a few
hundred KiB and an upload in parts is two parts: S3 wants every part but the last to be at
least 5 MiB, so those tests send a little over 5 MiB. What is uploaded lands in the stack's
uploads bucket, whose notifications make jobs, as for any producer.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from pydantic import SecretStr

from localfaas.config import LocalConfig
from tests.clips import make_clip
from tests.inprocess import serve_relay
from vtp.errors import NotFound
from vtp.settings import Settings
from vtp.storage import Storage
from vtp_relay import RelayOptions, create_app
from vtp_relay.uploads import UploadRequest, UploadsApi

STATIC = Path(__file__).resolve().parent.parent / "functions" / "ws-relay" / "static"
MiB = 1024**2
POST_BOUND = 256 * 1024  # the POST relay's upload_max_bytes
PARTS_BOUND = 6 * MiB  # the parts relay's; its threshold is 1 MiB, its parts 5 MiB
ORIGIN = "http://127.0.0.1:8999"  # a page on another origin than the store's


def stack_settings(stack: LocalConfig, stack_env: dict[str, str], **uploads: Any) -> Settings:
    return Settings(
        redis_url=SecretStr(stack.redis_url),
        postgres_dsn=SecretStr(stack.postgres_dsn),
        s3_endpoint=stack.s3_endpoint,
        s3_access_key=SecretStr(stack_env["VTP_S3_ACCESS_KEY"]),
        s3_secret_key=SecretStr(stack_env["VTP_S3_SECRET_KEY"]),
        # Open: these relays test the bounds of uploads (test_access tests the doors).
        open_access=True,
        **uploads,
    )


@pytest.fixture(scope="module")
def storage(stack: LocalConfig, stack_env: dict[str, str]) -> Storage:
    return Storage.from_settings(stack_settings(stack, stack_env))


@pytest.fixture(scope="module")
def post_relay(stack: LocalConfig, stack_env: dict[str, str]) -> Iterator[str]:
    """A relay whose tickets are POST policies of at most POST_BOUND bytes."""
    settings = stack_settings(stack, stack_env, upload_max_bytes=POST_BOUND)
    app = create_app(settings, static_dir=STATIC, options=RelayOptions())
    with serve_relay(app) as address:
        yield f"http://{address}"


@pytest.fixture(scope="module")
def parts_relay(stack: LocalConfig, stack_env: dict[str, str]) -> Iterator[str]:
    """A relay that sends files over 1 MiB in 5 MiB parts, up to PARTS_BOUND in all."""
    settings = stack_settings(
        stack,
        stack_env,
        upload_max_bytes=PARTS_BOUND,
        upload_multipart_threshold_bytes=MiB,
        upload_part_bytes=5 * MiB,
    )
    app = create_app(settings, static_dir=STATIC, options=RelayOptions())
    with serve_relay(app) as address:
        yield f"http://{address}"


def ticket_for(relay: str, filename: str, size: int, content_type: str = "video/mp4") -> Any:
    r = requests.post(
        f"{relay}/api/uploads",
        json={"filename": filename, "content_type": content_type, "size": size},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def post_form(
    ticket: dict[str, Any], body: bytes, *, fields: dict[str, str] | None = None
) -> requests.Response:
    """The form as the page sends it (fields, then the file), from a page on ORIGIN."""
    return requests.post(
        ticket["url"],
        data=fields if fields is not None else ticket["fields"],
        files={"file": ("clip.mp4", body, "video/mp4")},
        headers={"Origin": ORIGIN},
        timeout=30,
    )


def s3_code(resp: requests.Response) -> str:
    text = resp.text
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else ""


def assert_absent(storage: Storage, bucket: str, key: str) -> None:
    with pytest.raises(NotFound):
        storage.stat(bucket, key)


def find_job(relay: str, bucket: str, key: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = requests.get(f"{relay}/api/jobs", params={"bucket": bucket, "key": key}, timeout=10)
        if r.status_code == 200 and r.json()["jobs"]:
            job: dict[str, Any] = r.json()["jobs"][0]
            return job
        time.sleep(0.3)
    raise AssertionError(f"no job for s3://{bucket}/{key} within {timeout_s:g}s")


# --- a POST policy: the store enforces it -----------------------------------------------------


def test_upload_within_the_bound_makes_a_job(
    post_relay: str, storage: Storage, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "small.mp4", size="640x360", seconds=1)
    size = clip.stat().st_size
    assert size <= POST_BOUND, "the clip must fit the bound for this test to mean anything"
    ticket = ticket_for(post_relay, "small.mp4", size)
    assert ticket["kind"] == "post" and ticket["max_bytes"] == POST_BOUND
    r = post_form(ticket, clip.read_bytes())
    assert r.status_code == 204, r.text
    # A page on another origin can read that answer (the bucket's CORS rule allows POST).
    assert r.headers.get("Access-Control-Allow-Origin") == ORIGIN
    info = storage.stat(ticket["bucket"], ticket["key"])
    assert (info.size, info.content_type) == (size, "video/mp4")
    job = find_job(post_relay, ticket["bucket"], ticket["key"])
    assert job["source"]["key"] == ticket["key"]


def test_one_byte_over_the_bound_is_refused_by_the_store(post_relay: str, storage: Storage) -> None:
    # Declared over the bound: no ticket at all, and the reason says which setting.
    r = requests.post(
        f"{post_relay}/api/uploads",
        json={"filename": "big.mp4", "size": POST_BOUND + 1},
        timeout=10,
    )
    assert r.status_code == 400 and "VTP_UPLOAD_MAX_BYTES" in r.json()["error"], r.text
    # Declared within it, one byte more sent: the S3 server refuses it as it arrives.
    ticket = ticket_for(post_relay, "big.mp4", POST_BOUND)
    r = post_form(ticket, os.urandom(POST_BOUND + 1))
    assert (r.status_code, s3_code(r)) == (400, "EntityTooLarge"), r.text
    assert r.headers.get("Access-Control-Allow-Origin") == ORIGIN, "the page can read why"
    assert_absent(storage, ticket["bucket"], ticket["key"])
    # And an empty file is below content-length-range's minimum of 1.
    r = post_form(ticket, b"")
    assert (r.status_code, s3_code(r)) == (400, "EntityTooSmall"), r.text
    assert_absent(storage, ticket["bucket"], ticket["key"])


def test_another_type_or_key_than_the_tickets_is_refused(post_relay: str, storage: Storage) -> None:
    ticket = ticket_for(post_relay, "clip.mp4", 1000)
    body = os.urandom(1000)
    other_type = ticket["fields"] | {"Content-Type": "text/html"}
    r = post_form(ticket, body, fields=other_type)
    assert (r.status_code, s3_code(r)) == (403, "AccessDenied"), r.text
    assert "Policy Condition failed" in r.text
    other_key = ticket["key"].rsplit("/", 1)[0] + "/other.mp4"
    r = post_form(ticket, body, fields=ticket["fields"] | {"key": other_key})
    assert (r.status_code, s3_code(r)) == (403, "AccessDenied"), r.text
    # A field the policy does not name is refused too (MinIO: every field needs a condition).
    r = post_form(ticket, body, fields=ticket["fields"] | {"x-amz-meta-vtp-renditions": "1080p"})
    assert (r.status_code, s3_code(r)) == (403, "AccessDenied"), r.text
    # A policy edited by the client no longer matches its signature.
    forged = ticket["fields"] | {"policy": ticket["fields"]["policy"][:-4] + "AAA="}
    r = post_form(ticket, body, fields=forged)
    assert (r.status_code, s3_code(r)) == (403, "SignatureDoesNotMatch"), r.text
    for key in (ticket["key"], other_key):
        assert_absent(storage, ticket["bucket"], key)


def test_an_expired_ticket_is_refused(
    stack: LocalConfig, stack_env: dict[str, str], storage: Storage
) -> None:
    api = UploadsApi(stack_settings(stack, stack_env, upload_ticket_seconds=1))
    ticket = api.ticket(UploadRequest(filename="late.mp4", size=1000)).model_dump(mode="json")
    time.sleep(2.2)
    r = post_form(ticket, os.urandom(1000))
    assert (r.status_code, s3_code(r)) == (403, "AccessDenied"), r.text
    assert "Policy expired" in r.text
    assert_absent(storage, ticket["bucket"], ticket["key"])


# --- in parts: completed only within the bound ----------------------------------------------


def part_url(relay: str, ticket: dict[str, Any], number: int) -> str:
    r = requests.post(
        f"{relay}/{ticket['parts_url']}",
        json={"key": ticket["key"], "upload_id": ticket["upload_id"], "numbers": [number]},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    (part,) = r.json()["parts"]
    assert part["number"] == number
    return str(part["url"])


def put_part(relay: str, ticket: dict[str, Any], number: int, body: bytes) -> None:
    r = requests.put(part_url(relay, ticket, number), data=body, timeout=30)
    assert r.status_code == 200, r.text


def drop_mid_part(url: str, body: bytes) -> None:
    """A PUT whose connection drops halfway, as a browser's does on a lost network."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10) as sock:
        head = (
            f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
    time.sleep(0.5)  # the server notices the short body


def complete(relay: str, ticket: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{relay}/{ticket['complete_url']}",
        json={"bucket": ticket["bucket"], "key": ticket["key"], "upload_id": ticket["upload_id"]},
        timeout=30,
    )


def test_parts_with_one_sent_again_complete(parts_relay: str, storage: Storage) -> None:
    size = 5 * MiB + 1000
    ticket = ticket_for(parts_relay, "parts.mp4", size)
    assert ticket["kind"] == "multipart" and ticket["upload_id"]
    assert (ticket["part_size"], ticket["part_count"]) == (5 * MiB, 2)
    body = os.urandom(size)
    first, second = body[: 5 * MiB], body[5 * MiB :]
    drop_mid_part(part_url(parts_relay, ticket, 1), first)
    # Nothing of the dropped part is kept: the store took no part 1.
    assert storage.list_parts(ticket["bucket"], ticket["key"], ticket["upload_id"]) == []
    put_part(parts_relay, ticket, 2, second)
    put_part(parts_relay, ticket, 1, first)  # the part that failed, alone, with a fresh URL
    r = complete(parts_relay, ticket)
    assert r.status_code == 200, r.text
    assert r.json() | {"etag": ""} == {
        "bucket": "uploads", "key": ticket["key"], "size": size, "parts": 2, "etag": "",
    }  # fmt: skip
    assert r.json()["etag"].endswith("-2")
    info = storage.stat(ticket["bucket"], ticket["key"])
    assert (info.size, info.content_type) == (size, "video/mp4"), "the type the ticket named"
    assert storage.get_bytes(ticket["bucket"], ticket["key"]) == body


def test_parts_over_the_bound_are_refused_and_aborted(parts_relay: str, storage: Storage) -> None:
    ticket = ticket_for(parts_relay, "grown.mp4", 5 * MiB + 1000)  # declared within the bound
    put_part(parts_relay, ticket, 1, os.urandom(5 * MiB))
    put_part(parts_relay, ticket, 2, os.urandom(3 * MiB // 2))  # 6.5 MiB in all: over
    r = complete(parts_relay, ticket)
    assert r.status_code == 400, r.text
    assert "more than the 6 MiB" in r.json()["error"] and "aborted" in r.json()["error"]
    assert_absent(storage, ticket["bucket"], ticket["key"])
    with pytest.raises(NotFound):  # the upload and its parts are gone
        storage.list_parts(ticket["bucket"], ticket["key"], ticket["upload_id"])
    assert complete(parts_relay, ticket).status_code == 404


def test_the_parts_routes_act_on_tickets_uploads_only(parts_relay: str) -> None:
    ticket = ticket_for(parts_relay, "mine.mp4", 2 * MiB)
    ref = {"key": ticket["key"], "upload_id": ticket["upload_id"]}
    cases = [
        ({**ref, "key": "talks/intro.mp4", "numbers": [1]}, "key is not one"),
        ({**ref, "bucket": "outputs", "numbers": [1]}, "'uploads' bucket only"),
        ({**ref, "numbers": [0]}, "part numbers go from 1 to 2"),
        ({**ref, "numbers": [3]}, "part numbers go from 1 to 2"),
        ({**ref, "numbers": []}, "numbers"),
    ]
    for body, words in cases:
        r = requests.post(f"{parts_relay}/api/uploads/parts", json=body, timeout=10)
        assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
    r = requests.post(f"{parts_relay}/api/uploads/complete", json=ref, timeout=10)
    assert r.status_code == 400 and "no part" in r.json()["error"]
    r = requests.post(f"{parts_relay}/api/uploads/abort", json=ref, timeout=10)
    assert r.status_code == 200 and r.json() == {"aborted": True}


def test_the_upload_routes_need_a_submit_credential(
    stack: LocalConfig, stack_env: dict[str, str]
) -> None:
    settings = stack_settings(stack, stack_env).model_copy(
        update={"read_token": SecretStr("a-token-for-this-test")}
    )
    app = create_app(settings, static_dir=STATIC, options=RelayOptions())
    with serve_relay(app) as address:
        for route in ("uploads", "uploads/parts", "uploads/complete", "uploads/abort"):
            r = requests.post(f"http://{address}/api/{route}", json={}, timeout=10)
            assert r.status_code == 401, (route, r.text)
