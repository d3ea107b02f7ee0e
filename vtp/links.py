"""Tokens the deployment signs for itself: a viewer's link to one job, the page's session once
it was shown a credential, a private job's play URL.

A standing credential must never travel in a URL (URLs land in access logs, browser history
and Referer headers); these tokens may, because each names what it opens (one job, or the
scopes of the credential that asked for it), says until when, and cannot be changed without
the deployment's `vtp-link-secret`. Nothing is stored: revoking every token at once is
changing the secret.

    vtp1.<claims: base64url JSON>.<HMAC-SHA256 of "vtp1.<claims>": base64url>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from vtp.errors import Unauthorized

PREFIX = "vtp1"


class Claims(BaseModel):
    """What a signed token grants. `job` None means every job (a page session)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    job: str | None = Field(default=None, alias="j")
    scopes: tuple[str, ...] = Field(alias="s")
    # Who asked for it: a credential's name, shown in logs (never the credential).
    name: str = Field(alias="n", max_length=64)
    expires_at: int = Field(alias="e")  # seconds since the epoch
    kind: str = Field(default="link", alias="k", max_length=16)


def looks_signed(token: str) -> bool:
    """Whether `token` has the form of a signed token (credentials never start this way)."""
    return token.startswith(PREFIX + ".") and token.count(".") == 2


def mint(
    secret: SecretStr,
    job_id: str | None,
    expires_at: float,
    scope: str | Iterable[str] = "view",
    *,
    name: str = "link",
    kind: str = "link",
) -> str:
    scopes = (scope,) if isinstance(scope, str) else tuple(scope)
    claims = Claims.model_validate(
        {"j": job_id, "s": scopes, "n": name, "e": int(expires_at), "k": kind}
    )
    raw = json.dumps(claims.model_dump(by_alias=True), separators=(",", ":")).encode()
    body = f"{PREFIX}.{_b64(raw)}"
    return f"{body}.{_b64(_sign(secret, body))}"


def verify(
    secret: SecretStr, token: str, now: float | None = None, *, kind: str = "link"
) -> Claims:
    """The token's claims, or Unauthorized saying what is wrong with it. The signature is
    checked before anything in the claims is read, and compared in constant time."""
    if not looks_signed(token):
        raise Unauthorized(f"not a signed {kind} token")
    body, _, sig = token.rpartition(".")
    # Compared as text: base64 ignores a last character's spare bits, and a token must have
    # one spelling only (one that differs is not ours, even if it decodes the same).
    if not hmac.compare_digest(sig.encode(), _b64(_sign(secret, body)).encode()):
        raise Unauthorized(f"the {kind}'s signature does not match (altered, or not ours)")
    try:
        claims = Claims.model_validate_json(_unb64(body.split(".", 1)[1]))
    except (binascii.Error, ValueError, ValidationError) as exc:
        raise Unauthorized(f"the {kind}'s claims are malformed") from exc
    if claims.kind != kind:
        raise Unauthorized(f"a {claims.kind} token is not a {kind}")
    at = time.time() if now is None else now
    if claims.expires_at <= at:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims.expires_at))
        raise Unauthorized(f"the {kind} expired at {when}")
    return claims


def _sign(secret: SecretStr, body: str) -> bytes:
    return hmac.new(secret.get_secret_value().encode(), body.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
