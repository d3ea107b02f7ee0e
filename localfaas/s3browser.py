"""What a browser's uploads meet at the local S3 server, as at MinIO: a POST policy (a
browser-form upload) is checked before moto sees the form, and answers to pages on other
origins carry the bucket's CORS headers.

moto (5.2.6, `S3Response._bucket_response_post`) stores whatever a form POST brings: it checks
neither the policy's signature, nor its expiry, nor a single condition (content-length-range,
the key, the Content-Type), and its answer has no CORS headers, so a page on another origin
cannot even read it. Measured before this module: a file one byte over the range, another
key, another type, an expired policy and a forged signature were all stored (204).
MinIO refuses each, so `PostPolicyGate` does what MinIO's PostPolicyBucketHandler does
(cmd/bucket-handlers.go, cmd/postpolicyform.go, cmd/signature-v4.go):

- the form is read up to the field named `file`, which comes last (MinIO ignores what follows;
  so does this); `key` must be among the fields before it;
- the signature (AWS Signature V4 over the base64 policy) is checked with the server's
  credentials: SignatureDoesNotMatch or InvalidAccessKeyId (403), a malformed credential (400);
- the policy is parsed strictly (`expiration` and `conditions` only, no key twice):
  PostPolicyInvalidKeyName (403) otherwise;
- then its expiry, each condition against the fields (`bucket` is the path's; names compare as
  Go's canonical header keys), and that every field sent is named by a condition: AccessDenied
  (403), "Invalid according to Policy: ...";
- the file is counted as it arrives: EntityTooLarge (400) past content-length-range's maximum
  or S3's 5 GiB (reading stops there), EntityTooSmall (400) under its minimum;
- only then does moto get the form, rebuilt from what was checked, and store it.

Nothing refused is stored. Without credentials (the server run by hand) signatures cannot be
checked and are not; everything else is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any
from xml.sax.saxutils import escape

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import (
    NEED_DATA,
    Data,
    Epilogue,
    File,
    MultipartDecoder,
)
from werkzeug.sansio.multipart import (
    Field as FormField,
)

log = logging.getLogger("localfaas.s3server")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# S3's largest single PUT or POST.
MAX_SINGLE_UPLOAD = 5 * 1024**3
# MinIO's bounds on the fields before the file: one value, and all of them together.
MAX_FIELD_BYTES = 1024**2
MAX_FORM_BYTES = 20 * 1024**2
MAX_PARTS = 1000
# What is still read of a refused request's body, so the client gets the answer rather than
# a reset connection (Go's server drains 256 KiB; a little more costs nothing locally).
DRAIN_BYTES = 4 * 1024**2
_CHUNK = 64 * 1024
_SPOOL_IN_MEMORY = 8 * 1024**2

# cmd/postpolicyform.go: conditions MinIO knows, and whether they may be `starts-with`.
STARTS_WITH_ALLOWED = {
    "$acl": True,
    "$bucket": False,
    "$cache-control": True,
    "$content-type": True,
    "$content-disposition": True,
    "$content-encoding": True,
    "$expires": True,
    "$key": True,
    "$success_action_redirect": True,
    "$redirect": True,
    "$success_action_status": True,
    "$x-amz-algorithm": False,
    "$x-amz-credential": False,
    "$x-amz-date": False,
    "$tagging": False,
}
# Fields that need no condition (keyInPolicyExceptions, canonical names).
NEED_NO_CONDITION = frozenset({"X-Amz-Signature", "File", "Policy"})
_SSE_FIELDS = frozenset(
    {
        "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id",
        "X-Amz-Server-Side-Encryption-Context",
        "X-Amz-Server-Side-Encryption-Customer-Algorithm",
        "X-Amz-Server-Side-Encryption-Customer-Key",
        "X-Amz-Server-Side-Encryption-Customer-Key-Md5",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BUCKET_PATH = re.compile(r"^/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/?$")


def canonical(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey, which MinIO applies to form field names:
    `x-amz-meta-foo` -> `X-Amz-Meta-Foo`; a name with a non-token byte stays as it is."""
    if not _TOKEN.match(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class S3Refusal(Exception):
    """An upload refused with S3's error `code` and HTTP `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _policy_failed(detail: str) -> S3Refusal:
    # errorCodes.ToAPIErrWithErr(ErrAccessDenied, err): the reason after MinIO's description.
    return S3Refusal(403, "AccessDenied", f"Access Denied. ({detail})")


# --- the policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    op: str  # "eq" or "starts-with"
    key: str  # "$key", lower-case
    value: str


@dataclass
class Policy:
    expiration: datetime
    conditions: list[Condition] = field(default_factory=list)
    length_range: tuple[int, int] | None = None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"input policy has multiple {key}, please fix your client code")
        seen[key] = value
    return seen


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("Invalid number format")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        return int(value)
    raise ValueError("Invalid number format")


def _expiration(text: Any) -> datetime:
    """Go's time.Parse(time.RFC3339Nano, ...): a zone is required."""
    if not isinstance(text, str) or not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text):
        raise ValueError(f"parsing time {text!r} as RFC 3339")
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"parsing time {text!r}: no time zone")
    return parsed


