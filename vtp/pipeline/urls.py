"""The URLs the pipeline hands out: output URLs (plain for a public job, signed play URLs for
a private one), and the signed callback URL of each transcode call."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote
from uuid import UUID

from vtp import links
from vtp.errors import Unauthorized
from vtp.invoker import Invoker
from vtp.jobs import Job
from vtp.settings import Settings

# ws-relay's play route (vtp_relay.play): `<gateway>/function/ws-relay/play/<token>/<job>/<path>`.
# The token's scope is "play" and nothing else accepts it, nor does the route take another's.
PLAY_FUNCTION = "ws-relay"
PLAY_ROUTE = "/play/"
PLAY_SCOPE = "play"


@dataclass(frozen=True)
class OutputUrls:
    """How clients reach one job's outputs: `<base>/<path>`, relative paths resolving as the
    playlists' do. `expires_at`: when a private job's play URLs stop working (None: never)."""

    base: str
    expires_at: datetime | None = None

    def url(self, path: str) -> str:
        return f"{self.base}/{quote(path)}"


class Urls:
    def __init__(self, settings: Settings, invoker: Invoker) -> None:
        self.settings = settings
        self.invoker = invoker

    def outputs(
        self, job: Job, *, play: bool = True, now: float | None = None
    ) -> OutputUrls | None:
        """Where clients read `job`'s outputs. A public job's are plain URLs in the outputs
        bucket, which is anonymously readable because an HLS player fetches segments by
        relative URL, which a presigned master cannot cover. A private job's are play URLs
        (vtp_relay.play) valid `play_url_ttl_seconds` from `now`, or None: when `play` is
        False (a callback, kept by its receiver long after any TTL, carries none) or the
        deployment signs nothing (no vtp-link-secret)."""
        if not job.private:
            base = self.settings.public_s3_endpoint.rstrip("/")
            return OutputUrls(f"{base}/{self.settings.outputs_bucket}/{job.id}")
        secret = self.settings.link_secret
        if not play or secret is None:
            return None
        expires = int((time.time() if now is None else now) + self.settings.play_url_ttl_seconds)
        token = links.mint(secret, str(job.id), expires, "view", name="play", kind=PLAY_SCOPE)
        route = f"/function/{PLAY_FUNCTION}{PLAY_ROUTE}"
        return OutputUrls(
            f"{self.settings.public_gateway}{route}{token}/{job.id}",
            expires_at=datetime.fromtimestamp(expires, UTC),
        )

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
