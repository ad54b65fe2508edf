"""Catalog schema versions (Alembic). Only `serve` (at start) and `denoise-node migrate` change a catalog's schema:

- :func:`upgrade_catalog` brings a database to the newest revision; it refuses a catalog of a revision this code
  does not know (a newer denoise-node made it), naming both revisions, rather than fail half-way;
- :func:`require_current` is what every other command does: it changes nothing and refuses a catalog that is
  missing, empty, older (run `denoise-node migrate`) or newer (upgrade denoise-node) than this code, because a
  newer command-line tool must not upgrade a shared PostgreSQL catalog under older nodes that still run on it.

Upgrading:

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

from dicom_denoise_node import __version__

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


def known_revisions() -> set[str]:
    """Every revision of this code's history (a catalog at another one was made by a newer denoise-node)."""
    return {r.revision for r in ScriptDirectory.from_config(_config()).walk_revisions()}


class SchemaMismatch(RuntimeError):
    """The catalog's schema is not the one this code reads and writes; the message says what to do."""


class CatalogMissing(SchemaMismatch):
    """No catalog there yet (no file, or an empty database): `serve` or `denoise-node migrate` creates it."""


class CatalogOutdated(SchemaMismatch):
    """An older schema: `denoise-node migrate` (or the next `serve`) upgrades it."""


class CatalogTooNew(SchemaMismatch):
    """A schema newer than this code: upgrade denoise-node; this one must neither read nor migrate it."""


def _too_new(where: str, current: str) -> CatalogTooNew:
    return CatalogTooNew(
        f"catalog {where} is at schema revision {current}, newer than this denoise-node {__version__} knows "
        f"(its newest is {head_revision()}): upgrade denoise-node on this host; nothing was changed"
    )


def require_current(engine: Engine, where: str) -> None:
    """Refuse (a :class:`SchemaMismatch`) unless the catalog is at this code's newest revision; reads only.

    ``where`` names the catalog in the message (a path or a URL without its password)."""
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        current = MigrationContext.configure(conn).get_current_revision()
    head = head_revision()
    if current == head:
        return
    if current is None and "series" not in tables:
        raise CatalogMissing(
            f"catalog {where} is empty (no schema): start the node (`denoise-node serve`) or run "
            "`denoise-node migrate` to create it"
        )
    if current is not None and current not in known_revisions():
        raise _too_new(where, current)
    raise CatalogOutdated(
        f"catalog {where} is at schema revision {current or 'from before schema versions'}, this denoise-node "
        f"{__version__} needs {head}: run `denoise-node migrate` (stop the nodes that use it first); "
        "nothing was changed"
    )


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


def upgrade_catalog(engine: Engine, revision: str = "head", where: str | None = None) -> tuple[str | None, str]:
    """Bring the catalog to ``revision`` (normally the newest): returns (the revision it was at, None when empty, and
    the one it is at now). Raises :class:`CatalogTooNew` for a revision this code does not know."""
    target = head_revision() if revision == "head" else revision
    before = current_revision(engine)
    if before == target:
        return before, target
    if before is not None and before not in known_revisions():
        raise _too_new(where or str(engine.url), before)
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
        if current is not None and current not in known_revisions():  # a newer node migrated it while we waited
            raise _too_new(where or str(engine.url), current)
        if current != target:
            log.info("upgrading catalog %s from revision %s to %s", engine.url, current or "empty", target)
            command.upgrade(cfg, target)
        return current, target