def parse_policy(document: bytes) -> Policy:
    """MinIO's parsePostPolicyForm: ValueError (with its words) for anything it refuses."""
    raw = json.loads(document, object_pairs_hook=_no_duplicates)
    if not isinstance(raw, dict):
        raise ValueError("the policy is not a JSON object")
    unknown = set(raw) - {"expiration", "conditions"}
    if unknown:
        raise ValueError(f'json: unknown field "{sorted(unknown)[0]}"')
    policy = Policy(expiration=_expiration(raw.get("expiration")))
    for cond in raw.get("conditions") or []:
        if isinstance(cond, dict):
            for name, value in cond.items():
                if not isinstance(value, str):
                    raise ValueError(f"Unknown type of conditional field value {cond}")
                policy.conditions.append(Condition("eq", "$" + name.lower(), value))
        elif isinstance(cond, list):
            if len(cond) != 3:
                raise ValueError(f"Malformed conditional fields {cond}")
            op = str(cond[0]).lower() if isinstance(cond[0], str) else ""
            if op in ("eq", "starts-with"):
                if not all(isinstance(v, str) for v in cond):
                    raise ValueError(f"Unknown type of conditional field value {cond}")
                key = cond[1].lower()
                if not key.startswith("$"):
                    raise ValueError(
                        f"Invalid according to Policy: Policy Condition failed: "
                        f"[{op}, {key}, {cond[2]}]"
                    )
                policy.conditions.append(Condition(op, key, cond[2]))
            elif op == "content-length-range":
                policy.length_range = (_integer(cond[1]), _integer(cond[2]))
            else:
                raise ValueError(f"Unknown type of conditional field value {cond}")
        else:
            raise ValueError(f"Unknown field {cond} found in POST policy form")
    return policy


def check_policy(form: dict[str, list[str]], policy: Policy, now: datetime) -> None:
    """MinIO's checkPostPolicy over the canonical form fields (`Bucket` included)."""
    if policy.expiration <= now:
        raise _policy_failed("Invalid according to Policy: Policy expired")
    must_find = {
        name: values
        for name, values in form.items()
        if name not in NEED_NO_CONDITION
        and name not in _SSE_FIELDS
        and not name.startswith("X-Ignore-")
    }
    for cond in policy.conditions:
        name = canonical(cond.key.removeprefix("$"))
        if len(must_find.get(name, [])) >= 2:
            raise _policy_failed(
                f"Invalid according to Policy: Policy Condition failed: [{cond.op}, "
                f"{cond.key}, {cond.value}]. FormValues have multiple values: "
                f"[{', '.join(must_find[name])}]"
            )
        got = (form.get(name) or [""])[0]
        if cond.key in STARTS_WITH_ALLOWED:
            if cond.op == "starts-with" and not STARTS_WITH_ALLOWED[cond.key]:
                raise _policy_failed("Invalid according to Policy: Policy Condition failed")
            if not _holds(cond.op, got, cond.value):
                raise _policy_failed("Invalid according to Policy: Policy Condition failed")
        elif cond.key.startswith("$x-amz-") and not _holds(cond.op, got, cond.value):
            raise _policy_failed(
                f"Invalid according to Policy: Policy Condition failed: "
                f"[{cond.op}, {cond.key}, {cond.value}]"
            )
        must_find.pop(name, None)
    if must_find:
        raise _policy_failed(
            "Each form field that you specify in a form must appear in the list of policy "
            f'conditions. "{", ".join(sorted(must_find))}" not specified in the policy.'
        )


