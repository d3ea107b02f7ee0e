"""The backing services of the local stack: PostgreSQL, Redis, NATS (JetStream) and S3.

Each is a real server started by us on the stack's own ports, with its data under
`cfg.run_dir`, never the machine's default instance: a second stack (tests, a second
developer) beside `make up`'s only needs another run dir and port base. Every server is started
through `procs.start`, so it has a pid file, a log and its own process group, and `down` stops
whatever it spawned.

S3 is moto's server (PyPI), standing in for MinIO. MinIO's part that moto lacks, webhook
notifications, is played by `localfaas.notifier`: moto sends the uploads bucket's
`s3:ObjectCreated:*` events to an SQS queue on the same server, which the notifier turns into
MinIO's webhook format. moto keeps everything in memory, so `localfaas.s3server` runs it with
its buckets and objects kept on disk under `<run dir>/s3-data`, written before each change is
acknowledged: a restart of the s3 service, or of the whole stack, keeps them, as MinIO does
(start_services sets CORS, the queue and the notification rule again, which it does not keep).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg2
import redis
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from localfaas import procs
from localfaas.config import LocalConfig
from localfaas.s3access import HEALTH_PATH

log = logging.getLogger(__name__)

SERVICES = ("postgres", "redis", "nats", "s3")
# The SQS queue (on the S3 server itself) that receives the uploads bucket's events.
EVENTS_QUEUE = "localfaas-bucket-events"
# moto's default region; MinIO's SDK clients are told the same so they skip location lookups.
S3_REGION = "us-east-1"
# Seconds a service gets to answer after it was started (postgres: after initdb).
READY_TIMEOUT = 30.0
INITDB_TIMEOUT = 120.0
PG_SUPERUSER_WHEN_ROOT = "postgres"


class ServiceError(RuntimeError):
    """A backing service could not be started or configured; the message names it and its log.

    Not runtime.UpError because runtime imports this module; callers that report UpError should
    report this too.
    """


@dataclass(frozen=True)
class _Service:
    name: str
    ports: Callable[[LocalConfig], list[int]]
    launch: Callable[[LocalConfig], None]
    ready: Callable[[LocalConfig], bool]
    configure: Callable[[LocalConfig], None]
    # Seconds to wait for it beyond READY_TIMEOUT (the S3 server reads its kept data first).
    extra_wait: Callable[[LocalConfig], float] = lambda cfg: 0.0


# --- helpers -------------------------------------------------------------------------------


def _port_open(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _log_path(cfg: LocalConfig, name: str) -> Path:
    rec = procs.load(cfg, name)
    return Path(rec.log) if rec else cfg.logs_dir / f"{name}.log"


def _fail(cfg: LocalConfig, name: str, what: str) -> ServiceError:
    where = _log_path(cfg, name)
    return ServiceError(f"{name}: {what} (log: {where})\n{_tail(where)}")


def _base_env() -> dict[str, str]:
    """What a server needs from our environment; no secrets, no LOCALFAAS_* settings."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


# --- postgres ------------------------------------------------------------------------------


def _pg_bindir() -> Path:
    """Where the PostgreSQL server binaries are: PATH first, then Debian's versioned dirs."""
    found = shutil.which("initdb")
    if found:
        # Resolved: a symlink on PATH (e.g. /usr/local/bin/initdb) may not bring pg_isready
        # and psql along, the real bin dir has them all.
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise ServiceError("postgres: initdb not found on PATH or in /usr/lib/postgresql/*/bin")
    return candidates[-1].parent


# Where PostgreSQL's files go when the postgres OS user cannot reach the run dir (a clone
# under a private 0700 folder, as `mktemp -d` makes): /var/tmp is searchable by everyone.
# Only used as root, and checked to be a real folder owned by root before use (no symlink games).
PG_FALLBACK_BASE = Path("/var/tmp/localfaas-postgres")  # noqa: S108


def _pg_base(cfg: LocalConfig) -> Path:
    """The folder holding pgdata and the socket dir: the run dir when the postgres OS user
    can reach it, else a folder of its own under PG_FALLBACK_BASE named after the run dir."""
    os_user = _pg_os_user()
    if os_user is None or _traversable(cfg.run_dir, os_user):
        return cfg.run_dir
    digest = hashlib.sha256(str(cfg.run_dir.resolve()).encode()).hexdigest()[:16]
    return PG_FALLBACK_BASE / digest


