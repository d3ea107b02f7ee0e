"""The local S3 server: moto's, with its buckets and objects kept on disk, as MinIO keeps
them, so that `make down` and `make up` (or a crash of the server) lose nothing.

moto holds everything in memory. This runs moto's own WSGI app in this process and, after
every request that changed a bucket (PUT, POST, DELETE answered 2xx), writes what changed to
`--data` before the answer goes out: an acknowledged upload is on disk, as with MinIO. At
start it loads the folder back into moto's backend, with each object's ETag (a multipart
upload's `<md5>-<parts>` included: the jobs table keys sources by it), Last-Modified, content
type and user metadata, and without sending bucket notifications for what was there before.

Layout under `--data`:

    buckets/<bucket>/bucket.json              name, region, policy
    buckets/<bucket>/objects/<sha256>.json    key, etag, last_modified, metadata, size
    buckets/<bucket>/objects/<sha256>.bin     the bytes

The file names are hashes of the keys, so any key (`..`, control characters, 1 KiB long) is
one flat file; the .json is written last and is what makes an object exist.

In front of it all, `localfaas.s3access` refuses what S3 and MinIO would refuse and moto does
not: anonymous reads of buckets no policy opens, listings, forged or expired signatures.

What is not kept: versions (the local buckets are unversioned), multipart uploads still in
progress, ACLs, tags, CORS and the notification rule (`localfaas.services` sets those on
every start), and moto's SQS queue (the notifier's; an event queued at the moment of a
restart can be lost, and the reconciler submits what has no job).

Browsers' uploads meet MinIO's rules, not moto's (`localfaas.s3browser`): a POST policy's
signature, expiry and conditions are checked before moto sees the form (moto checks none), and
answers to other origins carry the bucket's CORS headers. `--credentials` names the JSON file
holding the keys signatures are checked with (`s3_access_key`, `s3_secret_key`), so they are in
neither the command line nor the environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from localfaas.redact import redact
from localfaas.s3access import AccessRules
from localfaas.s3browser import BrowserCors, Credentials, PostPolicyGate

log = logging.getLogger("localfaas.s3server")

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CHANGES = frozenset({"PUT", "POST", "DELETE"})
# A part of a multipart upload, or its start: nothing a reader can see has changed yet.
_NO_VISIBLE_CHANGE = re.compile(r"(^|&)(partNumber=|uploads(=|&|$))")
_COPY_CHUNK = 1 << 20
_INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>the change could not be kept on disk (see the s3 log)</Message></Error>"
)


def _name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _stamp(key: Any) -> tuple[str, str]:
    """Which version of an object the disk holds: its ETag and Last-Modified."""
    return key.etag, key.last_modified.isoformat()


def _live_object(live: Any, name: str) -> Any:
    """moto's current object `name` of bucket `live`, or None (absent, or a delete marker)."""
    key = live.keys.get(name)
    return key if key is not None and hasattr(key, "_value_buffer") else None