def _holds(op: str, value: str, wanted: str) -> bool:
    if op == "eq":
        return value == wanted
    if op == "starts-with":
        return value.startswith(wanted)
    return False


# --- the signature ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def check_signature(form: dict[str, list[str]], creds: Credentials) -> None:
    """MinIO's doesPolicySignatureV4Match (its parseCredentialHeader's errors included)."""
    credential = (form.get("X-Amz-Credential") or [""])[0].strip()
    if not credential:
        raise S3Refusal(400, "MissingFields", "Missing fields in request.")
    parts = credential.rstrip("/").split("/")
    if len(parts) < 5:
        raise S3Refusal(
            400,
            "AuthorizationQueryParametersError",
            "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
            'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".',
        )
    access_key = "/".join(parts[:-4])
    date, region, service, terminal = parts[-4:]
    if access_key != creds.access_key:
        raise S3Refusal(
            403,
            "InvalidAccessKeyId",
            "The Access Key Id you provided does not exist in our records.",
        )
    if not re.fullmatch(r"\d{8}", date):
        raise S3Refusal(
            400,
            "AuthorizationQueryParametersError",
            "Error parsing the X-Amz-Credential parameter; incorrect date format.",
        )
    if service != "s3":
        raise S3Refusal(
            400,
            "AuthorizationParametersError",
            "Error parsing the Credential/X-Amz-Credential parameter; incorrect service. "
            'This endpoint belongs to "s3".',
        )
    if terminal != "aws4_request":
        raise S3Refusal(
            400,
            "AuthorizationQueryParametersError",
            "Error parsing the X-Amz-Credential parameter; incorrect terminal. "
            'This endpoint uses "aws4_request".',
        )
    key = _hmac(("AWS4" + creds.secret_key).encode(), date)
    for scope in (region, service, terminal):
        key = _hmac(key, scope)
    expected = hmac.new(key, (form.get("Policy") or [""])[0].encode(), hashlib.sha256).hexdigest()
    given = (form.get("X-Amz-Signature") or [""])[0]
    if not hmac.compare_digest(expected, given):
        raise S3Refusal(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
        )


# --- the form, as it arrives ---------------------------------------------------------------


