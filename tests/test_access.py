"""Access as an attacker tries it (vtp.access): every route of the stack x every credential a
caller could hold, allowed or refused as one table says; what a signed link opens and what
it does not; credentials never in logs, answers or listings.

The stack is the session's own, closed the way `make up` closes it: three credentials
(viewer: view; submitter: view, submit; operator: every scope) in its `vtp-credentials`
secret, and a link secret. Jobs are real rows made by the store.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from localfaas.config import LocalConfig
from tests.inprocess import hold
from vtp import access, db, links
from vtp.errors import Forbidden, Unauthorized
from vtp.jobs import JobStore, SourceRef
from vtp.models import RenditionSpec, SourceInfo
from vtp.settings import Settings

INFO = SourceInfo(
    duration=4.0, width=640, height=360, fps=25.0, has_audio=False, video_codec="h264"
)
SPEC = RenditionSpec(
    name="360p", function="transcode-360p", width=640, height=360, fps=25.0,
    video_bitrate=800_000, max_bitrate=880_000, buffer_size=1_600_000, audio_bitrate=96_000,
)  # fmt: skip
RECEIVER_SECRET = "receiver-" + uuid.uuid4().hex
NOBODY = str(uuid.uuid4())  # a job id no job has: operate routes answer 404 once let in


def _job(stack: LocalConfig) -> str:
    conn = db.connect(stack.postgres_dsn)
    try:
        db.migrate(conn)  # the functions migrate at their first call, which may not have come
    finally:
        conn.close()
    store = JobStore(lambda: db.connect(stack.postgres_dsn))
    source = SourceRef(
        bucket="uploads", key=f"access/{uuid.uuid4().hex}.mp4", etag=uuid.uuid4().hex, size=1
    )
    job, created = store.create_job(
        source, INFO, [SPEC], callback_url=f"https://hooks.example.com/done?key={RECEIVER_SECRET}"
    )
    assert created
    hold(store, job)  # never handed to the stack's functions: its source does not exist
    return str(job.id)


@pytest.fixture(scope="module")
def jobs(stack: LocalConfig) -> tuple[str, str]:
    """Two jobs: the one the links are for, and another."""
    return _job(stack), _job(stack)


@pytest.fixture(scope="module")
def callers(stack: LocalConfig, jobs: tuple[str, str]) -> dict[str, dict[str, str]]:
    """Each kind of caller, as the headers (or query) it sends."""
    c = stack.credentials
    secret = SecretStr(c["link_secret"])
    mine, other = jobs
    now = time.time()
    link = links.mint(secret, mine, now + 600, "view", name="test")
    expired = links.mint(secret, mine, now - 1, "view", name="test")
    forged = links.mint(SecretStr("not-the-deployment-secret"), mine, now + 600, "view")
    widened = links.mint(secret, mine, now + 600, ["view", "submit", "operate"], name="test")
    return {
        "none": {},
        "wrong": _bearer("vtp_" + uuid.uuid4().hex),
        "view": _bearer(c["view_token"]),
        "submit": _bearer(c["submit_token"]),
        "operate": _bearer(c["operate_token"]),
        "link": _bearer(link),
        "link in URL": {"?link": link},
        "other job's link": _bearer(links.mint(secret, other, now + 600, "view")),
        "expired link": _bearer(expired),
        "forged link": _bearer(forged),
        # A session token is not a link, even though the same secret signs it.
        "session as link": _bearer(
            links.mint(secret, None, now + 600, ["view"], name="x", kind="session")
        ),
        # Scopes are the signer's: a link claiming more than view still opens one job only,
        # and the routes check its scopes like any caller's.
        "link claiming operate": _bearer(widened),
        "credential in URL": {"?token": c["operate_token"]},
    }


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Route: (function, method, path, query, body, needed scope, the job it is about or None).
Route = tuple[str, str, str, dict[str, str], Any, str, str | None]


def routes(mine: str) -> list[Route]:
    return [
        ("status", "GET", "", {"id": mine}, None, "view", mine),
        ("status", "POST", "", {}, {"id": mine}, "view", mine),
        ("status", "GET", "", {"limit": "5"}, None, "view", None),
        ("status", "GET", "/metrics", {}, None, "view", None),
        ("split", "POST", "/links", {"job": mine}, None, "submit", mine),
        (
            "split",
            "POST",
            "",
            {},
            {"bucket": "uploads", "key": "none.mp4", "dry_run": True},
            "submit",
            None,
        ),
        ("split", "POST", "/callbacks/redeliver", {"job": mine}, None, "operate", mine),
        ("split", "POST", "/jobs/cancel", {"job": NOBODY}, None, "operate", NOBODY),
        ("split", "POST", "/jobs/redrive", {"job": NOBODY}, None, "operate", NOBODY),
        ("split", "POST", "/jobs/delete", {"job": NOBODY}, None, "operate", NOBODY),
        ("split", "POST", "/jobs/unknown-route", {"job": mine}, None, "no route", mine),
        ("ws-relay", "GET", "/api/jobs", {}, None, "view", None),
        ("ws-relay", "GET", f"/api/jobs/{mine}", {}, None, "view", mine),
        ("ws-relay", "GET", "/poll", {"job": mine}, None, "view", mine),
        ("ws-relay", "GET", "/poll", {"job": "all"}, None, "view", None),
        ("ws-relay", "GET", "/events", {"job": mine}, None, "view", mine),
        ("ws-relay", "POST", "/api/uploads", {}, {"filename": "a.mp4"}, "submit", None),
        ("ws-relay", "GET", "/", {}, None, "open", None),
        ("ws-relay", "GET", "/api/relay/stats", {}, None, "open", None),
    ]


CREDENTIAL_SCOPES = {
    "view": {"view"},
    "submit": {"view", "submit"},
    "operate": {"view", "submit", "operate"},
}


LINKS = {"link": "mine", "link in URL": "mine", "link claiming operate": "mine",
         "other job's link": "other"}  # fmt: skip
REFUSED_AS_UNKNOWN = ("none", "wrong", "expired link", "forged link", "session as link",
                      "credential in URL")  # fmt: skip


def expected(caller: str, scope: str, about: str | None, mine: str) -> int | None:
    """None: let in (whatever the route then answers); else the refusal's status."""
    if scope == "open":
        return None
    if scope == "no route":
        return 404  # the same answer to everyone: nothing to learn from it
    if caller in REFUSED_AS_UNKNOWN:
        return 401
    if caller in CREDENTIAL_SCOPES:
        return None if scope in CREDENTIAL_SCOPES[caller] else 403
    # A link views, whatever its claims say, and only the job it was signed for.
    if scope != "view" or about is None:
        return 403
    return None if LINKS[caller] == "mine" else 403


