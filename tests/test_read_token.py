"""The read token (vtp.access): with `vtp-read-token` set, status and ws-relay show nothing
without it, over every route a reader could try; and no listing ever shows a job's callback
URL or its query string, with or without a token.

status runs in its own template process (index.py, as OpenFaaS runs it) and ws-relay as its
app under uvicorn, both with the secret mounted as a file and against the stack's real
PostgreSQL and Redis; the jobs are real rows made by the store.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from localfaas.build import assemble_context
from localfaas.config import LocalConfig
from tests.inprocess import serve_relay
from tests.test_template import TEMPLATE, Server, start
from vtp import db
from vtp.jobs import JobStore, SourceRef
from vtp.models import RenditionSpec, SourceInfo
from vtp.settings import Settings
from vtp_relay import RelayOptions, create_app

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "functions" / "ws-relay" / "static"
TOKEN = "read-" + uuid.uuid4().hex
# What the job owner's receiver put in its callback URL: it must never come back out.
RECEIVER_SECRET = "receiver-" + uuid.uuid4().hex
INFO = SourceInfo(
    duration=4.0, width=640, height=360, fps=25.0, has_audio=False, video_codec="h264"
)
SPEC = RenditionSpec(
    name="360p", function="transcode-360p", width=640, height=360, fps=25.0,
    video_bitrate=800_000, max_bitrate=880_000, buffer_size=1_600_000, audio_bitrate=96_000,
)  # fmt: skip


@pytest.fixture(scope="module")
def job_id(stack: LocalConfig) -> str:
    """A job whose callback URL carries the receiver's own secret in its query string."""
    store = JobStore(lambda: db.connect(stack.postgres_dsn))
    source = SourceRef(
        bucket="uploads", key=f"read-token/{uuid.uuid4().hex}.mp4", etag=uuid.uuid4().hex, size=1
    )
    job, created = store.create_job(
        source,
        INFO,
        [SPEC],
        callback_url=f"https://hooks.example.com/vtp/done?key={RECEIVER_SECRET}",
    )
    assert created
    return str(job.id)


def secrets_dir(tmp: Path, token: str | None) -> Path:
    folder = tmp / f"secrets-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    if token is not None:
        (folder / "vtp-read-token").write_text(token)
    return folder


def function_env(stack_env: dict[str, str], secrets: Path) -> dict[str, str]:
    env = {k: v for k, v in stack_env.items() if k.startswith("VTP_")}
    env.pop("VTP_READ_TOKEN", None)
    return env | {"VTP_SECRETS_DIR": str(secrets)}


