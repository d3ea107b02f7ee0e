"""Who may read jobs: the optional read token of status, ws-relay and the operator's routes.

A job listing says which files were uploaded, by key, and where their outputs are; a job's
page links its renditions. A deployment that keeps that to itself sets the `vtp-read-token`
secret, and then every read (status, ws-relay's streams and API, split's redeliver route)
must carry it. Without the secret, reads are open, as before.

The token travels as `Authorization: Bearer <token>` where the client can set headers (the
CLI, curl, the page's fetches), and as a `token` query parameter where it cannot: a browser's
WebSocket and EventSource, and a link to the page. Query strings reach access logs, so
localfaas redacts `token` (see `localfaas.redact`), and a real gateway's logs should be kept
as private as the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from pydantic import SecretStr

from vtp.errors import Unauthorized

QUERY_PARAM = "token"
CHALLENGE = 'Bearer realm="vtp"'


def presented(authorization: str | None, query: Mapping[str, str]) -> str | None:
    """The token a request carries: its bearer token, else its `token` query parameter."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query.get(QUERY_PARAM) or None


def allowed(expected: SecretStr | None, token: str | None) -> bool:
    """Whether a request carrying `token` may read (always, when no token is set)."""
    if expected is None:
        return True
    if token is None:
        return False
    return hmac.compare_digest(token.encode(), expected.get_secret_value().encode())


def require(
    expected: SecretStr | None, authorization: str | None, query: Mapping[str, str]
) -> None:
    """Raise Unauthorized unless the request may read."""
    token = presented(authorization, query)
    if allowed(expected, token):
        return
    if token is None:
        raise Unauthorized(
            "this deployment requires a read token: send Authorization: Bearer <token> "
            "(or ?token=<token>)"
        )
    raise Unauthorized("wrong read token")
