"""Catalog schema versions (Alembic). Every Catalog() brings its database to the newest revision.

- an empty database is built by running every revision from the first (so migrations are the schema's only
  definition, and a test checks they equal the models);
- a catalog made before migrations existed (schema 1: tables but no ``alembic_version``) is stamped as the
  baseline revision and upgraded;
- a catalog at the newest revision costs one read.

Migrations are serialised so that two processes (or two nodes) opening a catalog together do not both alter it:
a SQLite file by a lock file beside it, a PostgreSQL database by a transaction-level advisory lock taken in the
migration's own transaction (PostgreSQL's DDL is transactional, so the lock is held until the schema is committed);
whoever waited then finds the newest revision and does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

BASELINE = "0001"  # schema 1: the catalog as it was before migrations
PG_MIGRATION_LOCK = 0x64656E6F  # pg_advisory_xact_lock key ("deno"): one migrator per PostgreSQL database


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.migrate.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def upgrade_catalog(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog to ``revision`` (normally the newest)."""
    target = head_revision() if revision == "head" else revision
    if current_revision(engine) == target:
        return
    cfg = _config()
    with _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        current = MigrationContext.configure(conn).get_current_revision()
        if current is None and "series" in tables:
            log.info("catalog %s predates schema versions: stamping it as revision %s", engine.url, BASELINE)
            command.stamp(cfg, BASELINE)
            current = BASELINE
        if current != target:
            log.info("upgrading catalog %s from revision %s to %s", engine.url, current or "empty", target)
            command.upgrade(cfg, target)