@pytest.fixture(scope="module")
def guarded_status(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("status")
    context = assemble_context(
        TEMPLATE, REPO / "functions" / "status", [Path("./vtp")], tmp / "build", scope=REPO
    )
    server = start(context, tmp, function_env(stack_env, secrets_dir(tmp, TOKEN)))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded_relay(stack: LocalConfig, stack_env: dict[str, str]) -> Iterator[str]:
    """ws-relay's app with the read token, on the stack's Redis and PostgreSQL."""
    settings = Settings(
        redis_url=SecretStr(stack.redis_url),
        postgres_dsn=SecretStr(stack.postgres_dsn),
        s3_endpoint=stack.s3_endpoint,
        s3_access_key=SecretStr(stack_env["VTP_S3_ACCESS_KEY"]),
        s3_secret_key=SecretStr(stack_env["VTP_S3_SECRET_KEY"]),
        read_token=SecretStr(TOKEN),
    )
    app = create_app(settings, static_dir=STATIC, options=RelayOptions())
    with serve_relay(app) as address:
        yield address


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused(resp: requests.Response, why: str) -> None:
    assert resp.status_code == 401, (resp.status_code, resp.text[:300])
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert why in resp.json()["error"]
    assert "read-token" not in resp.text and "hooks.example.com" not in resp.text


# --- status ----------------------------------------------------------------------------------


def test_status_needs_the_token(guarded_status: Server, job_id: str) -> None:
    url = guarded_status.url
    for params in ({"id": job_id}, {}, {"id": job_id[:8]}, {"state": "queued", "limit": "5"}):
        assert_refused(requests.get(url, params=params, timeout=10), "requires a read token")
        assert_refused(requests.post(url, json=params, timeout=10), "requires a read token")
    wrong = requests.get(url, params={"id": job_id}, headers=bearer(TOKEN + "x"), timeout=10)
    assert_refused(wrong, "wrong read token")
    assert_refused(requests.get(url, params={"id": job_id, "token": ""}, timeout=10), "requires")
    assert_refused(requests.get(url, params={"id": job_id, "token": TOKEN[:-1]}, timeout=10),
                   "wrong read token")  # fmt: skip


def test_status_with_the_token(guarded_status: Server, job_id: str) -> None:
    url = guarded_status.url
    by_header = requests.get(url, params={"id": job_id}, headers=bearer(TOKEN), timeout=10)
    by_query = requests.get(url, params={"id": job_id, "token": TOKEN}, timeout=10)
    by_post = requests.post(f"{url}?token={TOKEN}", json={"id": job_id}, timeout=10)
    for resp in (by_header, by_query, by_post):
        assert resp.status_code == 200, resp.text[:300]
        assert resp.json()["id"] == job_id
        callback = resp.json()["callback"]
        # The job's own view shows where its callback goes, but not the receiver's secret.
        assert callback["url"] == "https://hooks.example.com/vtp/done?…"
        assert RECEIVER_SECRET not in resp.text


def test_listings_never_show_callback_urls(
    guarded_status: Server, gateway: str, relay_url: str, job_id: str
) -> None:
    """With the token (guarded status), and on the stack's open status and ws-relay."""
    listings = [
        requests.get(guarded_status.url, params={"limit": "1000"}, headers=bearer(TOKEN),
                     timeout=20),
        requests.get(f"{gateway}/function/status", params={"limit": "1000"}, timeout=20),
        requests.get(f"{relay_url}api/jobs", params={"limit": "1000"}, timeout=20),
    ]  # fmt: skip
    for resp in listings:
        assert resp.status_code == 200, resp.text[:300]
        jobs = {j["id"]: j for j in resp.json()["jobs"]}
        assert job_id in jobs, "the job must be in the listing for this test to mean anything"
        assert jobs[job_id]["callback"]["status"] == "pending"
        assert "url" not in jobs[job_id]["callback"]
        assert RECEIVER_SECRET not in resp.text and "hooks.example.com" not in resp.text


# --- ws-relay --------------------------------------------------------------------------------


def test_relay_routes_need_the_token(guarded_relay: str, job_id: str) -> None:
    base = f"http://{guarded_relay}"
    refused = [
        requests.get(f"{base}/api/jobs", timeout=10),
        requests.get(f"{base}/api/jobs/{job_id}", timeout=10),
        requests.get(f"{base}/poll", params={"job": "all"}, timeout=10),
        requests.get(f"{base}/events", params={"job": job_id}, timeout=10, stream=True),
        requests.post(f"{base}/api/uploads", json={"filename": "a.mp4"}, timeout=10),
    ]
    for resp in refused:
        assert_refused(resp, "requires a read token")
    wrong = requests.get(f"{base}/api/jobs", headers=bearer("nope"), timeout=10)
    assert_refused(wrong, "wrong read token")

    async def ws_status(query: str) -> int:
        try:
            async with connect(f"ws://{guarded_relay}/ws?job=all{query}", open_timeout=5):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(ws_status("")) == 403
    assert asyncio.run(ws_status("&token=nope")) == 403
    # What holds no job stays open: the page (how a reader with the token gets in), its
    # scripts, the connection counts.
    assert requests.get(f"{base}/", timeout=10).status_code == 200
    assert requests.get(f"{base}/static/app.js", timeout=10).status_code == 200
    assert requests.get(f"{base}/api/relay/stats", timeout=10).status_code == 200


def test_relay_with_the_token(guarded_relay: str, job_id: str) -> None:
    base = f"http://{guarded_relay}"
    view = requests.get(f"{base}/api/jobs/{job_id}", headers=bearer(TOKEN), timeout=10)
    assert view.status_code == 200 and view.json()["id"] == job_id
    assert RECEIVER_SECRET not in view.text
    poll = requests.get(f"{base}/poll", params={"job": job_id, "token": TOKEN}, timeout=10)
    assert poll.status_code == 200 and "jobs" in poll.json()
    with requests.get(
        f"{base}/events", params={"job": job_id, "token": TOKEN}, timeout=10, stream=True
    ) as sse:
        assert sse.status_code == 200
        assert sse.headers["Content-Type"].startswith("text/event-stream")
        lines = sse.iter_lines()
        assert any(line == b"event: snapshot" for line, _ in zip(lines, range(5), strict=False))

    async def snapshot() -> dict[str, Any]:
        import json

        async with connect(f"ws://{guarded_relay}/ws?job={job_id}&token={TOKEN}") as ws:
            data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return data

    assert asyncio.run(snapshot())["type"] == "snapshot"


@pytest.mark.slow
def test_page_opened_with_the_token_goes_live(guarded_relay: str, job_id: str) -> None:
    """The page adds the token from its own URL to its WebSocket and API calls."""
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, need_chromium

    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"http://{guarded_relay}/?token={TOKEN}#/jobs/{job_id}")
            page.wait_for_function(
                "document.getElementById('conn').dataset.mode === 'websocket'", timeout=20_000
            )
            page.wait_for_function(
                "document.getElementById('detail-view').dataset.state === 'queued'",
                timeout=20_000,
            )
            without = browser.new_page()
            without.goto(f"http://{guarded_relay}/#/jobs/{job_id}")
            without.wait_for_function(
                "document.getElementById('conn').dataset.mode === 'locked'", timeout=20_000
            )
            assert "requires a read token" in without.inner_text("#conn-text")
            assert "requires a read token" in without.inner_text("#detail-missing")
            assert without.evaluate("document.getElementById('detail-view').dataset.state") == ""
        finally:
            browser.close()


def test_cli_sends_the_token_from_its_settings(guarded_status: Server, job_id: str) -> None:
    """`VTP_READ_TOKEN` (the environment, or the stack.env `make up` writes) reaches status."""
    from vtp.errors import VtpError
    from vtp_cli.client import StatusClient
    from vtp_cli.config import load_config

    for environ, works in (({"VTP_READ_TOKEN": TOKEN}, True), ({}, False)):
        config = load_config({}, environ, env_file=None, cwd=Path("/"))
        client = StatusClient(config)
        client.url = guarded_status.url  # the template process, not behind a gateway
        if works:
            assert client.job(job_id)["id"] == job_id
        else:
            with pytest.raises(VtpError, match=r"401.*requires a read token"):
                client.job(job_id)