def _safe_fallback_dir(base: Path) -> None:
    """Make `base` (under the shared PG_FALLBACK_BASE), refusing anything not ours."""
    for p in (PG_FALLBACK_BASE, base):
        p.mkdir(mode=0o711, exist_ok=True)
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ServiceError(f"postgres: {p} is not a folder owned by us; remove it")
        p.chmod(0o711)  # others may pass through (the postgres user), not list


def _pg_dirs(cfg: LocalConfig) -> tuple[Path, Path]:
    base = _pg_base(cfg)
    return base / "pgdata", base / "pgsock"


def _pg_os_user() -> str | None:
    """initdb and postgres refuse to run as root: then they run as the `postgres` OS user."""
    return PG_SUPERUSER_WHEN_ROOT if os.geteuid() == 0 else None


def _pg_superuser() -> str:
    return _pg_os_user() or pwd.getpwuid(os.geteuid()).pw_name


def _traversable(path: Path, user: str) -> bool:
    try:
        _check_traversable(path, user)
    except ServiceError:
        return False
    return True


def _check_traversable(path: Path, user: str) -> None:
    """The postgres OS user must reach the run dir: every ancestor needs search permission."""
    pw = pwd.getpwnam(user)
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue  # not made yet: we make it (0755 under the usual umask) when we start

        if st.st_uid == pw.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in gids:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise ServiceError(
                f"postgres: the {user!r} OS user cannot reach {path} because {p} is not "
                f"searchable by it (e.g. `chmod o+x {p}`), or use another LOCALFAAS_RUN_DIR"
            )


