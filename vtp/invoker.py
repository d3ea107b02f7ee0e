"""Calls other functions through the OpenFaaS gateway.

Asynchronous calls go through `/async-function/<name>`: the gateway answers 202 at once and
the queue-worker makes the call later, then POSTs the function's response to the
`X-Callback-Url`. The queue-worker never retries, so whoever receives the callback decides
whether to retry (see vtp/pipeline/dispatch.py).
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import requests
from pydantic import BaseModel

from vtp.errors import UpstreamError

log = logging.getLogger(__name__)


class Invoker:
    def __init__(self, gateway_url: str, session: requests.Session | None = None) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.session = session or requests.Session()

    def function_url(self, name: str, path: str = "", query: dict[str, str] | None = None) -> str:
        url = f"{self.gateway_url}/function/{name}{path}"
        return f"{url}?{urlencode(query)}" if query else url

    def invoke_async(
        self,
        function: str,
        payload: BaseModel,
        *,
        callback_url: str | None = None,
        call_id: str | None = None,
    ) -> str:
        """Queue a call; returns the X-Call-Id the gateway assigned (or kept)."""
        headers = {"Content-Type": "application/json"}
        if callback_url:
            headers["X-Callback-Url"] = callback_url
        if call_id:
            headers["X-Call-Id"] = call_id
        url = f"{self.gateway_url}/async-function/{function}"
        try:
            resp = self.session.post(
                url, data=payload.model_dump_json().encode(), headers=headers, timeout=15
            )
        except requests.RequestException as exc:
            raise UpstreamError(f"gateway unreachable for {function}: {exc}") from exc
        if resp.status_code != 202:
            raise UpstreamError(
                f"gateway refused async call to {function}: {resp.status_code} {resp.text[:200]}"
            )
        got = resp.headers.get("X-Call-Id", call_id or "")
        log.info("queued %s call_id=%s", function, got)
        return got
