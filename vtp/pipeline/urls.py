"""The URLs the pipeline hands out: public output URLs, and the signed callback URL of each
transcode call."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote
from uuid import UUID

from vtp.errors import Unauthorized
from vtp.invoker import Invoker
from vtp.settings import Settings


class Urls:
    def __init__(self, settings: Settings, invoker: Invoker) -> None:
        self.settings = settings
        self.invoker = invoker

    def output_url(self, job_id: UUID | str, path: str) -> str:
        """Public URL of an output: the outputs bucket is anonymously readable, because an HLS
        player fetches segments by relative URL, which a presigned master cannot cover."""
        base = self.settings.public_s3_endpoint.rstrip("/")
        return f"{base}/{self.settings.outputs_bucket}/{job_id}/{quote(path)}"

    def callback_url(self, job_id: UUID | str, rendition: str, call_id: str, chunk: int = 0) -> str:
        """split's route for the queue-worker's report on one transcode call. It is reachable
        by anyone who reaches the gateway, and the CE components log it (the queue-worker
        every message, of-watchdog every request line), so its signature covers the call it
        is about: a URL copied from a log can speak of that call only, never of another
        attempt, another chunk or another rendition (chunk 0, a rendition encoded whole, is
        left out of the URL and of what is signed, as before there were chunks)."""
        query = {"job": str(job_id), "rendition": rendition, "call": call_id}
        if chunk:
            query["chunk"] = str(chunk)
        sig = self._callback_signature(str(job_id), rendition, call_id, chunk)
        if sig:
            query["sig"] = sig
        return self.invoker.function_url("split", "/callback", query)

    def check_callback_signature(
        self, job_id: str, rendition: str, call_id: str | None, sig: str | None, chunk: int = 0
    ) -> None:
        expected = self._callback_signature(job_id, rendition, call_id, chunk)
        if expected and not hmac.compare_digest(expected, sig or ""):
            raise Unauthorized("rendition callback without a valid signature")

    def _callback_signature(
        self, job_id: str, rendition: str, call_id: str | None, chunk: int = 0
    ) -> str | None:
        secret = self.settings.callback_secret
        if secret is None or not secret.get_secret_value():
            return None
        # Without a call id: the URLs of calls queued before the call was signed too.
        tail = f":{call_id}" if call_id is not None else ""
        part = f"/{chunk}" if chunk else ""
        msg = f"rendition-callback:{job_id}:{rendition}{part}{tail}".encode()
        return hmac.new(secret.get_secret_value().encode(), msg, hashlib.sha256).hexdigest()
