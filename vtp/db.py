"""PostgreSQL connections and versioned schema migrations.

Every function may be the first to touch a fresh database (several cold-start at once after a
deploy), so `migrate` is safe to call from all of them: it serialises on a PostgreSQL advisory
lock, applies each `vtp/migrations/NNNN_name.sql` file at most once, in order, each in its own
transaction together with its row in `schema_migrations`, and is a no-op when the schema is
current. The SQL files ship as package data and are read with importlib.resources, so this
works the same from a source checkout, an installed wheel or a function's build context.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.extensions

log = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection

# Any constant bigint works; this one is b"vtp-migr" so it is recognisable in pg_locks.
MIGRATION_LOCK_KEY = int.from_bytes(b"vtp-migr", "big")

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def connect(
    dsn: str,
    *,
    application_name: str = "vtp",
    connect_timeout: int = 5,
) -> Connection:
    """Open a connection with autocommit off (callers own their transactions).

    `connect_timeout` keeps a function from hanging for minutes when PostgreSQL is down, and
    TCP keepalives let a warm function notice a dead server instead of waiting on a socket.
    Values already present in `dsn` win over these defaults, so an operator can override them.
    Sessions run in UTC so timestamps are unambiguous wherever they are printed.
    """
    given = psycopg2.extensions.parse_dsn(dsn)
    defaults: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "application_name": application_name,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    extra = {k: v for k, v in defaults.items() if k not in given}
    options = given.get("options", "")
    if "timezone" not in options:
        extra["options"] = f"{options} -c timezone=UTC".strip()
    conn: Connection = psycopg2.connect(dsn, **extra)
    conn.autocommit = False
    return conn


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name without .sql, e.g. "0001_initial"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The migration files shipped in the package, ordered by version."""
    found: dict[int, Migration] = {}
    for entry in resources.files("vtp").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(
                f"two migrations share version {version:04d}: "
                f"{found[version].name} and {entry.name}"
            )
        found[version] = Migration(
            version=version,
            name=entry.name.removesuffix(".sql"),
            sql=entry.read_text(encoding="utf-8"),
        )
    return [found[v] for v in sorted(found)]


def migrate(conn: Connection, *, upto: int | None = None) -> list[str]:
    """Bring the schema up to date (or to version `upto`: a test of a data migration starts
    from the schema before it); return the names of the migrations applied by this call.

    Commits on `conn`, so it must not hold an open transaction. The advisory lock is
    session-level (held across the per-migration commits) and scoped to the current database;
    a second caller blocks until the first is done, then finds nothing left to do.
    """
    if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        raise ValueError("migrate() needs a connection without an open transaction")
    migrations = load_migrations()
    applied: list[str] = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    conn.commit()
    try:
        with conn.cursor() as cur:
            cur.execute(_SCHEMA_MIGRATIONS_DDL)
            cur.execute("SELECT version, name, checksum FROM schema_migrations")
            done = {int(v): (str(n), str(c)) for v, n, c in cur.fetchall()}
        conn.commit()
        for migration in migrations:
            if upto is not None and migration.version > upto:
                break
            if migration.version in done:
                name, checksum = done[migration.version]
                if checksum != migration.checksum:
                    # Editing an applied migration does nothing to existing databases; say so
                    # loudly, but do not refuse to start a function over it.
                    log.warning(
                        "migration %s changed since it was applied as %s; "
                        "write a new migration instead of editing an applied one",
                        migration.name,
                        name,
                    )
                continue
            log.info("applying migration %s", migration.name)
            with conn.cursor() as cur:
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            conn.commit()
            applied.append(migration.name)
    except BaseException:
        conn.rollback()
        raise
    finally:
        _unlock(conn)
    return applied


def _unlock(conn: Connection) -> None:
    """Release the migration lock; a broken connection has released it already."""
    if conn.closed:
        return
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        conn.commit()
    except psycopg2.Error:
        log.warning("could not release the migration lock; it goes with the session")
        conn.rollback()
