"""Who the local S3 server answers, as S3 and MinIO decide it: a WSGI middleware in front of
moto's app (localfaas.s3server).

moto checks almost nothing by itself (moto 5.2, tried): it serves a presigned URL whose
signature is wrong or whose expiry has passed, takes any `Authorization` header, lists any
bucket to anyone and stores anonymous PUTs of new keys. It does refuse an anonymous GET of an
existing object unless the bucket's policy allows it, but not a GET of a missing one (404,
which tells that the key does not exist) nor a listing. The pipeline's private outputs
(vtp.privacy) rest on the store refusing whoever holds no signature, so here:

* a request signed with SigV4, in its `Authorization` header or in its query (a presigned
  URL), must carry a valid signature for the server's credentials (when it is given them:
  `--credentials`), and a presigned one must not have expired; SigV2 presigned URLs (boto3's
  default) likewise, by their `Signature` and `Expires`;
* an anonymous request may only GET or HEAD an object whose bucket policy allows
  `s3:GetObject` to everyone (`Principal: *`) on that object, and no Deny names it; anything
  else is 403 AccessDenied, as S3 answers it (a missing key included: 404 would tell that it
  does not exist). CORS preflights (OPTIONS) are never signed and pass, as on S3;
* `GET /minio/health/live` answers 200, as MinIO's liveness probe, for readiness checks that
  can no longer list buckets anonymously.

moto still decides everything else (what a signed request may do: any valid signature is the
root's here). Other services on the same port (moto's SQS, which the notifier reads) are
passed through: only S3's signatures are checked.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote

log = logging.getLogger("localfaas.s3access")

HEALTH_PATH = "/minio/health/live"
_V4 = "AWS4-HMAC-SHA256"
_READS = frozenset({"GET", "HEAD"})

StartResponse = Callable[..., Any]


def _error(code: str, message: str, status: str = "403 Forbidden") -> tuple[str, bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return status, body.encode()


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# --- the policy: may anyone read this object? ----------------------------------------------


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


def _to_everyone(principal: Any) -> bool:
    if principal == "*":
        return True
    return isinstance(principal, dict) and "*" in _listed(principal.get("AWS"))


def _names(statement: dict[str, Any], key: str, value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in _listed(statement.get(key)))


def anyone_may_read(policy: bytes | str | None, bucket: str, key: str) -> bool:
    """Whether `policy` lets an anonymous caller `s3:GetObject` s3://bucket/key: an Allow to
    everyone naming the action and the object, and no Deny to everyone naming them."""
    if not policy:
        return False
    try:
        doc = json.loads(policy)
    except ValueError:
        return False
    resource = f"arn:aws:s3:::{bucket}/{key}"
    allowed = False
    for st in doc.get("Statement") or []:
        if not isinstance(st, dict) or not _to_everyone(st.get("Principal")):
            continue
        if not (_names(st, "Action", "s3:GetObject") and _names(st, "Resource", resource)):
            continue
        if st.get("Effect") == "Deny":
            return False
        allowed = allowed or st.get("Effect") == "Allow"
    return allowed


# --- signatures ---------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _pairs(query: str) -> list[tuple[str, str]]:
    """The query's parameters, decoded as sent (`+` stays `+`, as S3 reads it)."""
    out = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.append((unquote(name), unquote(value)))
    return out


def _header(environ: dict[str, Any], name: str) -> str:
    if name in ("content-type", "content-length"):
        raw = environ.get(name.upper().replace("-", "_"), "")
    else:
        raw = environ.get("HTTP_" + name.upper().replace("-", "_"), "")
    return " ".join(str(raw).split())