def call(route: Route, who: dict[str, str], gateway: str, relay_url: str) -> requests.Response:
    function, method, path, query, body, _, _ = route
    base = relay_url.rstrip("/") if function == "ws-relay" else f"{gateway}/function/{function}"
    params = dict(query)
    headers = {}
    for k, v in who.items():
        if k.startswith("?"):
            params[k[1:]] = v
        else:
            headers[k] = v
    # `requests` itself: nothing added behind the test's back (tests/api.py adds the
    # operator's token to calls to the stack).
    resp = requests.request(
        method, base + path, params=params, json=body, headers=headers, timeout=30, stream=True
    )
    resp.close() if path == "/events" else None
    return resp


def test_every_route_with_every_credential(
    gateway: str, relay_url: str, jobs: tuple[str, str], callers: dict[str, dict[str, str]]
) -> None:
    mine, _ = jobs
    wrong: list[str] = []
    for route in routes(mine):
        for caller, who in callers.items():
            resp = call(route, who, gateway, relay_url)
            want = expected(caller, route[5], route[6], mine)
            got = resp.status_code
            ok = got not in (401, 403) if want is None else got == want
            if not ok:
                said = resp.text[:120] if got != 200 else ""
                wrong.append(
                    f"{' '.join(map(str, route[:4]))} as {caller}: {got} "
                    f"(want {want or 'let in'}) {said}"
                )
            if got == 401:
                assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), route
            for token in who.values():
                assert token not in resp.text if got != 200 or route[2] != "/links" else True
    assert not wrong, "\n".join(wrong)