def _read(stream: IO[bytes], length: int) -> Iterator[bytes]:
    left = length
    while left > 0:
        chunk = stream.read(min(_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


@dataclass
class CheckedUpload:
    """A form that passed: its fields (canonical names, in order), the object key, and the
    file's bytes spooled (`size` of them)."""

    fields: list[tuple[str, str]]
    key: str
    filename: str
    file_type: str
    body: IO[bytes]
    size: int


class FormReader:
    """Reads one POST form from the request body, checking as MinIO does before it stores."""

    def __init__(self, bucket: str, creds: Credentials | None) -> None:
        self.bucket = bucket
        self.creds = creds

    def read(self, chunks: Iterator[bytes], boundary: bytes) -> CheckedUpload:
        decoder = MultipartDecoder(boundary, max_parts=MAX_PARTS)
        fields: list[tuple[str, str]] = []
        name: str | None = None
        value = bytearray()
        form_bytes = 0
        upload: CheckedUpload | None = None
        limit = MAX_SINGLE_UPLOAD
        minimum = 0
        try:
            for chunk in self._with_end(chunks):
                decoder.receive_data(chunk)
                while (event := decoder.next_event()) is not NEED_DATA:
                    if isinstance(event, File | FormField) and event.name == "file":
                        filename = event.filename if isinstance(event, File) else ""
                        file_type = event.headers.get("Content-Type", "application/octet-stream")
                        upload, limit, minimum = self._admit(fields, filename, file_type)
                    elif isinstance(event, FormField):
                        name, value = event.name, bytearray()
                    elif isinstance(event, Data) and upload is not None:
                        upload.size += len(event.data)
                        if upload.size > limit:
                            raise S3Refusal(
                                400,
                                "EntityTooLarge",
                                "Your proposed upload exceeds the maximum allowed object size.",
                            )
                        upload.body.write(event.data)
                        if not event.more_data:
                            return self._finish(upload, minimum)
                    elif isinstance(event, Data) and name is not None:
                        value += event.data
                        form_bytes += len(event.data)
                        if len(value) > MAX_FIELD_BYTES or form_bytes > MAX_FORM_BYTES:
                            raise _malformed("multipart: message too large")
                        if not event.more_data:
                            fields.append((name, value.decode("utf-8", "replace")))
                            name = None
                    elif isinstance(event, Epilogue):
                        break
        except ValueError as exc:  # the decoder's: not multipart, too many parts
            raise _malformed(str(exc)) from exc
        if upload is not None:  # the body ended inside the file
            raise _malformed("unexpected EOF")
        raise _malformed("The file or text content is missing")

    @staticmethod
    def _with_end(chunks: Iterator[bytes]) -> Iterator[bytes | None]:
        yield from chunks
        yield None

    def _admit(
        self, raw_fields: list[tuple[str, str]], filename: str, file_type: str
    ) -> tuple[CheckedUpload, int, int]:
        """Every check MinIO makes before it stores the file's first byte."""
        form: dict[str, list[str]] = {}
        for name, value in raw_fields:
            form.setdefault(canonical(name), []).append(value)
        if "Key" not in form:
            raise _malformed("The name of the uploaded key is missing")
        form["Bucket"] = [self.bucket]
        key = form["Key"][0]
        if "${filename}" in key and filename:
            key = key.replace("${filename}", filename)
            form["Key"] = [key]
        if self.creds is not None:
            check_signature(form, self.creds)
        try:
            document = base64.b64decode((form.get("Policy") or [""])[0], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _malformed("the policy is not base64") from exc
        limit, minimum = MAX_SINGLE_UPLOAD, 0
        if document:
            try:
                policy = parse_policy(document)
            except ValueError as exc:
                raise S3Refusal(
                    403,
                    "PostPolicyInvalidKeyName",
                    f"Invalid according to Policy: Policy Condition failed '({exc})'",
                ) from exc
            check_policy(form, policy, datetime.now(UTC))
            if policy.length_range is not None:
                minimum = policy.length_range[0]
                limit = min(limit, policy.length_range[1])
        kept = [(n, v) for n, v in raw_fields if canonical(n) != "Key"]
        body = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        upload = CheckedUpload(
            fields=kept,
            key=key.lstrip("/"),
            filename=filename or key,
            file_type=file_type,
            body=body,
            size=0,
        )
        return upload, limit, minimum

    @staticmethod
    def _finish(upload: CheckedUpload, minimum: int) -> CheckedUpload:
        if upload.size < minimum:
            raise S3Refusal(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
            )
        return upload


def _malformed(detail: str) -> S3Refusal:
    return S3Refusal(
        400,
        "MalformedPOSTRequest",
        f"The body of your POST request is not well-formed multipart/form-data. ({detail})",
    )


def rebuilt_form(upload: CheckedUpload) -> tuple[IO[bytes], int, str]:
    """The checked form for moto: its fields, `key` (moto reads exactly that name) with any
    `${filename}` replaced, then the file; returns (body, length, content type)."""
    boundary = f"localfaas-{uuid.uuid4().hex}"
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115

    def part(headers: str) -> None:
        out.write(f"--{boundary}\r\n{headers}\r\n\r\n".encode())

    for name, value in [("key", upload.key), *upload.fields]:
        part(f'Content-Disposition: form-data; name="{_quoted(name)}"')
        out.write(value.encode() + b"\r\n")
    part(
        f'Content-Disposition: form-data; name="file"; filename="{_quoted(upload.filename)}"'
        f"\r\nContent-Type: {upload.file_type}"
    )
    upload.body.seek(0)
    while chunk := upload.body.read(_CHUNK):
        out.write(chunk)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    length = out.tell()
    out.seek(0)
    return out, length, f"multipart/form-data; boundary={boundary}"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def error_xml(refusal: S3Refusal, bucket: str) -> bytes:
    """S3's error document, as MinIO writes it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(refusal.code)}</Code><Message>{escape(refusal.message)}</Message>"
        f"<BucketName>{escape(bucket)}</BucketName><Resource>/{escape(bucket)}</Resource>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


# --- the middleware ----------------------------------------------------------------------------


class PostPolicyGate:
    """WSGI middleware: a form POST to `/<bucket>` is checked (see the module's docstring)
    before moto sees it; every other request goes straight through."""

    def __init__(self, app: WSGIApp, creds: Credentials | None) -> None:
        self.app = app
        self.creds = creds
        if creds is None:
            log.warning("no credentials given: POST policy signatures are not checked")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        match = _BUCKET_PATH.match(environ.get("PATH_INFO", ""))
        content_type = environ.get("CONTENT_TYPE", "")
        if (
            environ.get("REQUEST_METHOD") != "POST"
            or match is None
            or not content_type.lower().startswith("multipart/form-data")
        ):
            return self.app(environ, start_response)
        bucket = match.group(1)
        stream: IO[bytes] = environ["wsgi.input"]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        chunks = _read(stream, length)
        try:
            if length <= 0:
                raise S3Refusal(400, "EmptyRequestBody", "Request body cannot be empty.")
            boundary = parse_options_header(content_type)[1].get("boundary", "")
            if not boundary:
                raise _malformed("no multipart boundary param in Content-Type")
            upload = FormReader(bucket, self.creds).read(chunks, boundary.encode("latin-1"))
        except S3Refusal as refusal:
            log.info("refused a POST upload to bucket %s: %s", bucket, refusal.code)
            for _ in zip(range(math.ceil(DRAIN_BYTES / _CHUNK)), chunks, strict=False):
                pass  # what the client is still sending, so it reads the answer
            body = error_xml(refusal, bucket)
            start_response(
                f"{refusal.status} {_REASONS.get(refusal.status, 'Error')}",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
        for _ in chunks:
            pass  # whatever followed the file: MinIO ignores it too
        form, form_length, form_type = rebuilt_form(upload)
        upload.body.close()
        inner = dict(environ)
        inner["wsgi.input"] = form
        inner["CONTENT_LENGTH"] = str(form_length)
        inner["CONTENT_TYPE"] = form_type
        try:
            return list(self.app(inner, start_response))
        finally:
            form.close()


_REASONS = {400: "Bad Request", 403: "Forbidden"}


# --- CORS ------------------------------------------------------------------------------------


class BrowserCors:
    """WSGI middleware: an answer to a page on another origin carries the bucket's CORS
    headers, whatever the request. moto adds them to some answers only (not to a form POST's,
    nor to errors), so a browser would see a network error instead of the status; S3 and MinIO
    add them to every answer of a request whose origin a rule allows."""

    def __init__(self, app: WSGIApp, backend: Any) -> None:
        self.app = app
        self.backend = backend

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        origin = environ.get("HTTP_ORIGIN")
        method = environ.get("REQUEST_METHOD", "")
        if not origin or method == "OPTIONS":  # moto answers preflights itself
            return self.app(environ, start_response)
        bucket = environ.get("PATH_INFO", "/").lstrip("/").partition("/")[0]
        extra = self._headers(bucket, origin, method)
        if not extra:
            return self.app(environ, start_response)

        def with_cors(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            names = {h.lower() for h, _ in headers}
            if "access-control-allow-origin" not in names:
                headers = [*headers, *extra]
            return start_response(status, headers, exc_info)

        return self.app(environ, with_cors)

    def _headers(self, bucket: str, origin: str, method: str) -> list[tuple[str, str]]:
        live = self.backend.buckets.get(bucket) if bucket else None
        for rule in getattr(live, "cors", None) or []:
            origins = list(rule.allowed_origins or [])
            methods = [m.upper() for m in rule.allowed_methods or []]
            if method.upper() in methods and any(_origin_matches(origin, o) for o in origins):
                headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
                exposed = list(rule.exposed_headers or [])
                if exposed:
                    headers.append(("Access-Control-Expose-Headers", ", ".join(exposed)))
                return headers
        return []


def _origin_matches(origin: str, allowed: str) -> bool:
    if allowed == "*":
        return True
    if "*" in allowed:
        head, _, tail = allowed.partition("*")
        return origin.startswith(head) and origin.endswith(tail)
    return origin == allowed
