"""Contract tests for template/python3-http-ffmpeg.

Each server here is a build context assembled the way faas-cli assembles it, started through
the template's own entry point (`python index.py`) on a free port, exactly as the local
runtime starts functions; requests go to it over real HTTP.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from localfaas.build import assemble_context
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template" / "python3-http-ffmpeg"
FIXTURES = REPO / "tests" / "fixtures" / "functions"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    stderr_path: Path
    context: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_stderr(self, needle: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr()
            if needle in text:
                return text
            time.sleep(0.05)
        return self.stderr()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def build(
    tmp: Path,
    handler_dir: Path,
    copy_paths: list[Path] | None = None,
    scope: Path | None = None,
) -> Path:
    return assemble_context(
        TEMPLATE, handler_dir, copy_paths or [], tmp / "build", scope=scope or tmp
    )


def start(context: Path, tmp: Path, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "UPSTREAM_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOSTNAME": "template-test-host",
        **(env or {}),
    }
    stderr_path = tmp / f"server-{port}.stderr"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "index.py"],
            cwd=context,
            env=full_env,
            stdout=err,
            stderr=err,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", stderr_path, context)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"index.py exited with {proc.returncode}:\n{server.stderr()}")
        try:
            if requests.get(f"{server.url}/_/health", timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    server.stop()
    pytest.fail(f"index.py did not become healthy:\n{server.stderr()}")


# A handler exercising the whole contract, chosen by path.
CONTRACT_HANDLER = textwrap.dedent(
    '''
    """Contract test handler."""
    import time

    import vtp


    def handle(event, context):
        p = event.path
        if p == "/dict":
            return {"statusCode": 200, "body": {"a": 1, "nested": {"b": [1, 2]}}}
        if p == "/bare-dict":
            return {"a": 1, "text": "héllo"}
        if p == "/list":
            return [1, "two", {"three": 3}]
        if p == "/envelope-list":
            return {"statusCode": 202, "body": [1, 2]}
        if p == "/bytes":
            return bytes(range(256)) * 3 + b"\\r\\n\\x00"
        if p == "/bytes-typed":
            return {"body": b"\\x89PNG\\r\\n", "headers": {"Content-Type": "image/png"}}
        if p == "/str":
            return "héllo ✓"
        if p == "/str-typed":
            return {"body": "a,b\\n1,2\\n", "headers": {"content-type": "text/csv"}}
        if p == "/none":
            return None
        if p == "/no-content":
            return {"statusCode": 204, "body": None}
        if p == "/status":
            return {
                "statusCode": 418,
                "body": {"teapot": True},
                "headers": {"X-Custom": "yes", "Set-Cookie": ["a=1", "b=2"]},
            }
        if p == "/bad-status":
            return {"statusCode": "two hundred", "body": "x"}
        if p == "/unencodable":
            return {"body": {"when": object()}}
        if p == "/boom":
            raise RuntimeError("kaboom from the contract handler")
        if p == "/vtp":
            return {"marker": vtp.MARKER, "file": vtp.__file__}
        if p == "/sleep":
            time.sleep(float(event.query.get("s", "0.5")))
            return {"slept": True}
        return {
            "method": event.method,
            "path": event.path,
            "query": {k: event.query.getlist(k) for k in event.query},
            "call_id": event.headers.get("x-call-id"),
            "content_length": event.headers.get("Content-Length"),
            "transfer_encoding": event.headers.get("Transfer-Encoding"),
            "body_len": len(event.body),
            "body_head": event.body[:32].decode("latin-1"),
            "hostname": context.hostname,
        }
    '''
)

MAX_BODY = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("contract")
    handler_dir = tmp / "handler"
    handler_dir.mkdir()
    (handler_dir / "handler.py").write_text(CONTRACT_HANDLER)
    (handler_dir / "requirements.txt").write_text("")
    fake_vtp = tmp / "vtp"
    fake_vtp.mkdir()
    (fake_vtp / "__init__.py").write_text('MARKER = "fake vtp copied in"\n')
    context = build(tmp, handler_dir, [Path("./vtp")])
    server = start(
        context,
        tmp,
        {"WAITRESS_THREADS": "4", "MAX_REQUEST_BODY_BYTES": str(MAX_BODY)},
    )
    yield server
    server.stop()


# --- return values ------------------------------------------------------------------------


def test_envelope_dict_body_is_json(contract: Server) -> None:
    r = requests.get(f"{contract.url}/dict", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"a": 1, "nested": {"b": [1, 2]}}


def test_bare_dict_is_a_json_body(contract: Server) -> None:
    r = requests.get(f"{contract.url}/bare-dict", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"a": 1, "text": "héllo"}


@pytest.mark.parametrize(
    ("path", "status", "expected"),
    [("/list", 200, [1, "two", {"three": 3}]), ("/envelope-list", 202, [1, 2])],
)
def test_list_body_is_json(contract: Server, path: str, status: int, expected: object) -> None:
    r = requests.get(f"{contract.url}{path}", timeout=5)
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == expected


def test_bytes_pass_through_byte_exact(contract: Server) -> None:
    r = requests.get(f"{contract.url}/bytes", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.content == bytes(range(256)) * 3 + b"\r\n\x00"
    assert r.headers["Content-Length"] == str(len(r.content))


def test_bytes_keep_the_handlers_content_type(contract: Server) -> None:
    r = requests.get(f"{contract.url}/bytes-typed", timeout=5)
    assert r.headers["Content-Type"] == "image/png"
    assert r.content == b"\x89PNG\r\n"


def test_str_is_utf8_text(contract: Server) -> None:
    r = requests.get(f"{contract.url}/str", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.content == "héllo ✓".encode()


def test_str_keeps_the_handlers_content_type_case_insensitively(contract: Server) -> None:
    r = requests.get(f"{contract.url}/str-typed", timeout=5)
    assert r.headers["Content-Type"] == "text/csv"
    assert r.raw.headers.getlist("Content-Type") == ["text/csv"]
    assert r.text == "a,b\n1,2\n"


def test_none_is_an_empty_body_without_content_type(contract: Server) -> None:
    r = requests.get(f"{contract.url}/none", timeout=5)
    assert r.status_code == 200
    assert r.content == b""
    assert "Content-Type" not in r.headers
    r = requests.get(f"{contract.url}/no-content", timeout=5)
    assert r.status_code == 204
    assert r.content == b""


def test_custom_status_and_headers(contract: Server) -> None:
    r = requests.get(f"{contract.url}/status", timeout=5)
    assert r.status_code == 418
    assert r.headers["X-Custom"] == "yes"
    assert r.json() == {"teapot": True}
    # Two Set-Cookie headers, one per list item (urllib3 joins repeated headers with ", ").
    assert r.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]


# --- errors -------------------------------------------------------------------------------


def test_handler_exception_is_json_500_with_traceback_in_stderr(contract: Server) -> None:
    r = requests.post(f"{contract.url}/boom", headers={"X-Call-Id": "call-123"}, timeout=5)
    assert r.status_code == 500
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": "internal error", "call_id": "call-123"}
    log = contract.wait_for_stderr("kaboom from the contract handler")
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: kaboom from the contract handler" in log
    assert "call_id=call-123" in log


def test_handler_exception_without_call_id(contract: Server) -> None:
    r = requests.get(f"{contract.url}/boom", timeout=5)
    assert r.status_code == 500
    assert r.json() == {"error": "internal error", "call_id": None}


@pytest.mark.parametrize("path", ["/bad-status", "/unencodable"])
def test_bad_return_values_are_json_500(contract: Server, path: str) -> None:
    r = requests.get(f"{contract.url}{path}", headers={"X-Call-Id": "bad"}, timeout=5)
    assert r.status_code == 500
    assert r.json() == {"error": "internal error", "call_id": "bad"}
    assert "<html" not in r.text.lower()


def test_unknown_method_is_json_405(contract: Server) -> None:
    r = requests.request("BREW", f"{contract.url}/coffee", headers={"X-Call-Id": "m1"}, timeout=5)
    assert r.status_code == 405
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": "method not allowed", "call_id": "m1"}
    allowed = {m.strip() for m in r.headers["Allow"].split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= allowed


def test_health_routes_are_reserved(contract: Server) -> None:
    for path in ("/_/health", "/_/ready"):
        for method in ("GET", "POST"):
            r = requests.request(method, f"{contract.url}{path}", timeout=5)
            assert (r.status_code, r.text) == (200, "OK")
        r = requests.request("BREW", f"{contract.url}{path}", timeout=5)
        assert r.status_code == 405
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["error"] == "method not allowed"


# --- requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_reaches_the_handler(contract: Server, method: str) -> None:
    r = requests.request(method, f"{contract.url}/any/deep/path", data=b"xyz", timeout=5)
    assert r.status_code == 200
    got = r.json()
    assert got["method"] == method
    assert got["path"] == "/any/deep/path"
    assert got["body_len"] == 3


def test_head_reaches_the_handler_without_a_body(contract: Server) -> None:
    r = requests.head(f"{contract.url}/anything", timeout=5)
    assert r.status_code == 200
    assert r.content == b""


def test_root_path_and_double_slashes_reach_the_handler(contract: Server) -> None:
    assert requests.get(f"{contract.url}/", timeout=5).json()["path"] == "/"
    r = requests.get(f"{contract.url}/a//b", timeout=5, allow_redirects=False)
    assert r.status_code == 200
    assert r.json()["path"] == "/a//b"


def test_query_headers_and_context(contract: Server) -> None:
    r = requests.post(
        f"{contract.url}/q?a=1&a=2&b=x%20y",
        headers={"X-Call-Id": "abc"},
        data=b"payload",
        timeout=5,
    )
    got = r.json()
    assert got["query"] == {"a": ["1", "2"], "b": ["x y"]}
    assert got["call_id"] == "abc"  # looked up as x-call-id: headers are case-insensitive
    assert got["body_head"] == "payload"
    assert got["hostname"] == "template-test-host"


def test_chunked_request_body_is_read_in_full(contract: Server) -> None:
    chunk = bytes(range(256)) * 64  # 16 KiB
    n_chunks = 64  # 1 MiB in all, sent without Content-Length

    def body() -> Iterator[bytes]:
        for i in range(n_chunks):
            yield bytes([i]) + chunk[1:]

    r = requests.post(f"{contract.url}/chunked", data=body(), timeout=10)
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in r.request.headers
    assert r.status_code == 200
    got = r.json()
    assert got["body_len"] == len(chunk) * n_chunks
    assert got["body_head"] == (bytes([0]) + chunk[1:32]).decode("latin-1")


def test_chunked_request_body_reaches_handler_byte_exact(tmp_path: Path) -> None:
    handler_dir = tmp_path / "h"
    handler_dir.mkdir()
    (handler_dir / "handler.py").write_text("def handle(event, context):\n    return event.body\n")
    server = start(build(tmp_path, handler_dir), tmp_path)
    try:
        parts = [os.urandom(n) for n in (1, 7, 4096, 65536, 3, 100_000)]

        def body() -> Iterator[bytes]:
            yield from parts

        r = requests.post(f"{server.url}/", data=body(), timeout=10)
        assert r.request.headers["Transfer-Encoding"] == "chunked"
        assert r.status_code == 200
        assert r.content == b"".join(parts)
    finally:
        server.stop()


def test_body_over_the_limit_is_json_413(contract: Server) -> None:
    too_big = b"x" * (MAX_BODY + 1)
    r = requests.post(f"{contract.url}/big", data=too_big, headers={"X-Call-Id": "big"}, timeout=10)
    assert r.status_code == 413
    assert r.json() == {"error": "request entity too large", "call_id": "big"}

    def chunked() -> Iterator[bytes]:
        for _ in range(5):
            yield b"y" * (MAX_BODY // 4)

    r = requests.post(f"{contract.url}/big", data=chunked(), timeout=10)
    assert r.status_code == 413
    assert r.json()["error"] == "request entity too large"


def test_copied_vtp_is_importable_and_wins_over_installed_one(contract: Server) -> None:
    got = requests.get(f"{contract.url}/vtp", timeout=5).json()
    assert got["marker"] == "fake vtp copied in"
    assert Path(got["file"]).resolve() == (contract.context / "function/vtp/__init__.py").resolve()


def test_requests_run_concurrently_and_health_answers_while_busy(contract: Server) -> None:
    results: list[int] = []

    def call() -> None:
        results.append(requests.get(f"{contract.url}/sleep?s=1", timeout=10).status_code)

    threads = [threading.Thread(target=call) for _ in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert requests.get(f"{contract.url}/_/ready", timeout=2).status_code == 200
    for t in threads:
        t.join()
    assert results == [200, 200, 200]
    assert time.monotonic() - started < 2.5  # 3 x 1 s in parallel on 4 threads


# --- process lifecycle --------------------------------------------------------------------


def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    server = start(build(tmp_path, TEMPLATE / "function"), tmp_path)
    assert requests.get(f"{server.url}/_/ready", timeout=5).status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert "SIGTERM received" in server.stderr()


def test_default_handler_answers(tmp_path: Path) -> None:
    server = start(build(tmp_path, TEMPLATE / "function"), tmp_path)
    try:
        r = requests.post(f"{server.url}/hello", data=b"12345", timeout=5)
        assert r.status_code == 200
        got = r.json()
        assert got["method"] == "POST"
        assert got["bytes_received"] == 5
    finally:
        server.stop()


def test_broken_handler_fails_at_start(tmp_path: Path) -> None:
    handler_dir = tmp_path / "h"
    handler_dir.mkdir()
    (handler_dir / "handler.py").write_text("import not_a_module_anywhere\n")
    context = build(tmp_path, handler_dir)
    proc = subprocess.run(
        [sys.executable, "index.py"],
        cwd=context,
        env={"PATH": os.environ["PATH"], "UPSTREAM_PORT": str(free_port())},
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode != 0
    assert b"not_a_module_anywhere" in proc.stderr


# --- fixture functions --------------------------------------------------------------------


def fixture_server(tmp: Path, name: str, env: dict[str, str] | None = None) -> Server:
    return start(build(tmp, FIXTURES / name), tmp, env)


def test_fixture_stack_declares_every_fixture_function() -> None:
    stack = yaml.safe_load((REPO / "tests/fixtures/stack.yml").read_text())
    for name, spec in stack["functions"].items():
        assert spec["lang"] == "python3-http-ffmpeg"
        handler_dir = (REPO / "tests/fixtures" / spec["handler"]).resolve()
        assert (handler_dir / "handler.py").is_file(), name
        assert (handler_dir / "requirements.txt").is_file(), name
    assert set(stack["functions"]) == {p.name for p in FIXTURES.iterdir() if p.is_dir()}


def test_fixture_echo(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "fixture-secret").write_text("s3cr3t")
    server = fixture_server(
        tmp_path, "echo", {"FIXTURE_GREETING": "hi", "VTP_SECRETS_DIR": str(secrets)}
    )
    try:
        r = requests.put(
            f"{server.url}/p/q?x=1&x=2",
            data="body ✓".encode(),
            headers={"X-Call-Id": "e"},
            timeout=5,
        )
        got = r.json()
        assert r.status_code == 200
        assert got["method"] == "PUT"
        assert got["path"] == "/p/q"
        assert got["query"] == {"x": "1"}
        assert got["query_lists"] == {"x": ["1", "2"]}
        assert got["headers"]["X-Call-Id"] == "e"
        assert got["body"] == "body ✓"
        assert got["greeting"] == "hi"
        assert got["secret"] == "s3cr3t"
    finally:
        server.stop()


def test_fixture_shapes(tmp_path: Path) -> None:
    server = fixture_server(tmp_path, "shapes")
    try:

        def get(shape: str, **extra: str) -> requests.Response:
            return requests.get(server.url, params={"shape": shape, **extra}, timeout=5)

        assert get("dict").json() == {"shape": "dict", "n": 1}
        assert get("list").json() == [1, "two", {"three": 3}]
        r = get("bytes")
        assert r.content == bytes(range(256)) * 4
        assert r.headers["Content-Type"] == "application/octet-stream"
        r = get("str")
        assert r.text == "plain text, not JSON: héllo ✓\n"
        assert r.headers["Content-Type"].startswith("text/plain")
        r = get("none")
        assert (r.status_code, r.content) == (200, b"")
        r = get("status")
        assert (r.status_code, r.headers["X-Shape"]) == (201, "status")
        assert r.json() == {"shape": "status", "code": 201}
        assert get("status", code="299").status_code == 299
        assert get("nonsense").status_code == 400
    finally:
        server.stop()


def test_fixture_boom(tmp_path: Path) -> None:
    server = fixture_server(tmp_path, "boom")
    try:
        r = requests.post(server.url, headers={"X-Call-Id": "b"}, timeout=5)
        assert r.status_code == 500
        assert r.json() == {"error": "internal error", "call_id": "b"}
        assert "FixtureBoomError" in server.wait_for_stderr("FixtureBoomError")
    finally:
        server.stop()


def test_fixture_sleepy(tmp_path: Path) -> None:
    server = fixture_server(tmp_path, "sleepy")
    try:
        started = time.monotonic()
        r = requests.post(f"{server.url}?seconds=0.3", headers={"X-Call-Id": "zz"}, timeout=5)
        assert time.monotonic() - started >= 0.3
        got = r.json()
        assert (got["slept"], got["call_id"], got["pid"]) == (0.3, "zz", server.proc.pid)
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{server.url}?die=1", timeout=5)
        assert server.proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        server.stop()


def test_fixture_cron_tick(tmp_path: Path) -> None:
    tick_file = tmp_path / "ticks" / "tick.log"
    server = fixture_server(tmp_path, "cron-tick", {"FIXTURE_TICK_FILE": str(tick_file)})
    try:
        for _ in range(2):
            assert requests.post(server.url, timeout=5).status_code == 200
        lines = tick_file.read_text().splitlines()
        assert len(lines) == 2
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", ln) for ln in lines)
    finally:
        server.stop()


# --- static checks ------------------------------------------------------------------------


def test_template_yml_parses() -> None:
    data = yaml.safe_load((TEMPLATE / "template.yml").read_text())
    assert data["language"] == "python3-http-ffmpeg"
    assert data["fprocess"] == "python index.py"
    assert data["welcome_message"].strip()
    for path in ("index.py", "requirements.txt", "Dockerfile", "function/__init__.py"):
        assert (TEMPLATE / path).is_file(), path
    assert (TEMPLATE / "function/handler.py").is_file()
    assert (TEMPLATE / "function/requirements.txt").is_file()


def test_dockerfile_has_the_pieces() -> None:
    text = (TEMPLATE / "Dockerfile").read_text()
    # Join continuation lines so that multi-line instructions read as one.
    lines = [ln for ln in text.replace("\\\n", " ").splitlines() if not ln.lstrip().startswith("#")]
    body = "\n".join(lines)
    assert re.search(
        r"^FROM \S* ?ghcr\.io/openfaas/of-watchdog:0\.10\.\d+ AS watchdog$", body, re.M
    )
    assert "COPY --from=watchdog /fwatchdog /usr/bin/fwatchdog" in body
    assert "python:3.11-slim-bookworm" in body
    assert re.search(r"^ARG ADDITIONAL_PACKAGE", body, re.M)
    assert re.search(r"apt-get install .*\bffmpeg\b.*\$\{ADDITIONAL_PACKAGE\}", body)
    assert re.search(r"^ARG TEST_ENABLED=true$", body, re.M)
    assert "pytest" in body
    assert re.search(r"COPY --from=test ", body), "ship stage must depend on the test stage"
    assert re.search(r'mode="http"', body)
    assert re.search(r'upstream_url="http://127\.0\.0\.1:5000"', body)
    assert re.search(r'fprocess="python index\.py"', body)
    users = re.findall(r"^USER (\S+)$", body, re.M)
    assert users and users[-1] not in ("root", "0")
    ship = body[body.index("AS ship") :]
    assert re.search(r"^USER app$", ship, re.M)
    assert re.search(r"^HEALTHCHECK ", ship, re.M)
    assert re.search(r'^CMD \["fwatchdog"\]$', ship, re.M)