def test_a_link_opens_its_job_and_no_other(
    gateway: str, jobs: tuple[str, str], callers: dict[str, dict[str, str]]
) -> None:
    mine, other = jobs
    link = callers["link"]["Authorization"].split()[1]
    status = f"{gateway}/function/status"
    assert requests.get(status, params={"id": mine, "link": link}, timeout=10).status_code == 200
    # Its short form too, as the page shows it.
    assert requests.get(status, params={"id": mine[:8], "link": link}, timeout=10).ok
    refused = requests.get(status, params={"id": other, "link": link}, timeout=10)
    assert refused.status_code == 403 and "another job" in refused.json()["error"]
    listing = requests.get(status, params={"link": link}, timeout=10)
    assert listing.status_code == 403 and "listing" in listing.json()["error"]


def test_the_link_route_mints_a_link_that_works_and_expires(
    gateway: str, relay_url: str, jobs: tuple[str, str], stack_env: dict[str, str]
) -> None:
    mine, _ = jobs
    minted = requests.post(
        f"{gateway}/function/split/links",
        params={"job": mine[:8], "ttl": "2"},
        headers=_bearer(stack_env["VTP_SUBMIT_TOKEN"]),
        timeout=10,
    )
    assert minted.status_code == 200, minted.text
    answer = minted.json()
    assert answer["job_id"] == mine and f"job={mine}" in answer["page"]
    assert stack_env["VTP_SUBMIT_TOKEN"] not in minted.text
    assert requests.get(answer["status"], timeout=10).status_code == 200
    api = f"{relay_url}api/jobs/{mine}"
    assert requests.get(api, headers=_bearer(answer["link"]), timeout=10).status_code == 200
    time.sleep(2.2)
    late = requests.get(answer["status"], timeout=10)
    assert late.status_code == 401 and "expired" in late.json()["error"]
    too_long = requests.post(
        f"{gateway}/function/split/links",
        params={"job": mine, "ttl": str(10**9)},
        headers=_bearer(stack_env["VTP_SUBMIT_TOKEN"]),
        timeout=10,
    )
    assert too_long.status_code == 400


def test_a_links_websocket_follows_its_job_only(
    relay_url: str, jobs: tuple[str, str], callers: dict[str, dict[str, str]]
) -> None:
    mine, other = jobs
    link = callers["link"]["Authorization"].split()[1]
    ws = relay_url.replace("http", "ws")

    async def opened(query: str) -> int:
        try:
            async with connect(f"{ws}ws?{query}", open_timeout=5) as sock:
                first = json.loads(await asyncio.wait_for(sock.recv(), 10))
                assert first["type"] == "snapshot" and set(first["jobs"]) == {mine}
                # Asking to follow every job, or another, is ignored: still only its own.
                await sock.send(json.dumps({"type": "follow", "job": "all"}))
                await sock.send(json.dumps({"type": "follow", "job": other}))
                try:
                    while True:
                        msg = json.loads(await asyncio.wait_for(sock.recv(), 1.5))
                        assert msg.get("type") == "ping" or set(msg.get("jobs") or {mine}) <= {
                            mine
                        }, msg
                        assert msg.get("job_id", mine) == mine, msg
                except TimeoutError:
                    pass
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(opened(f"job={mine}&link={link}")) == 101
    assert asyncio.run(opened(f"job=all&link={link}")) == 403
    assert asyncio.run(opened(f"job={other}&link={link}")) == 403
    assert asyncio.run(opened(f"job={mine}")) == 403


def test_the_page_session_holds_no_operate_and_the_address_token_is_refused(
    relay_url: str, stack_env: dict[str, str]
) -> None:
    signed = requests.post(
        f"{relay_url}api/session", headers=_bearer(stack_env["VTP_TOKEN"]), timeout=10
    )
    assert signed.status_code == 200, signed.text
    assert signed.json()["scopes"] == ["submit", "view"]
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert stack_env["VTP_TOKEN"] not in cookie
    jar = {access.SESSION_COOKIE: signed.cookies[access.SESSION_COOKIE]}
    me = requests.get(f"{relay_url}api/session", cookies=jar, timeout=10)
    assert me.json()["name"] == "operator" and me.json()["via"] == "session"
    assert requests.get(f"{relay_url}api/jobs", cookies=jar, timeout=10).status_code == 200
    refused = requests.post(
        f"{relay_url}api/session", params={"token": stack_env["VTP_TOKEN"]}, timeout=10
    )
    assert refused.status_code == 401


