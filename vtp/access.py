"""Who may do what: scoped credentials, signed links, and the one table of routes and scopes.

OpenFaaS CE puts no authentication on `/function/*`: whoever reaches the gateway reaches
every function. So each function checks its callers itself, against one table (`ROUTES`):

- `view`: status, metrics, the page's data, the live streams;
- `submit`: manual jobs, dry runs, upload tickets, viewer links;
- `operate`: cancel, redrive, delete, callback redelivery.

Credentials live in the `vtp-credentials` secret, one per line, `<name> <scope,...> <token>`
(`#` starts a comment), so each can be revoked alone by deleting its line; they are compared
in constant time and only their names ever reach logs or answers. Credentials travel in the
`Authorization: Bearer` header only: one given in a URL (`?token=`) is refused, since URLs
land in access logs, browser history and Referer headers. What does travel in URLs is a token
the deployment signed (`vtp.links`): a viewer's link to one job, with an expiry.

With no credentials configured a deployment is closed, unless it sets `VTP_OPEN_ACCESS=true`
(warned about at start). The bucket notification keeps its own token (`vtp-webhook-token`),
and the queue-worker's callbacks their per-call signature: they are not in this table's
hands. The legacy `vtp-read-token` still works, as a credential named `read-token` with the
`view` scope only.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import SecretStr

from vtp import links
from vtp.errors import Forbidden, Unauthorized
from vtp.settings import Settings

log = logging.getLogger(__name__)

CHALLENGE = 'Bearer realm="vtp"'
LINK_PARAM = "link"
# Where the page's session (a signed token, see ws-relay's /api/session) is kept.
SESSION_COOKIE = "vtp_session"
MIN_TOKEN_LENGTH = 24


class Scope(StrEnum):
    VIEW = "view"
    SUBMIT = "submit"
    OPERATE = "operate"


# Every route of every function, and the scope it needs; None: the route checks its caller
# by other means (said beside it). A path ending in "/" covers what is below it.
ROUTES: dict[str, dict[str, Scope | None]] = {
    "split": {
        "/": Scope.SUBMIT,  # a manual job or dry run; a bucket notification has its own token
        "/callback": None,  # the queue-worker's report: signed per call (vtp.pipeline.urls)
        "/links": Scope.SUBMIT,  # a viewer's link to one job
        "/callbacks/redeliver": Scope.OPERATE,
        "/jobs/cancel": Scope.OPERATE,
        "/jobs/redrive": Scope.OPERATE,
        "/jobs/delete": Scope.OPERATE,
    },
    "status": {
        "/": Scope.VIEW,
        "/metrics": Scope.VIEW,
    },
    "ws-relay": {
        "/": None,  # the page: no job data in it
        "/static/": None,  # its scripts and styles
        "/api/relay/stats": None,  # connection counts, no job named
        "/api/session": None,  # takes a credential in its header, answers a session cookie
        "/play/": None,  # a private job's playback: the signed token in the path is the key
        "/ws": Scope.VIEW,
        "/events": Scope.VIEW,
        "/poll": Scope.VIEW,
        "/api/jobs": Scope.VIEW,
        "/api/jobs/": Scope.VIEW,
        "/api/uploads": Scope.SUBMIT,
        "/api/uploads/": Scope.SUBMIT,
    },
}


def required(function: str, path: str) -> Scope | None:
    """The scope `path` of `function` needs. A route missing from the table needs `operate`:
    a route added without a line here is closed, not open."""
    table = ROUTES[function]
    path = "/" + path.strip("/") if path.strip("/") else "/"
    if path in table:
        return table[path]
    for prefix, scope in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if prefix.endswith("/") and prefix != "/" and path.startswith(prefix):
            return scope
    return Scope.OPERATE


@dataclass(frozen=True)
class Credential:
    name: str
    scopes: frozenset[Scope]
    token: SecretStr


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_credentials(text: str) -> list[Credential]:
    """The `vtp-credentials` secret's lines. A malformed line stops the start (ValueError,
    naming the line, never its token): a credential silently ignored is a door left shut
    for its owner, or one thought shut that is not."""
    found: list[Credential] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"vtp-credentials line {number}: expected `<name> <scopes> <token>`")
        name, scopes_text, token = parts
        if not _NAME.match(name):
            raise ValueError(f"vtp-credentials line {number}: bad name {name[:64]!r}")
        try:
            scopes = frozenset(Scope(s) for s in scopes_text.split(",") if s)
        except ValueError as exc:
            raise ValueError(
                f"vtp-credentials line {number} ({name}): scopes are "
                f"{', '.join(s.value for s in Scope)}"
            ) from exc
        if not scopes:
            raise ValueError(f"vtp-credentials line {number} ({name}): no scope")
        if len(token) < MIN_TOKEN_LENGTH or links.looks_signed(token):
            raise ValueError(
                f"vtp-credentials line {number} ({name}): the token must be at least "
                f"{MIN_TOKEN_LENGTH} characters (e.g. `openssl rand -hex 32`)"
            )
        if any(c.name == name for c in found):
            raise ValueError(f"vtp-credentials line {number}: the name {name!r} is used twice")
        if any(hmac.compare_digest(c.token.get_secret_value(), token) for c in found):
            raise ValueError(f"vtp-credentials line {number} ({name}): a token used twice")
        found.append(Credential(name, scopes, SecretStr(token)))
    return found


@dataclass(frozen=True)
class Principal:
    """Who a request is: a credential's name and scopes, or a link's (then `job` is the one
    job it may see)."""

    name: str
    scopes: frozenset[Scope]
    job: str | None = None
    via: str = "credential"  # credential, link, session or open

    def sees(self, job_id: str | None) -> None:
        """Forbidden unless this principal may see `job_id` (None: every job, a listing)."""
        if self.job is None:
            return
        if job_id is None:
            raise Forbidden("a link opens one job; listing jobs needs a credential")
        if job_id != self.job:
            raise Forbidden("this link is for another job")


_SCOPE_NAMES = frozenset(s.value for s in Scope)
_LINK_SCOPES = frozenset({Scope.VIEW})
_SESSION_SCOPES = frozenset({Scope.VIEW, Scope.SUBMIT})
ANYONE = Principal("anyone", frozenset(Scope), via="open")


@dataclass(frozen=True)
class Presented:
    """What a request carries that may say who it is."""

    authorization: str | None = None
    query: Mapping[str, str] | None = None
    session: str | None = None  # the session cookie's value (ws-relay)


class Gate:
    """The deployment's access rules, built once from its settings."""

    def __init__(self, settings: Settings) -> None:
        creds = settings.credentials.get_secret_value() if settings.credentials else ""
        self.credentials = parse_credentials(creds)
        if settings.read_token is not None:
            self.credentials.append(
                Credential("read-token", frozenset({Scope.VIEW}), settings.read_token)
            )
        self.link_secret = settings.link_secret
        self.open = settings.open_access and not self.credentials

    @property
    def closed_without_credentials(self) -> bool:
        return not self.credentials and not self.open

    def warnings(self) -> list[str]:
        """What the start should say about this deployment's doors."""
        if self.open:
            return [
                "VTP_OPEN_ACCESS is set and no credentials are: anyone who reaches the gateway "
                "may submit, watch, cancel and delete jobs"
            ]
        if not self.credentials:
            return [
                "no credentials (vtp-credentials): every route but the bucket notification "
                "is refused; set credentials, or VTP_OPEN_ACCESS=true for an open deployment"
            ]
        return []

    def credential(self, token: str) -> Credential | None:
        """The credential whose token this is; every one is compared, so the time taken
        says nothing of which matched."""
        found = None
        for c in self.credentials:
            if hmac.compare_digest(c.token.get_secret_value().encode(), token.encode()):
                found = c
        return found

    def authenticate(self, presented: Presented) -> Principal | None:
        """Who the request is, or None if it carries nothing. Raises Unauthorized for what
        it carries but is wrong: an unknown credential, a bad or expired link, a credential
        in a URL."""
        query = presented.query or {}
        if "token" in query:
            raise Unauthorized(
                "a credential in a URL is refused (URLs land in logs, history and Referer "
                "headers): send it as Authorization: Bearer <token>, or open a signed link"
            )
        token = bearer(presented.authorization)
        if token is None and query.get(LINK_PARAM):
            token = query[LINK_PARAM]
            if not links.looks_signed(token):
                raise Unauthorized("?link= takes a signed link only (`vtp link JOB`)")
        if token is not None:
            if links.looks_signed(token):
                return self._signed(token, "link")
            cred = self.credential(token)
            if cred is None:
                raise Unauthorized("unknown credential")
            return Principal(cred.name, cred.scopes)
        if presented.session:
            return self._signed(presented.session, "session")
        return None

    def _signed(self, token: str, kind: str) -> Principal:
        if self.link_secret is None:
            raise Unauthorized(f"this deployment signs no {kind}s (no vtp-link-secret)")
        claims = links.verify(self.link_secret, token, kind=kind)
        # Whatever a token claims, a link only views and a session never operates: a token
        # is a thing to hand out, and what leaks must not be a way to delete.
        allowed = _LINK_SCOPES if kind == "link" else _SESSION_SCOPES
        scopes = frozenset(Scope(s) for s in claims.scopes if s in _SCOPE_NAMES) & allowed
        return Principal(claims.name, scopes, job=claims.job, via=kind)

    def authorize(self, function: str, path: str, presented: Presented) -> Principal:
        """The caller, if the route's scope allows it; else Unauthorized (401: nothing, or
        something wrong, presented) or Forbidden (403: known, but not allowed)."""
        scope = required(function, path)
        if scope is None or self.open:
            return ANYONE
        principal = self.authenticate(presented)
        if principal is None:
            if self.closed_without_credentials:
                raise Forbidden(
                    "this deployment has no credentials configured (vtp-credentials) and is "
                    "not open (VTP_OPEN_ACCESS): nothing but bucket notifications is accepted"
                )
            raise Unauthorized(
                f"{function} {path} needs a credential with the {scope} scope: "
                "send Authorization: Bearer <token>"
            )
        if scope not in principal.scopes:
            raise Forbidden(f"{principal.name!r} lacks the {scope} scope {path} needs")
        return principal


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
