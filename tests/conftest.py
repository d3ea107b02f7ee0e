"""Shared fixtures: one local stack per test run, on ports of its own.

The stack is the project's real runtime (`localfaas`) with the real stack.yml plus the fixture
functions of tests/fixtures/stack.yml, and real PostgreSQL, Redis, NATS and S3 servers. It
starts once per session (make test) and is stopped at the end; it never touches the stack
that `make up` runs on port 8080.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
import requests

from localfaas import procs, runtime
from localfaas.config import REPO_ROOT, LocalConfig
from localfaas.registry import load_registry
from tests import ports
from tests.api import http
from tests.ports import free_port, free_port_base
from tests.stackenv import FAST
from vtp import db as vtp_db
from vtp.jobs import JobStore
from vtp.lifecycle import RetryPolicy

# The tests' own ffmpeg commands (clips, footage, checks) run the pinned build the stack runs
# (vtp.media.build), whichever way pytest was started: the venv's bin, where `make setup`
# links it, comes first on PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

TEST_RUN_DIR = REPO_ROOT / ".run" / "test"
FIXTURES = Path(__file__).parent / "fixtures"
ARTIFACTS = REPO_ROOT / "test-artifacts"


def test_config(slot: int = 0, **overrides: object) -> LocalConfig:
    """The test stack of `slot`: slot 0 is .run/test; its ports are whichever are free."""
    values: dict[str, object] = {
        "run_dir": TEST_RUN_DIR if slot == 0 else TEST_RUN_DIR.with_name(f"test-{slot}"),
        "port_base": free_port_base(),
        "gateway_port": free_port(),
        "extra_stack_files": [FIXTURES / "stack.yml"],
        "queue_workers": 3,
        # Replicas, spread over by the gateway: the chunk tests' 360p encodes run in parallel.
        "function_replicas": {"echo": 2, "transcode-360p": 2},
        # The shortened settings of every test stack (tests/stackenv.py); a transcode
        # function with a tiny exec_timeout (no test encodes 1080p otherwise).
        "function_env": {
            "*": FAST
            | {
                # The tests' manual jobs read from buckets without a notification rule.
                "VTP_INPUT_BUCKETS": '["uploads", "manual-sources", "ce-sources"]',
            },
            "transcode-1080p": {"exec_timeout": "6s", "read_timeout": "6s", "write_timeout": "6s"},
            # One function logs JSON lines (vtp.logs), for the test that reads them.
            "transcode-720p": {"VTP_LOG_FORMAT": "json"},
        },
    }
    values.update(overrides)
    return LocalConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tick_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cron") / "ticks.log"


SLOTS = 4


def _claim_slot() -> tuple[int, IO[bytes]]:
    """Test runs at once (the workers of one `make test`, two developers, a run beside a
    benchmark) each get a stack of their own instead of tearing down each other's: the first
    free slot's lock is held for the whole session."""
    # The ports are the machine's, so the locks are too: two checkouts share them.
    for slot in range(SLOTS):
        fh = (Path(tempfile.gettempdir()) / f"vtp-test-slot-{slot}.lock").open("wb")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        return slot, fh
    raise RuntimeError(f"{SLOTS} test runs are already using the test stacks")


@pytest.fixture(scope="session", autouse=True)
def test_slot() -> Iterator[int]:
    """This run's slot: which ports and run dirs its stacks use. Claimed before any test,
    so that even a test that starts a server of its own takes a port from its slot's share."""
    slot, lock = _claim_slot()
    ports.use_slot(slot, SLOTS)
    try:
        yield slot
    finally:
        lock.close()


@pytest.fixture(scope="session")
def stack(tick_file: Path, test_slot: int) -> Iterator[LocalConfig]:
    """The running test stack's config; everything in it is up and healthy."""
    cfg = test_config(test_slot)
    runtime.down(cfg)  # whatever an interrupted earlier run left behind
    # A fresh build, and a fresh S3: the local S3 server restores every kept object at
    # start, and what earlier runs uploaded (gigabytes after a few dozen) would outlast its
    # start-up wait. No test reads what another session wrote.
    # Its logs too: a test reads them for what this session did (test_access).
    for leftover in (cfg.run_dir / "build", cfg.run_dir / "s3-data", cfg.logs_dir):
        if leftover.exists():
            shutil.rmtree(leftover)
    store = runtime.secret_store(cfg)
    store.mkdir(parents=True, exist_ok=True)
    (store / "fixture-secret").write_text("s3cr3t-from-a-file")
    os.environ["FIXTURE_TICK_FILE"] = str(tick_file)  # substituted into the fixture stack.yml
    try:
        cfg.__dict__["up_seconds"] = runtime.up(cfg)
        http.add_stack(cfg)
        http.token = cfg.credentials["operate_token"]
        yield cfg
    finally:
        runtime.down(cfg)


@pytest.fixture(scope="session")
def stack_env(stack: LocalConfig) -> dict[str, str]:
    return runtime.stack_env(stack)


@pytest.fixture(scope="session")
def gateway(stack: LocalConfig) -> str:
    return stack.gateway_url


@pytest.fixture(scope="session")
def relay_url(stack: LocalConfig) -> str:
    """The stack's ws-relay, straight to its port (the gateway strips WebSocket upgrades)."""
    entry = load_registry(stack).get("ws-relay")
    assert entry is not None, "ws-relay must be deployed on the stack (stack.yml)"
    return f"http://127.0.0.1:{entry.port}/"


