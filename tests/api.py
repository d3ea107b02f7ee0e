"""HTTP to the test stack as its operator: `http.get(...)` like `requests.get(...)`, with the
stack's `operate` credential (every scope, see localfaas's vtp-credentials) sent as a bearer
token to the stack's own gateway and functions, and to nothing else (not to the S3 server,
whose requests carry their own signatures, nor to a test's callback receiver).

The session stack (conftest.py) says which hosts are the stack's and which token to send
(`http.configure`). A call that sets its own Authorization header keeps it; a test that must
present nothing uses `requests` itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from localfaas.config import LocalConfig
from localfaas.registry import load_registry


class _StackBearer(AuthBase):
    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}  # host:port -> the operator token of its stack

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.tokens.get(urlsplit(r.url or "").netloc)
        if token and "Authorization" not in r.headers:
            r.headers["Authorization"] = f"Bearer {token}"
        return r


class StackSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.bearer = _StackBearer()
        self.auth = self.bearer
        self.token: str | None = None

    def configure(self, token: str, hosts: Iterable[str]) -> None:
        """The session stack: its token, sent to its hosts (and the default of headers_for)."""
        self.token = token
        self.add(token, hosts)

    def add(self, token: str, hosts: Iterable[str]) -> None:
        """Another stack a test started (test_restart, the 0.25.4 gateway): its own token."""
        self.bearer.tokens.update(dict.fromkeys(hosts, token))

    def add_stack(self, cfg: LocalConfig) -> None:
        hosts = {urlsplit(cfg.gateway_url).netloc}
        hosts |= {f"127.0.0.1:{e.port}" for e in load_registry(cfg).values()}
        self.add(cfg.credentials["operate_token"], hosts)

    def headers_for(self, token: str | None = None) -> dict[str, str]:
        """The header a client that cannot use this session (faas-cli, a WebSocket) sends."""
        chosen = token or self.token
        return {"Authorization": f"Bearer {chosen}"} if chosen else {}


http = StackSession()