def _write_atomically(path: Path, fill: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as out:
        fill(out)
    tmp.replace(path)


class DiskStore:
    """The on-disk copy of moto's S3 backend; every method runs under one lock."""

    def __init__(self, root: Path, backend: Any) -> None:
        self.root = root
        self.backend = backend
        self.lock = threading.Lock()
        # bucket -> key -> (etag, last_modified): what the disk holds, to find what changed.
        self.index: dict[str, dict[str, tuple[str, str]]] = {}
        self.policies: dict[str, bytes | None] = {}

    def _bucket_dir(self, bucket: str) -> Path:
        return self.root / "buckets" / bucket

    # --- start --------------------------------------------------------------------------------
    def restore(self) -> tuple[int, int]:
        """Load every kept bucket and object into the backend; returns (buckets, objects)."""
        buckets = objects = 0
        top = self.root / "buckets"
        top.mkdir(parents=True, exist_ok=True)
        for folder in sorted(p for p in top.iterdir() if p.is_dir()):
            meta_path = folder / "bucket.json"
            if not meta_path.is_file():
                continue
            meta = json.loads(meta_path.read_text())
            name = str(meta["name"])
            if name not in self.backend.buckets:
                self.backend.create_bucket(name, meta.get("region") or "us-east-1")
            policy = meta.get("policy")
            if policy:
                self.backend.put_bucket_policy(name, policy.encode())
            self.policies[name] = policy.encode() if policy else None
            self.index[name] = {}
            buckets += 1
            for record in sorted((folder / "objects").glob("*.json")):
                if self._restore_object(name, record):
                    objects += 1
        return buckets, objects

    def _restore_object(self, bucket: str, record: Path) -> bool:
        data = record.with_suffix(".bin")
        try:
            meta = json.loads(record.read_text())
            size = data.stat().st_size
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", record, exc)
            return False
        if size != meta["size"]:
            log.warning("skipping %s: %d bytes kept, %d recorded", record, size, meta["size"])
            return False
        key = self.backend.put_object(
            bucket, meta["key"], b"", etag=meta["etag"].strip('"'), disable_notification=True
        )
        # Into moto's spooled buffer a block at a time: a large video is never whole in memory.
        with data.open("rb") as src, key.lock:
            shutil.copyfileobj(src, key._value_buffer, _COPY_CHUNK)
            key.contentsize = size
        key.set_metadata(dict(meta["metadata"]))
        key.last_modified = datetime.fromisoformat(meta["last_modified"])
        self.index[bucket][meta["key"]] = _stamp(key)
        return True

    # --- after each change ---------------------------------------------------------------------
    def sync(self, bucket: str) -> None:
        """Make the disk copy of `bucket` what the backend holds now."""
        with self.lock:
            live = self.backend.buckets.get(bucket)
            if live is None:
                if bucket in self.index:
                    shutil.rmtree(self._bucket_dir(bucket), ignore_errors=True)
                    del self.index[bucket]
                    self.policies.pop(bucket, None)
                return
            if not _BUCKET_NAME.match(bucket):
                return
            folder = self._bucket_dir(bucket)
            (folder / "objects").mkdir(parents=True, exist_ok=True)
            if bucket not in self.index or self.policies.get(bucket) != live.policy:
                self._write_bucket(live)
            kept = self.index.setdefault(bucket, {})
            current = {n: k for n in list(live.keys.keys()) if (k := _live_object(live, n))}
            for key in current.values():
                self._keep(folder, kept, key)
            for gone in [name for name in kept if name not in current]:
                self._forget(folder, kept, gone)

    def sync_key(self, bucket: str, key: str) -> None:
        """Keep one object's change (a PUT, a completed upload, a DELETE) without looking at
        the rest of the bucket; when the key cannot be matched to what moto holds, the whole
        bucket is compared instead, so nothing acknowledged is ever left out."""
        with self.lock:
            live = self.backend.buckets.get(bucket)
            kept = self.index.get(bucket)
            if live is None or kept is None or self.policies.get(bucket) != live.policy:
                matched = False
            else:
                current = _live_object(live, key)
                folder = self._bucket_dir(bucket)
                if current is not None:
                    self._keep(folder, kept, current)
                    matched = True
                elif key in kept:
                    self._forget(folder, kept, key)
                    matched = True
                else:
                    log.info("key %r of bucket %s not matched: comparing the bucket", key, bucket)
                    matched = False
        if not matched:
            self.sync(bucket)

    def _keep(self, folder: Path, kept: dict[str, tuple[str, str]], key: Any) -> None:
        """Write `key` unless the disk has this version of it already."""
        if kept.get(key.name) != (stamp := _stamp(key)):
            self._write_object(folder, key)
            kept[key.name] = stamp

    @staticmethod
    def _forget(folder: Path, kept: dict[str, tuple[str, str]], name: str) -> None:
        for suffix in (".json", ".bin"):
            (folder / "objects" / (_name(name) + suffix)).unlink(missing_ok=True)
        del kept[name]

    def _write_bucket(self, live: Any) -> None:
        policy = live.policy.decode() if isinstance(live.policy, bytes) else live.policy
        meta = {"name": live.name, "region": live.region_name, "policy": policy}
        folder = self._bucket_dir(live.name)
        _write_atomically(folder / "bucket.json", lambda out: out.write(json.dumps(meta).encode()))
        self.policies[live.name] = live.policy

    def _write_object(self, folder: Path, key: Any) -> None:
        base = folder / "objects" / _name(key.name)

        def copy(out: Any) -> None:
            with key.lock:
                key._value_buffer.seek(0)
                shutil.copyfileobj(key._value_buffer, out, _COPY_CHUNK)

        _write_atomically(base.with_suffix(".bin"), copy)
        meta = {
            "key": key.name,
            "etag": key.etag,
            "last_modified": key.last_modified.isoformat(),
            "metadata": dict(key.metadata),
            "size": key.size,
        }
        _write_atomically(
            base.with_suffix(".json"), lambda out: out.write(json.dumps(meta).encode())
        )


class Persisting:
    """WSGI middleware: after a request that may have changed a bucket succeeds, sync that
    bucket to disk, then answer."""

    def __init__(self, app: Callable[..., Iterable[bytes]], store: DiskStore) -> None:
        self.app = app
        self.store = store

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") not in _CHANGES:
            return self.app(environ, start_response)
        status: list[str] = []

        def remember(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(code)
            return start_response(code, headers, exc_info)

        result = self.app(environ, remember)
        try:
            body = list(result)  # moto answers in full; holding it back costs nothing
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if status and status[-1][:1] == "2":
            bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
            query = environ.get("QUERY_STRING", "")
            if bucket and not _NO_VISIBLE_CHANGE.search(query):
                try:
                    if key and "delete" not in query.split("&"):
                        # WSGI hands the path over decoded, as latin-1: the key's own bytes.
                        self.store.sync_key(bucket, key.encode("latin-1").decode("utf-8"))
                    else:
                        self.store.sync(bucket)
                except Exception:
                    # The change is in memory but not on disk: say so, loudly, and fail the
                    # request (its headers are not sent yet), so no client takes it as kept.
                    log.exception("could not keep a change to bucket %s on disk", bucket)
                    start_response(
                        "500 Internal Server Error",
                        [("Content-Type", "application/xml")],
                        sys.exc_info(),
                    )
                    return [_INTERNAL_ERROR]
        return body


class _Redacting(logging.Filter):
    """Request lines without the signatures of presigned URLs (see localfaas.redact)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


def _credentials(path: Path | None) -> Credentials | None:
    """The keys POST policy signatures are checked with (None: not checked)."""
    if path is None:
        return None
    data = json.loads(path.read_text())
    return Credentials(access_key=data["s3_access_key"], secret_key=data["s3_secret_key"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder the objects live in")
    parser.add_argument(
        "--credentials",
        type=Path,
        help="JSON file with s3_access_key and s3_secret_key: signatures must be made with them",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("werkzeug").addFilter(_Redacting())
    os.environ.setdefault("MOTO_PORT", str(args.port))

    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.s3.models import s3_backends
    from werkzeug.serving import run_simple

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    store = DiskStore(args.data, backend)
    buckets, objects = store.restore()
    log.info("kept data: %d buckets, %d objects from %s", buckets, objects, args.data)
    moto_app = DomainDispatcherApplication(create_backend_app)
    credentials = None
    if args.credentials is not None:
        kept = json.loads(args.credentials.read_text())
        credentials = (str(kept["s3_access_key"]), str(kept["s3_secret_key"]))

    def policy_of(bucket: str) -> bytes | str | None:
        live = backend.buckets.get(bucket)
        return live.policy if live is not None else None

    # Outside in: CORS headers on every answer to a page (errors too), then who may do what
    # (signatures, anonymous reads of public objects), then persistence of what moto kept,
    # then a browser form's POST policy, then moto.
    policed = PostPolicyGate(moto_app, _credentials(args.credentials))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(
        args.host,
        args.port,
        BrowserCors(AccessRules(Persisting(policed, store), policy_of, credentials), backend),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