def _v4_signature(
    environ: dict[str, Any],
    params: list[tuple[str, str]],
    signed_headers: str,
    amz_date: str,
    scope: str,
    payload: str,
    secret: str,
) -> str:
    # The path as the client sent it, which is what it signed (S3 does not normalise it).
    raw_path = str(environ.get("RAW_URI") or environ.get("PATH_INFO") or "/").split("?", 1)[0]
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in sorted(params)
        if k != "X-Amz-Signature"
    )
    headers = signed_headers.split(";")
    canonical = "\n".join(
        [
            environ["REQUEST_METHOD"],
            raw_path,
            canonical_query,
            "".join(f"{h}:{_header(environ, h)}\n" for h in headers),
            signed_headers,
            payload,
        ]
    )
    to_sign = "\n".join([_V4, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    date, region, service, _ = scope.split("/")
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _credential(credential: str, access_key: str) -> str:
    """The scope of a SigV4 credential (`<key>/<date>/<region>/<service>/aws4_request`)."""
    given, _, scope = credential.partition("/")
    if scope.count("/") != 3:
        raise Refused("AuthorizationQueryParametersError", "malformed credential")
    if not hmac.compare_digest(given, access_key):
        raise Refused("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist.")
    return scope


def _check_v4_header(environ: dict[str, Any], creds: tuple[str, str]) -> None:
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    fields: dict[str, str] = {}
    for item in auth.removeprefix(_V4).split(","):
        name, _, value = item.strip().partition("=")
        fields[name] = value
    scope = _credential(fields.get("Credential", ""), creds[0])
    if scope.split("/")[2] != "s3":
        return  # moto's other services (SQS) are not ours to check
    expected = _v4_signature(
        environ,
        _pairs(str(environ.get("QUERY_STRING", ""))),
        fields.get("SignedHeaders", ""),
        _header(environ, "x-amz-date"),
        scope,
        _header(environ, "x-amz-content-sha256") or "UNSIGNED-PAYLOAD",
        creds[1],
    )
    if not hmac.compare_digest(expected, fields.get("Signature", "")):
        raise Refused("SignatureDoesNotMatch", "The request signature we calculated does not match")


def _check_v4_query(
    environ: dict[str, Any], params: list[tuple[str, str]], creds: tuple[str, str] | None
) -> None:
    q = dict(params)
    try:
        signed_at = dt.datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        lifetime = int(q["X-Amz-Expires"])
    except (KeyError, ValueError) as exc:
        raise Refused("AuthorizationQueryParametersError", "malformed presigned URL") from exc
    if dt.datetime.now(dt.UTC) >= signed_at + dt.timedelta(seconds=lifetime):
        raise Refused("AccessDenied", "Request has expired")
    if creds is None:
        return
    scope = _credential(q.get("X-Amz-Credential", ""), creds[0])
    expected = _v4_signature(
        environ, params, q.get("X-Amz-SignedHeaders", "host"), q["X-Amz-Date"], scope,
        "UNSIGNED-PAYLOAD", creds[1],
    )  # fmt: skip
    if not hmac.compare_digest(expected, q.get("X-Amz-Signature", "")):
        raise Refused("SignatureDoesNotMatch", "The request signature we calculated does not match")


def _check_v2_query(
    environ: dict[str, Any], params: list[tuple[str, str]], creds: tuple[str, str] | None
) -> None:
    q = dict(params)
    try:
        expires = int(q["Expires"])
    except (KeyError, ValueError) as exc:
        raise Refused("AccessDenied", "Query-string authentication requires Expires") from exc
    if dt.datetime.now(dt.UTC).timestamp() >= expires:
        raise Refused("AccessDenied", "Request has expired")
    if creds is None:
        return
    if not hmac.compare_digest(q.get("AWSAccessKeyId", ""), creds[0]):
        raise Refused("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist.")
    raw_path = str(environ.get("RAW_URI") or environ.get("PATH_INFO") or "/").split("?", 1)[0]
    amz = "".join(
        f"{name}:{_header(environ, name)}\n"
        for name in sorted(
            k[5:].lower().replace("_", "-") for k in environ if k.startswith("HTTP_X_AMZ_")
        )
    )
    to_sign = (
        f"{environ['REQUEST_METHOD']}\n{_header(environ, 'content-md5')}\n"
        f"{_header(environ, 'content-type')}\n{expires}\n{amz}{raw_path}"
    )
    digest = hmac.new(creds[1].encode(), to_sign.encode(), hashlib.sha1).digest()
    if not hmac.compare_digest(base64.b64encode(digest).decode(), q.get("Signature", "")):
        raise Refused("SignatureDoesNotMatch", "The request signature we calculated does not match")


# --- the middleware -------------------------------------------------------------------------


class AccessRules:
    """WSGI middleware: refuse what S3 would refuse before moto sees it (see the module's
    docstring). `policy_of(bucket)` is the bucket's policy as moto holds it (None: no such
    bucket, or no policy); `credentials` the one key pair requests must be signed with, if
    known (without it signatures are not checked, only presigned URLs' expiry)."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        policy_of: Callable[[str], bytes | str | None],
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.app = app
        self.policy_of = policy_of
        self.credentials = credentials

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        path = str(environ.get("PATH_INFO", "/"))
        if path == HEALTH_PATH and environ.get("REQUEST_METHOD") in _READS:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
            return [b""]
        try:
            self.check(environ, path)
        except Refused as exc:
            # The path only: a presigned URL's query holds its signature.
            log.info("refused %s %s: %s", environ.get("REQUEST_METHOD"), path, exc.message)
            status, body = _error(exc.code, exc.message)
            headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
            if environ.get("HTTP_ORIGIN"):
                # As S3 with the local buckets' CORS rule (any origin): a browser's player
                # then sees the 403 itself, not a CORS failure in its place.
                headers.append(("Access-Control-Allow-Origin", "*"))
            start_response(status, headers)
            return [body]
        return self.app(environ, start_response)

    def check(self, environ: dict[str, Any], path: str) -> None:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        if method == "OPTIONS":
            # A CORS preflight, never signed (it may be sent to a presigned URL, whose
            # signature is for the request that follows): moto answers it from the bucket's
            # CORS rules.
            return
        bucket_only = "/" not in path.strip("/")
        form = str(environ.get("CONTENT_TYPE", "")).lower().startswith("multipart/form-data")
        if method == "POST" and form and bucket_only:
            # A browser's form upload: its signature is the POST policy's, checked with the
            # policy itself by localfaas.s3browser.PostPolicyGate, as S3 does.
            return
        auth = str(environ.get("HTTP_AUTHORIZATION", ""))
        params = _pairs(str(environ.get("QUERY_STRING", "")))
        names = {k for k, _ in params}
        if auth:
            if not auth.startswith(_V4):
                raise Refused("AccessDenied", "only AWS Signature Version 4 headers are accepted")
            if self.credentials is not None:
                _check_v4_header(environ, self.credentials)
            return
        if "X-Amz-Signature" in names or "X-Amz-Algorithm" in names:
            _check_v4_query(environ, params, self.credentials)
            return
        if "Signature" in names:
            _check_v2_query(environ, params, self.credentials)
            return
        bucket, _, key = path.lstrip("/").partition("/")
        if method in _READS and bucket and key:
            # WSGI hands the path over decoded, as latin-1: the key's own bytes.
            name = key.encode("latin-1").decode("utf-8", "surrogateescape")
            if anyone_may_read(self.policy_of(bucket), bucket, name):
                return
        raise Refused("AccessDenied", "Access Denied")