def test_credentials_never_reach_logs(
    stack: LocalConfig, gateway: str, callers: dict[str, dict[str, str]], jobs: tuple[str, str]
) -> None:
    """After every caller tried every route (the table runs first in this module), no
    function's log, nor the gateway's, holds a credential, a link or the link secret."""
    secrets = [stack.credentials[k] for k in ("view_token", "submit_token", "operate_token")]
    secrets.append(stack.credentials["link_secret"])
    for who in callers.values():
        for value in who.values():
            secrets.append(value.removeprefix("Bearer "))
    logs = list(Path(stack.logs_dir).rglob("*.log"))
    assert logs, "the stack must keep logs for this test to mean anything"
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{log.name} holds a credential"


# --- the rules themselves, in-process ---------------------------------------------------------


def _gate(**kw: Any) -> access.Gate:
    return access.Gate(Settings(**kw))


def test_a_deployment_without_credentials_is_closed_unless_said_open() -> None:
    closed = _gate()
    with pytest.raises(Forbidden, match="no credentials configured"):
        closed.authorize("status", "/", access.Presented())
    assert closed.warnings() and "refused" in closed.warnings()[0]
    opened = _gate(open_access=True)
    assert opened.authorize("split", "/jobs/delete", access.Presented()) is access.ANYONE
    assert "anyone" in opened.warnings()[0]
    # Credentials win over the open setting: a deployment cannot be half open by mistake.
    token = "t" * 30
    both = _gate(open_access=True, credentials=SecretStr(f"a view {token}"))
    with pytest.raises(Unauthorized):
        both.authorize("status", "/", access.Presented())


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a view short", "at least"),
        ("a watch " + "t" * 30, "scopes are"),
        ("a view", "expected"),
        (f"a view {'t' * 30}\na submit {'u' * 30}", "used twice"),
        (f"a view {'t' * 30}\nb submit {'t' * 30}", "token used twice"),
        ("bad/name view " + "t" * 30, "bad name"),
    ],
)
def test_malformed_credentials_stop_the_start_without_showing_a_token(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        access.parse_credentials(text)
    assert "t" * 30 not in str(info.value) and "u" * 30 not in str(info.value)


def test_the_legacy_read_token_only_views() -> None:
    gate = _gate(read_token=SecretStr("r" * 30))
    who = gate.authorize("status", "/", access.Presented(authorization="Bearer " + "r" * 30))
    assert who.name == "read-token"
    with pytest.raises(Forbidden, match="operate"):
        gate.authorize(
            "split", "/jobs/delete", access.Presented(authorization="Bearer " + "r" * 30)
        )


def test_a_route_missing_from_the_table_needs_operate() -> None:
    assert access.required("status", "/something-new") is access.Scope.OPERATE
    assert access.required("ws-relay", "/api/jobs/abc") is access.Scope.VIEW
    assert access.required("ws-relay", "/static/app.js") is None


def test_links_resist_tampering() -> None:
    secret = SecretStr("s" * 32)
    token = links.mint(secret, "job-1", time.time() + 60)
    body, sig = token.rsplit(".", 1)
    claims = json.loads(links._unb64(body.split(".")[1]))
    claims["j"] = "job-2"
    altered = f"vtp1.{links._b64(json.dumps(claims).encode())}.{sig}"
    for bad, why in (
        (altered, "does not match"),
        (token[:-2], "does not match|malformed"),
        ("vtp1.e30.", "does not match|malformed"),
        ("vtp1.!!!.???", "malformed|does not match"),
    ):
        with pytest.raises(Unauthorized, match=why):
            links.verify(secret, bad)
    assert links.verify(secret, token).job == "job-1"
