"""Job callbacks: one signed POST to the job's callback URL when the job ends.

The receiver can check `X-VTP-Signature: sha256=<hex HMAC of the body>` with the shared
callback secret, and de-duplicate on `X-VTP-Delivery` (the job id: a job ends once, but a
delivery may be retried after a timeout whose request did arrive). Failures are retried a few
times with back-off, then recorded on the job; they never change the job's own state.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel

from vtp.errors import InvalidRequest

log = logging.getLogger(__name__)

USER_AGENT = "vtp-callback/1"


@dataclass(frozen=True)
class Delivery:
    ok: bool
    status: int | None
    attempts: int
    error: str | None


def shown_url(url: str) -> str:
    """A callback URL as status may show it: scheme, host and path. Its query string (where
    receivers put their own tokens) and any user:password are left out."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    hidden = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{hidden}"


def _scrubbed(text: str, url: str) -> str:
    """An error message about `url` without its secrets (requests quotes the URL's path and
    query): it is logged and recorded on the job, where status shows it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    for secret in (parts.query, parts.password):
        if secret:
            text = text.replace(secret, "…")
    return text


def check_destination(url: str, *, allow_private: bool) -> None:
    """Refuse callback URLs that point into the cluster unless that is allowed.

    A job's callback URL comes from whoever can invoke split; without this check it could
    make the pipeline POST to internal services (the database, the gateway's admin routes,
    cloud metadata endpoints). Checked when the job is accepted and again before delivery,
    since DNS answers can change in between.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            f"callback_url must be an http(s) URL with a host, got {parts.scheme or 'no'} scheme"
        )
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise InvalidRequest(f"callback_url host {parts.hostname!r} does not resolve") from exc
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not all(a.is_global for a in _addresses_behind(ip)):
            raise InvalidRequest(
                f"callback_url host {parts.hostname!r} resolves to the non-public address {ip}"
                " (set VTP_CALLBACK_ALLOW_PRIVATE_NETWORKS=true to allow it)"
            )


# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64, RFC 6052 and 8215):
# a gateway translates them to that IPv4 address, so that is what must be public.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _addresses_behind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Any]:
    """The address itself and every IPv4 address it leads to (IPv4-mapped, 6to4, Teredo,
    NAT64), each of which must be public for the callback to go out."""
    found: list[Any] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            found.append(ip.ipv4_mapped)
        if ip.sixtofour:
            found.append(ip.sixtofour)
        if ip.teredo:
            found.extend(ip.teredo)
        if any(ip in net for net in _NAT64):
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(
    url: str,
    payload: BaseModel,
    *,
    delivery_id: str,
    event: str,
    secret: str | None = None,
    session: requests.Session | None = None,
    attempts: int = 3,
    backoff: float = 1.0,
    timeout: float = 10.0,
) -> Delivery:
    """POST `payload` as JSON; 2xx is success, 4xx other than 408/429 is final."""
    body = payload.model_dump_json().encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-VTP-Event": event,
        "X-VTP-Delivery": delivery_id,
    }
    if secret:
        headers["X-VTP-Signature"] = sign(body, secret)
    http = session or requests.Session()
    status: int | None = None
    error: str | None = None
    for attempt in range(1, attempts + 1):
        try:
            resp = http.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
            status = resp.status_code
            if 200 <= status < 300:
                log.info("callback %s delivered to %s (%d)", delivery_id, shown_url(url), status)
                return Delivery(True, status, attempt, None)
            error = f"HTTP {status}"
            if 400 <= status < 500 and status not in (408, 429):
                break
        except requests.RequestException as exc:
            error = _scrubbed(f"{type(exc).__name__}: {exc}", url)
        log.warning(
            "callback %s to %s failed (attempt %d): %s", delivery_id, shown_url(url), attempt, error
        )
        if attempt < attempts:
            time.sleep(backoff * 4 ** (attempt - 1))
    return Delivery(False, status, attempts, error)
