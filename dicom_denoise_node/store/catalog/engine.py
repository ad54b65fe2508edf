"""Engine, sessions and transactions of the catalog, and a read-only opener that never migrates.

Only `serve` and `denoise-node migrate` create or migrate a catalog (``migrate=True``); every other command opens an
existing one at this code's schema revision or refuses (store/migrations: a missing file is never created, an older
or newer schema is never touched).

SQLite (the embedded default) gets WAL, synchronous=FULL (a commit is on disk before the C-STORE answers Success),
foreign keys and a busy timeout; writers in one process are serialised by a lock, since SQLite has one writer.
PostgreSQL (``postgresql+psycopg://…``, shared by several nodes) gets pre-pinged pooled connections and no
in-process lock: its transactions are the only serialisation, and claims are safe across hosts (queue.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from dicom_denoise_node.store.migrations import CatalogMissing, require_current, upgrade_catalog

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: object, connection_record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the C-STORE answers Success
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class SessionSource:
    """Anything that hands out read sessions on a catalog database (the views need only this)."""

    engine: Engine
    _sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None: another backend, or an in-memory database)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def _existing(url: str) -> None:
    """Refuse a SQLite catalog whose file does not exist, before anything could create it (or its folder)."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise CatalogMissing(
            f"no catalog at {path}: start the node (`denoise-node serve`) or run `denoise-node migrate` to create "
            "it, or give the node's config with -c; nothing was created"
        )


def shown_url(url: str) -> str:
    """The catalog for messages: a SQLite file's path, else the URL with its password hidden."""
    path = sqlite_file(url)
    return str(path) if path is not None else make_url(url).render_as_string(hide_password=True)


def process_node_id() -> str:
    """A node id for a process that did not get one: its host and pid (a command, a test)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class CatalogEngine(SessionSource):
    """The writable catalog database, one writer at a time: with ``migrate``, created owner-only and migrated to the
    newest schema (`serve`, `migrate`); without, it must exist at this code's revision (the other commands).

    ``node_id`` names this node in the claims it takes (queue.py): stable across restarts for a node
    (pipeline.py gives host and data directory), so that a restarted node recognises its own interrupted claims.
    """

    def __init__(self, url: str, node_id: str | None = None, migrate: bool = True) -> None:
        self.url = url
        self.node_id = (node_id or process_node_id())[:200]
        kwargs: dict[str, object] = {}
        sqlite = url.startswith("sqlite")
        if not sqlite:
            kwargs["pool_pre_ping"] = True  # a server restart or a dropped connection costs a reconnect, not an error
        if sqlite:
            path = sqlite_file(url)
            if path is not None and migrate:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # Owner-only from the first byte (it holds patient IDs); SQLite gives -wal/-shm the same mode.
                os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if not migrate:
            _existing(url)
        # hide_parameters: a failed statement's message (logged, or shown by `status`) must not carry a PatientID.
        self.engine = create_engine(url, hide_parameters=True, **kwargs)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # With ``migrate``: (the revision it was at, None when new; the one it is at now). Else None: only checked.
        self.schema_change: tuple[str | None, str] | None = None
        try:
            if migrate:
                self.schema_change = upgrade_catalog(self.engine, where=shown_url(url))
            else:
                require_current(self.engine, shown_url(url))
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer; serialising writers in-process avoids busy retries under C-STORE load.
        self._write_lock: contextlib.AbstractContextManager[object] = (
            threading.Lock() if sqlite else contextlib.nullcontext()
        )

    def new_owner(self) -> str:
        """A claim's owner tag: this node's id and a fresh token (so that this node's own earlier claim of the same
        series, say from before a restart, is never mistaken for this one)."""
        return f"{self.node_id}#{uuid.uuid4().hex[:12]}"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction (committed on exit, rolled back on an exception), serialised in this process."""
        with self._write_lock, self._sessions.begin() as s:
            yield s

    def write_probe(self) -> None:
        """Take and release the write lock without changing anything: raises if the catalog cannot be written."""
        with self._write_lock, self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                conn.exec_driver_sql("ROLLBACK")
            else:
                with conn.begin():
                    conn.exec_driver_sql("SELECT 1")


class ReadOnlyEngine(SessionSource):
    """A catalog opened for reading only: no file is created, no migration runs, no write can succeed.

    For readers beside a running node (the demo's progress display, `status`): SQLite opens the file with
    ``mode=ro``. With ``require_schema`` it refuses a missing catalog or one at another revision than this code's
    (store/migrations: ``require_current``), as `status` must.
    """

    def __init__(self, url: str, require_schema: bool = False) -> None:
        self.url = url
        kwargs: dict[str, object] = {}
        if require_schema:
            _existing(url)
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            url = f"sqlite:///file:{path}?mode=ro&uri=true"
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 5}
        self.engine = create_engine(url, hide_parameters=True, **kwargs)
        if require_schema:
            try:
                require_current(self.engine, shown_url(self.url))
            except BaseException:
                self.engine.dispose()
                raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
