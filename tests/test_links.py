"""Signed tokens (vtp.links): what they grant, and every way a changed or stale one is refused."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import SecretStr

from vtp import links
from vtp.errors import Unauthorized

SECRET = SecretStr("a-link-secret-of-this-deployment")
JOB = "0b6e4f6a-7c1d-4a53-9a2e-3f1f0c2d9e11"
NOW = 1_800_000_000.0


def test_a_token_grants_its_scope_on_its_job_until_it_expires() -> None:
    token = links.mint(SECRET, JOB, NOW + 60.9, kind="play")
    claims = links.verify(SECRET, token, NOW, kind="play")
    assert (claims.job, claims.kind, claims.expires_at) == (JOB, "play", int(NOW + 60))
    assert links.verify(SECRET, links.mint(SECRET, JOB, NOW + 5), NOW).scopes == ("view",)
    # A token of one kind is not another's: a play URL opens no page, a link plays nothing.
    with pytest.raises(Unauthorized, match="not a link"):
        links.verify(SECRET, token, NOW)
    # URL-safe as it is: no padding, nothing a path or query would need to escape.
    assert all(c.isalnum() or c in "-_." for c in token), token


@pytest.mark.parametrize("at", [NOW + 60, NOW + 61, NOW + 3600])
def test_an_expired_token_is_refused(at: float) -> None:
    token = links.mint(SECRET, JOB, NOW + 60, kind="play")
    with pytest.raises(Unauthorized, match="expired at"):
        links.verify(SECRET, token, at, kind="play")


def _claims_part(claims: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


def test_changed_claims_are_refused() -> None:
    token = links.mint(SECRET, JOB, NOW + 60)
    prefix, _, sig = token.split(".")
    longer = _claims_part({"j": JOB, "s": ["view"], "n": "link", "e": int(NOW) + 10**6})
    other = JOB.replace("0b6e", "1b6e")
    other_job = _claims_part({"j": other, "s": ["view"], "n": "link", "e": int(NOW) + 60})
    for forged in (f"{prefix}.{longer}.{sig}", f"{prefix}.{other_job}.{sig}"):
        with pytest.raises(Unauthorized, match="signature does not match"):
            links.verify(SECRET, forged, NOW)


def test_every_change_to_the_signature_is_refused() -> None:
    """Even the last character, whose low bits base64 does not use: the signature is
    compared as text, so no second spelling of it passes."""
    token = links.mint(SECRET, JOB, NOW + 60)
    head, sig = token.rsplit(".", 1)
    for i in range(len(sig)):
        for c in "AB-_":
            if sig[i] == c:
                continue
            changed = f"{head}.{sig[:i]}{c}{sig[i + 1 :]}"
            with pytest.raises(Unauthorized):
                links.verify(SECRET, changed, NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "vtp1",
        "vtp1..",
        "vtp2.e30.abc",
        "vtp1.e30.abc.def",
        "x" * 600,
        "vtp1.!!!.abc",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthorized):
        links.verify(SECRET, token, NOW)


def test_another_deployments_token_is_refused() -> None:
    token = links.mint(SecretStr("another-deployment"), JOB, NOW + 60)
    with pytest.raises(Unauthorized, match="signature does not match"):
        links.verify(SECRET, token, NOW)


def test_signed_but_malformed_claims_are_refused() -> None:
    """A body signed with the secret but not a Claims (only a holder of the secret could
    make one: the check after the signature still holds)."""
    body = f"vtp1.{_claims_part({'j': JOB, 's': 'play'})}"
    token = f"{body}.{links._b64(links._sign(SECRET, body))}"
    with pytest.raises(Unauthorized, match="malformed"):
        links.verify(SECRET, token, NOW)
