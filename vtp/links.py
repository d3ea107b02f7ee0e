"""Tokens the deployment signs for itself, which may travel in URLs: a private job's play URL
(`vtp_relay.play`) today, a viewer's link to one job tomorrow.

A standing credential must never be put in a URL (URLs land in access logs, browser history
and Referer headers). A signed token may, because it names what it opens (one job, one
scope), says until when, and cannot be changed without the deployment's `vtp-link-secret`.
Nothing is stored: changing the secret revokes every token at once.

    vtp1.<claims: base64url JSON>.<HMAC-SHA256 of "vtp1.<claims>": base64url>

The signature is checked before anything in the claims is read, and it is compared as text
in constant time: comparing the decoded bytes would accept other spellings of the same
signature (base64's unused low bits), so a changed token could still pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from vtp.errors import Unauthorized

PREFIX = "vtp1"
# Longer than any token this module makes (claims of one job id): refused before any work.
MAX_TOKEN_LENGTH = 512


class Claims(BaseModel):
    """What a token grants: `scope` on job `job`, until `expires_at` (seconds since the
    epoch). Short names on the wire keep URLs short."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    job: str = Field(alias="j", min_length=1, max_length=64)
    scope: str = Field(alias="s", min_length=1, max_length=32)
    expires_at: int = Field(alias="e", gt=0)


def mint(secret: SecretStr, job_id: str, expires_at: float, scope: str = "view") -> str:
    """A token granting `scope` on job `job_id` until `expires_at` (rounded down to a whole
    second, so it never lasts longer than asked)."""
    claims = Claims(j=job_id, s=scope, e=int(expires_at))
    raw = json.dumps(claims.model_dump(by_alias=True), separators=(",", ":")).encode()
    body = f"{PREFIX}.{_b64(raw)}"
    return f"{body}.{_signature(secret, body)}"


def verify(secret: SecretStr, token: str, now: float) -> Claims:
    """The token's claims if it is ours, unchanged and not expired at `now`; otherwise
    Unauthorized saying which (never quoting the token)."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2 or not token.startswith(PREFIX + "."):
        raise Unauthorized("not a signed token of this deployment")
    body, _, given = token.rpartition(".")
    if not hmac.compare_digest(given.encode(), _signature(secret, body).encode()):
        raise Unauthorized("the token's signature does not match (altered, or not ours)")
    try:
        claims = Claims.model_validate_json(_unb64(body.split(".", 1)[1]))
    except (binascii.Error, ValueError, ValidationError) as exc:
        raise Unauthorized("the token's claims are malformed") from exc
    if claims.expires_at <= now:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims.expires_at))
        raise Unauthorized(f"the token expired at {when}")
    return claims


def _signature(secret: SecretStr, body: str) -> str:
    digest = hmac.new(secret.get_secret_value().encode(), body.encode(), hashlib.sha256).digest()
    return _b64(digest)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