@pytest.fixture(scope="session")
def postgres_dsn(request: pytest.FixtureRequest) -> str:
    """The stack's PostgreSQL (VTP_TEST_POSTGRES_DSN points elsewhere, without the stack)."""
    dsn = os.environ.get("VTP_TEST_POSTGRES_DSN")
    return dsn or request.getfixturevalue("stack").postgres_dsn  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def db(postgres_dsn: str) -> Iterator[Any]:
    """An autocommit connection to the stack's PostgreSQL, to read the rows themselves; its
    schema is brought up to date first, as the first function called would (a test that
    reads rows before any function ran must not depend on one having run earlier)."""
    _migrate(postgres_dsn)
    conn = psycopg2.connect(postgres_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("VTP_TEST_REDIS_URL")
    return url or request.getfixturevalue("stack").redis_url  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def buffered_gateway(stack: LocalConfig) -> Iterator[str]:
    """A second gateway on the same stack that buffers streamed responses as the CE gateway
    0.25.4 does (LOCALFAAS_GATEWAY_STREAMING=buffer): what clients must survive."""
    port = free_port()
    env = runtime.component_env(stack) | {
        "LOCALFAAS_GATEWAY_PORT": str(port),
        "LOCALFAAS_GATEWAY_STREAMING": "buffer",
    }
    procs.start(
        stack,
        "gateway-buffered",
        [sys.executable, "-m", "localfaas.gateway"],
        env=env,
        cwd=REPO_ROOT,
        port=port,
    )
    url = f"http://127.0.0.1:{port}"
    http.add(stack.credentials["operate_token"], {f"127.0.0.1:{port}"})  # the stack's own
    for _ in range(100):
        try:
            if http.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    else:
        raise RuntimeError("the buffering gateway did not start")
    try:
        yield url
    finally:
        procs.stop(stack, "gateway-buffered")


def _admin(dsn: str) -> psycopg2.extensions.connection:
    conn = vtp_db.connect(dsn, application_name="vtp-test-admin")
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return conn


# --- a database of its own per test (the job store's tests) --------------------------------


@contextlib.contextmanager
def _own_database(postgres_dsn: str, template: str | None = None) -> Iterator[tuple[str, bool]]:
    """A brand-new database (a copy of `template`, if given), dropped (with any leftover
    sessions) afterwards; yields its DSN and whether it is a database of its own.

    A role without CREATEDB (a stack's application role) gets a fresh, empty schema instead,
    put first on the search_path of every connection made with the DSN: no template then.
    """
    name = f"vtp_test_{uuid.uuid4().hex[:12]}"
    # A connection for each end, none held in between: a test may restart PostgreSQL.
    with contextlib.closing(_admin(postgres_dsn)) as admin, admin.cursor() as cur:
        try:
            copy = f' TEMPLATE "{template}"' if template else ""
            cur.execute(f'CREATE DATABASE "{name}"{copy}')
            drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            dsn, own = psycopg2.extensions.make_dsn(postgres_dsn, dbname=name), True
        except psycopg2.errors.InsufficientPrivilege:
            cur.execute(f'CREATE SCHEMA "{name}"')
            drop = f'DROP SCHEMA IF EXISTS "{name}" CASCADE'
            options = f"-c search_path={name}"
            dsn, own = psycopg2.extensions.make_dsn(postgres_dsn, options=options), False
    try:
        yield dsn, own
    finally:
        with contextlib.closing(_admin(postgres_dsn)) as admin, admin.cursor() as cur:
            cur.execute(drop)


def _migrate(dsn: str) -> None:
    conn = vtp_db.connect(dsn)
    try:
        vtp_db.migrate(conn)
    finally:
        conn.close()


@pytest.fixture
def empty_dsn(postgres_dsn: str) -> Iterator[str]:
    """A brand-new, empty database of this test's own (the migrations' own tests)."""
    with _own_database(postgres_dsn) as (dsn, _):
        yield dsn


@pytest.fixture(scope="session")
def migrated_template(postgres_dsn: str) -> Iterator[str | None]:
    """A database migrated once per session, which each store test's database copies
    (CREATE DATABASE ... TEMPLATE: a file copy, instead of every migration per test); None
    where the role cannot create databases (each test then migrates a schema of its own).
    No session may be connected to it while it is copied: it is closed once migrated."""
    with _own_database(postgres_dsn) as (dsn, own):
        if not own:
            yield None
            return
        _migrate(dsn)
        yield psycopg2.extensions.parse_dsn(dsn)["dbname"]


@pytest.fixture
def dsn(postgres_dsn: str, migrated_template: str | None) -> Iterator[str]:
    """A migrated database of this test's own."""
    with _own_database(postgres_dsn, migrated_template) as (dsn, _):
        if migrated_template is None:
            _migrate(dsn)
        yield dsn


@pytest.fixture
def app_name() -> str:
    """application_name of this test's store connections, to find them in pg_stat_activity."""
    return f"vtp-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_store(dsn: str, app_name: str) -> Iterator[Callable[..., JobStore]]:
    stores: list[JobStore] = []

    def make(retry_base_s: float = 10.0, retry_max_s: float = 600.0, **kw: Any) -> JobStore:
        retry = RetryPolicy(base_s=retry_base_s, max_s=retry_max_s, **kw)
        store = JobStore(partial(vtp_db.connect, dsn, application_name=app_name), retry=retry)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., JobStore]) -> JobStore:
    return make_store()


@pytest.fixture(scope="module")
def pipeline(stack_env: dict[str, str]) -> Iterator[Any]:
    """The pipeline in-process on the session's stack (its database, S3, Redis and gateway):
    what a test drives directly instead of through a function's HTTP call."""
    from tests.inprocess import build_pipeline

    p = build_pipeline(stack_env)
    yield p
    p.store.close()