def _pg_prepare_dir(path: Path, owner: str | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(0o700)


def _pg_initdb(cfg: LocalConfig) -> None:
    """Create the cluster once. initdb writes into a scratch dir renamed on success, so an
    interrupted initdb never leaves a half-made pgdata that later starts look at."""
    pgdata, _ = _pg_dirs(cfg)
    bindir = _pg_bindir()
    if (pgdata / "PG_VERSION").exists():
        have = (pgdata / "PG_VERSION").read_text().strip()
        want = bindir.parent.name
        if want.isdigit() and have != want:
            raise ServiceError(
                f"postgres: {pgdata} was made by PostgreSQL {have} but the binaries are {want}; "
                f"remove {pgdata} (local data only) or install PostgreSQL {have}"
            )
        return
    os_user = _pg_os_user()
    scratch = pgdata.with_name("pgdata.initdb")
    shutil.rmtree(scratch, ignore_errors=True)
    _pg_prepare_dir(scratch, os_user)
    argv = [
        str(bindir / "initdb"),
        "-D",
        str(scratch),
        "-U",
        _pg_superuser(),
        "--auth-local=peer",  # the unix socket: only the superuser's OS account, for setup
        "--auth-host=scram-sha-256",  # TCP on 127.0.0.1: passwords, as in production
        "--encoding=UTF8",
        "--no-locale",
        "--no-sync",
    ]
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    log_file = cfg.logs_dir / "postgres.log"
    log.info("postgres: initdb %s", pgdata)
    with log_file.open("ab") as out:
        try:
            res = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_base_env() | {"LC_ALL": "C"},
                cwd=cfg.run_dir,
                user=os_user,
                timeout=INITDB_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise _fail(cfg, "postgres", f"initdb took over {INITDB_TIMEOUT:.0f}s") from exc
    if res.returncode != 0:
        raise _fail(cfg, "postgres", f"initdb failed with exit code {res.returncode}")
    scratch.rename(pgdata)


def _pg_launch(cfg: LocalConfig) -> None:
    pgdata, sockdir = _pg_dirs(cfg)
    os_user = _pg_os_user()
    if os_user is not None:
        try:
            pwd.getpwnam(os_user)
        except KeyError as exc:
            raise ServiceError(
                "postgres: running as root needs the `postgres` OS user (initdb and postgres "
                "refuse root); install the postgresql package or run as a normal user"
            ) from exc
        # The run dir is ours: let the postgres user pass through it (not list it).
        cfg.run_dir.chmod(cfg.run_dir.stat().st_mode | stat.S_IXOTH)
        base = _pg_base(cfg)
        if base != cfg.run_dir:
            log.info(
                "postgres: %s is out of the postgres user's reach; using %s", cfg.run_dir, base
            )
            _safe_fallback_dir(base)
        _check_traversable(base, os_user)
    _pg_initdb(cfg)
    _pg_prepare_dir(sockdir, os_user)
    argv = [
        str(_pg_bindir() / "postgres"),
        "-D",
        str(pgdata),
        "-p",
        str(cfg.postgres_port),
        "-k",
        str(sockdir),
        "-c",
        "listen_addresses=127.0.0.1",
        # A disposable dev database: trade crash safety for speed. An OS crash can corrupt
        # the local cluster (delete run_dir/pgdata then); never use these settings elsewhere.
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
    ]
    procs.start(
        cfg,
        "postgres",
        argv,
        env=_base_env() | {"LC_ALL": "C"},
        cwd=cfg.run_dir,
        port=cfg.postgres_port,
        url=f"127.0.0.1:{cfg.postgres_port}",
        user=os_user,
    )


def _pg_ready(cfg: LocalConfig) -> bool:
    try:
        res = subprocess.run(
            [
                str(_pg_bindir() / "pg_isready"),
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(cfg.postgres_port),
                "-t",
                "1",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _sql_literal(value: str) -> str:
    """A standard SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    if "\x00" in value:
        raise ServiceError("postgres: credentials may not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def _pg_configure(cfg: LocalConfig) -> None:
    """Role and database from cfg.credentials, so cfg.postgres_dsn works; idempotent, and a
    changed password in credentials.json is applied. Identifiers and the password are quoted by
    the server (format %I/%L) from literals we quote, fed to psql on stdin (not in argv)."""
    c = cfg.credentials
    _, sockdir = _pg_dirs(cfg)
    user, password, db = (
        _sql_literal(c["postgres_user"]),
        _sql_literal(c["postgres_password"]),
        _sql_literal(c["postgres_db"]),
    )
    # Only literals made by _sql_literal go in; the server quotes them again for the DDL.
    script = f"""
SELECT format(
    CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = {user})
         THEN 'ALTER ROLE %I WITH LOGIN PASSWORD %L'
         ELSE 'CREATE ROLE %I WITH LOGIN PASSWORD %L' END,
    {user}, {password})
\\gexec
SELECT format('CREATE DATABASE %I OWNER %I', {db}, {user})
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {db})
\\gexec
"""  # noqa: S608
    argv = [
        str(_pg_bindir() / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(sockdir),
        "-p",
        str(cfg.postgres_port),
        "-U",
        _pg_superuser(),
        "-d",
        "postgres",
        "-f",
        "-",
    ]
    try:
        res = subprocess.run(
            argv,
            input=script.encode(),
            capture_output=True,
            env=_base_env() | {"LC_ALL": "C"},
            cwd=cfg.run_dir,
            user=_pg_os_user(),
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _fail(cfg, "postgres", "creating the role and database timed out") from exc
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip()
        raise _fail(cfg, "postgres", f"creating the role and database failed: {err}")
    try:
        psycopg2.connect(cfg.postgres_dsn, connect_timeout=5).close()
    except psycopg2.Error as exc:
        raise _fail(cfg, "postgres", f"cannot connect with cfg.postgres_dsn: {exc}") from exc


def _pg_stop_fast(cfg: LocalConfig, timeout: float = 15.0) -> None:
    """SIGINT is postgres's "fast" shutdown: it ends sessions and checkpoints. procs.stop's
    SIGTERM would be "smart" shutdown, which waits for every client to disconnect."""
    rec = procs.running(cfg, "postgres")
    if rec is None:
        return
    try:
        os.kill(rec.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while procs.pid_alive(rec.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


# --- redis ---------------------------------------------------------------------------------


def _redis_launch(cfg: LocalConfig) -> None:
    data = cfg.run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(cfg.redis_port),
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        # Progress and pub/sub only: nothing worth persisting.
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data),
    ]
    procs.start(
        cfg, "redis", argv, env=_base_env(), cwd=data, port=cfg.redis_port, url=cfg.redis_url
    )


def _redis_ready(cfg: LocalConfig) -> bool:
    client = redis.Redis(
        host="127.0.0.1", port=cfg.redis_port, socket_timeout=1, socket_connect_timeout=1
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# --- nats ----------------------------------------------------------------------------------


def _nats_launch(cfg: LocalConfig) -> None:
    store = cfg.run_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    argv = [
        shutil.which("nats-server") or "nats-server",
        "-a",
        "127.0.0.1",  # also the monitoring listener's host
        "-p",
        str(cfg.nats_port),
        "-m",
        str(cfg.nats_monitor_port),
        "-js",
        "-sd",
        str(store),
        "-n",
        f"localfaas-{cfg.port_base}",
    ]
    procs.start(cfg, "nats", argv, env=_base_env(), cwd=store, port=cfg.nats_port, url=cfg.nats_url)


def _nats_ready(cfg: LocalConfig) -> bool:
    # /healthz also checks JetStream, which the queue needs.
    try:
        url = f"http://127.0.0.1:{cfg.nats_monitor_port}/healthz"
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


# --- s3 ------------------------------------------------------------------------------------


def _s3_launch(cfg: LocalConfig) -> None:
    # moto spools large objects to temporary files: keep them in the run dir.
    spool = cfg.run_dir / "s3-spool"
    spool.mkdir(parents=True, exist_ok=True)
    data = cfg.run_dir / "s3-data"
    argv = [sys.executable, "-m", "localfaas.s3server", "-H", "127.0.0.1", "-p", str(cfg.s3_port)]
    argv += ["--data", str(data)]
    # Signatures are checked against the stack's own key pair (localfaas.s3access).
    _ = cfg.credentials  # made on first use: the file must exist before the server reads it
    argv += ["--credentials", str(cfg.run_dir / "credentials.json")]
    env = _base_env() | {"TMPDIR": str(spool), "PYTHONUNBUFFERED": "1"}
    procs.start(cfg, "s3", argv, env=env, cwd=spool, port=cfg.s3_port, url=cfg.s3_endpoint)


# The S3 server loads every kept object before it answers (localfaas.s3server): a copy at a
# pessimistic disk speed, so a stack holding many GB of outputs still starts.
_RESTORE_BYTES_PER_S = 50 * 1024**2


def _s3_restore_wait(cfg: LocalConfig) -> float:
    kept = 0
    for path in (cfg.run_dir / "s3-data" / "buckets").glob("*/objects/*.bin"):
        with contextlib.suppress(OSError):
            kept += path.stat().st_size
    return kept / _RESTORE_BYTES_PER_S


def _s3_ready(cfg: LocalConfig) -> bool:
    try:
        # MinIO's liveness probe, which the server answers once its WSGI app is up (an
        # anonymous ListBuckets is refused, as S3 refuses it).
        return requests.get(cfg.s3_endpoint + HEALTH_PATH, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def boto_client(cfg: LocalConfig, service: str) -> Any:
    """A boto3 client for the local S3 server (S3 and, on the same port, moto's SQS)."""
    c = cfg.credentials
    return boto3.client(
        service,
        endpoint_url=cfg.s3_endpoint,
        region_name=S3_REGION,
        aws_access_key_id=c["s3_access_key"],
        aws_secret_access_key=c["s3_secret_key"],
        config=BotoConfig(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


# Browsers upload straight to the bucket: a form POST (a POST policy), or the parts of a
# multipart upload by PUT; players read via GET/HEAD. (MinIO allows every origin by default:
# MINIO_API_CORS_ALLOW_ORIGIN.)
_CORS = {
    "CORSRules": [
        {
            "AllowedOrigins": ["*"],
            "AllowedMethods": ["GET", "PUT", "POST", "HEAD"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag", "Content-Length", "Content-Range"],
            "MaxAgeSeconds": 3600,
        }
    ]
}


def _public_read(bucket: str) -> dict[str, object]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


def _s3_configure(cfg: LocalConfig) -> None:
    """Buckets, CORS, the events queue and the uploads bucket's notification rule; idempotent
    (the s3 service keeps buckets and objects but not the rest, so this runs on every start)."""
    s3 = boto_client(cfg, "s3")
    sqs = boto_client(cfg, "sqs")
    try:
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in (cfg.uploads_bucket, cfg.outputs_bucket, cfg.private_outputs_bucket):
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)
            s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=_CORS)
        # Anonymous GetObject on outputs, as in production: HLS players fetch segments by
        # relative URL, which a presigned master playlist cannot cover.
        s3.put_bucket_policy(
            Bucket=cfg.outputs_bucket, Policy=json.dumps(_public_read(cfg.outputs_bucket))
        )
        # Private outputs never have a policy (vtp.privacy): whatever set one goes.
        s3.delete_bucket_policy(Bucket=cfg.private_outputs_bucket)
        queue_url = sqs.create_queue(QueueName=EVENTS_QUEUE)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        current = s3.get_bucket_notification_configuration(Bucket=cfg.uploads_bucket)
        wanted = {
            "Id": "localfaas-webhook",
            "QueueArn": queue_arn,
            "Events": ["s3:ObjectCreated:*"],
        }
        if current.get("QueueConfigurations") != [wanted]:
            # Setting it makes moto queue an s3:TestEvent, which the notifier skips.
            s3.put_bucket_notification_configuration(
                Bucket=cfg.uploads_bucket,
                NotificationConfiguration={"QueueConfigurations": [wanted]},
            )
    except ClientError as exc:
        raise _fail(cfg, "s3", f"configuring buckets and notifications failed: {exc}") from exc


# --- the table -------------------------------------------------------------------------------


def _nothing(cfg: LocalConfig) -> None:
    return None


_TABLE: dict[str, _Service] = {
    "postgres": _Service(
        "postgres", lambda c: [c.postgres_port], _pg_launch, _pg_ready, _pg_configure
    ),
    "redis": _Service("redis", lambda c: [c.redis_port], _redis_launch, _redis_ready, _nothing),
    "nats": _Service(
        "nats", lambda c: [c.nats_port, c.nats_monitor_port], _nats_launch, _nats_ready, _nothing
    ),
    "s3": _Service(
        "s3", lambda c: [c.s3_port], _s3_launch, _s3_ready, _s3_configure, _s3_restore_wait
    ),
}


def _wait_ready(cfg: LocalConfig, svc: _Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.ready(cfg):
            return
        if procs.running(cfg, svc.name) is None:
            raise _fail(cfg, svc.name, "exited during start")
        time.sleep(0.1)
    raise _fail(cfg, svc.name, f"did not answer within {timeout:.0f}s")


def start_services(cfg: LocalConfig, only: Collection[str] | None = None) -> list[str]:
    """Start the backing services that are not running and wait until each answers.

    Idempotent: a service whose recorded process runs and answers is left alone (but its
    buckets, role and database are still ensured, which is cheap). A recorded process that runs
    but does not answer is restarted; a port held by a process we did not start is an error,
    never silently shared. Returns the names started.
    """
    names = list(SERVICES if only is None else only)
    unknown = [n for n in names if n not in _TABLE]
    if unknown:
        raise ServiceError(f"unknown service(s) {unknown}; known: {', '.join(SERVICES)}")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    to_start: list[_Service] = []
    for name in names:
        svc = _TABLE[name]
        rec = procs.running(cfg, name)
        if rec:
            if rec.port == svc.ports(cfg)[0] and svc.ready(cfg):
                continue
            log.warning("%s runs but does not answer on its port: restarting it", name)
            stop_services(cfg, only=[name])
        else:
            procs.stop(cfg, name)  # a stale record (its process is gone): forget it
        busy = [p for p in svc.ports(cfg) if _port_open(p)]
        if busy:
            raise ServiceError(
                f"{name}: port(s) {busy} already in use by a process this stack did not start "
                f"(another stack with the same LOCALFAAS_PORT_BASE={cfg.port_base}?)"
            )
        to_start.append(svc)
    # postgres last: the others boot while initdb runs.
    to_start.sort(key=lambda s: s.name == "postgres")
    for svc in to_start:
        log.info("starting %s", svc.name)
        svc.launch(cfg)
    for svc in to_start:
        _wait_ready(cfg, svc, READY_TIMEOUT + svc.extra_wait(cfg))
    for name in names:
        _TABLE[name].configure(cfg)
    return [s.name for s in to_start]


def remove_data(cfg: LocalConfig) -> list[Path]:
    """Delete what the services keep between runs that lies outside the run dir (PostgreSQL's
    fallback folder); the caller removes the run dir itself. Services must be stopped."""
    base = _pg_base(cfg)
    if base == cfg.run_dir or not base.exists():
        return []
    shutil.rmtree(base)
    return [base]


def stop_services(cfg: LocalConfig, only: Collection[str] | None = None) -> list[str]:
    """Stop the services (all, or `only`), in reverse start order; returns those that ran."""
    stopped = []
    for name in reversed(SERVICES):
        if only is not None and name not in only:
            continue
        running = procs.running(cfg, name) is not None
        if name == "postgres":
            _pg_stop_fast(cfg)
        procs.stop(cfg, name)
        if running:
            stopped.append(name)
    return stopped
