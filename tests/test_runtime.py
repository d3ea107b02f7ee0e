"""The local runtime plays OpenFaaS CE: gateway routes, queue-worker, callbacks, cron.

Everything here goes through the real gateway, NATS JetStream and function processes of the
session stack, with the fixture functions of tests/fixtures/stack.yml.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from localfaas import procs
from localfaas.config import LocalConfig
from tests.receiver import Receiver


def test_healthz(gateway: str) -> None:
    r = requests.get(f"{gateway}/healthz", timeout=5)
    assert r.status_code == 200


def test_sync_invoke_like_faas_cli(gateway: str) -> None:
    # `faas-cli invoke echo --query a=1` posts stdin as text/plain to /function/echo.
    r = requests.post(
        f"{gateway}/function/echo",
        params={"a": "1"},
        data=b"hello\n",
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["method"] == "POST"
    assert seen["body"] == "hello\n"
    assert seen["query"] == {"a": "1"}
    assert seen["greeting"] == "hello from stack.yml"
    assert seen["secret"] == "s3cr3t-from-a-file"
    call_id = r.headers["X-Call-Id"]
    uuid.UUID(call_id)
    assert _header(seen["headers"], "X-Call-Id") == call_id
    assert int(r.headers["X-Start-Time"]) > 1_600_000_000 * 10**9  # nanoseconds
    assert float(r.headers["X-Duration-Seconds"]) >= 0


def test_sync_keeps_given_call_id_and_path(gateway: str) -> None:
    r = requests.get(
        f"{gateway}/function/echo.openfaas-fn/some/path",
        headers={"X-Call-Id": "given-id"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["X-Call-Id"] == "given-id"
    assert r.json()["path"] == "/some/path"
    assert r.json()["method"] == "GET"


def test_unknown_function_and_namespace_are_404(gateway: str) -> None:
    assert requests.post(f"{gateway}/function/nope", timeout=5).status_code == 404
    assert requests.post(f"{gateway}/function/echo.elsewhere", timeout=5).status_code == 404
    # The async route queues any name, as CE's does (tests/test_ce_contract.py follows it).
    assert requests.post(f"{gateway}/async-function/nope", timeout=5).status_code == 202


def test_template_shapes_through_gateway(gateway: str) -> None:
    r = requests.get(f"{gateway}/function/shapes", params={"shape": "list"}, timeout=10)
    assert r.headers["Content-Type"].startswith("application/json")
    assert isinstance(r.json(), list)
    r = requests.get(f"{gateway}/function/shapes", params={"shape": "bytes"}, timeout=10)
    assert r.content == bytes(range(256)) * 4
    r = requests.post(f"{gateway}/function/boom", timeout=10)
    assert r.status_code == 500
    assert r.json()["error"]


@pytest.mark.slow
def test_exec_timeout_gives_504(gateway: str) -> None:
    t0 = time.monotonic()
    r = requests.get(f"{gateway}/function/sleepy", params={"seconds": "10"}, timeout=30)
    assert r.status_code == 504
    assert time.monotonic() - t0 < 8  # sleepy's exec_timeout is 3s


def test_async_returns_202_and_calls_back(gateway: str) -> None:
    with Receiver() as rx:
        t0 = time.monotonic()
        r = requests.post(
            f"{gateway}/async-function/echo",
            data=b'{"x": 1}',
            headers={"X-Callback-Url": f"{rx.url}/done", "Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 202
        assert time.monotonic() - t0 < 2
        call_id = r.headers["X-Call-Id"]
        assert r.headers["X-Start-Time"]
        cb = rx.get(timeout=30)
    assert cb.method == "POST" and cb.path == "/done"
    assert cb.headers["X-Function-Status"] == "200"
    assert cb.headers["X-Function-Name"] == "echo"
    assert cb.headers["X-Call-Id"] == call_id
    assert float(cb.headers["X-Duration-Seconds"]) >= 0
    body = json.loads(cb.body)
    assert body["body"] == '{"x": 1}'
    assert _header(body["headers"], "X-Call-Id") == call_id
    assert _header(body["headers"], "X-Callback-Url") == f"{rx.url}/done"


def test_async_failure_reaches_callback_with_status(gateway: str) -> None:
    with Receiver() as rx:
        r = requests.post(
            f"{gateway}/async-function/boom",
            data=b"x",
            headers={"X-Callback-Url": rx.url, "X-Call-Id": "boom-call"},
            timeout=10,
        )
        assert r.status_code == 202 and r.content == b""
        # The CE gateway echoes X-Call-Id only when it made the id up itself.
        assert "X-Call-Id" not in r.headers
        cb = rx.get(timeout=30)
    assert cb.headers["X-Function-Status"] == "500"
    assert cb.headers["X-Call-Id"] == "boom-call"


def test_function_killed_mid_call_is_reported_not_hung(stack: LocalConfig) -> None:
    with Receiver() as rx:
        r = requests.post(
            f"{stack.gateway_url}/async-function/sleepy",
            params={"die": "1"},
            headers={"X-Callback-Url": rx.url},
            timeout=10,
        )
        assert r.status_code == 202
        cb = rx.get(timeout=30)
    status = int(cb.headers["X-Function-Status"])
    assert status >= 500
    assert cb.headers["X-Call-Id"] == r.headers["X-Call-Id"]
    # The process is gone; the supervisor restarts it, as an orchestrator restarts a container.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ok = requests.get(
            f"{stack.gateway_url}/function/sleepy", params={"seconds": "0"}, timeout=10
        )
        if ok.status_code == 200:
            break
        time.sleep(0.3)
    assert ok.status_code == 200, "the killed function was not restarted"
    assert procs.running(stack, "fn-sleepy") is not None


def test_async_payload_limit(gateway: str) -> None:
    r = requests.post(f"{gateway}/async-function/echo", data=b"x" * (1024 * 1024 + 1), timeout=10)
    assert r.status_code == 413


def test_system_routes_need_basic_auth(stack: LocalConfig) -> None:
    url = f"{stack.gateway_url}/system/functions"
    assert requests.get(url, timeout=5).status_code == 401
    c = stack.credentials
    r = requests.get(url, auth=(c["gateway_user"], c["gateway_password"]), timeout=5)
    assert r.status_code == 200
    by_name = {f["name"]: f for f in r.json()}
    assert {"echo", "split", "transcode-720p", "status"} <= set(by_name)
    assert by_name["cron-tick"]["annotations"]["topic"] == "cron-function"
    assert by_name["echo"]["namespace"] == "openfaas-fn"


def test_cron_function_is_invoked(stack: LocalConfig, tick_file: object) -> None:
    from pathlib import Path

    path = Path(str(tick_file))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"cron-tick was not invoked twice in 20s (file {path})")


def test_stack_env_has_every_setting(stack: LocalConfig) -> None:
    text = stack.stack_env_file.read_text()
    keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
    assert {
        "VTP_GATEWAY_URL",
        "VTP_S3_ENDPOINT",
        "VTP_S3_ACCESS_KEY",
        "VTP_S3_SECRET_KEY",
        "VTP_UPLOADS_BUCKET",
        "VTP_OUTPUTS_BUCKET",
        "VTP_REDIS_URL",
        "VTP_POSTGRES_DSN",
        "VTP_NATS_URL",
    } <= keys
    assert "VTP_S3_ENDPOINT=http://" in text


def _header(headers: dict[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def test_a_function_runs_as_replicas_the_gateway_spreads_calls_over(
    gateway: str, stack: LocalConfig
) -> None:
    """echo runs two replicas in the test stack (`function_replicas`): two processes on
    ports of their own, both answering through the gateway, which reports 2 replicas, as
    `kubectl scale` gives on Kubernetes; calls land on either, at random, as kube-proxy
    picks a Service's endpoint."""
    assert procs.running(stack, "fn-echo") is not None
    assert procs.running(stack, "fn-echo.1") is not None
    pids = {requests.post(f"{gateway}/function/echo", timeout=10).json()["pid"] for _ in range(40)}
    assert len(pids) == 2, pids  # 40 calls at random both ways: (1/2)^39 of missing one
    c = stack.credentials
    r = requests.get(
        f"{stack.gateway_url}/system/function/echo",
        auth=(c["gateway_user"], c["gateway_password"]),
        timeout=5,
    )
    assert r.status_code == 200 and r.json()["replicas"] == 2, r.text
