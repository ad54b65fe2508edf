"""A private PostgreSQL server for tests: Debian's binaries, a throw-away cluster in a temp directory, loopback only.

PostgreSQL refuses to run as root, so under root the cluster belongs to an unprivileged user (``postgres`` when
Debian's package created it, else ``nobody``) and every server command runs as that user through ``setpriv``. The
cluster trusts local connections (loopback only, and it lives as long as the test) and runs with ``fsync=off``:
the catalog's durability on PostgreSQL is the server's business, not what these tests check.
"""

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from denoise_harness.net import (
    LOOPBACK,
    ChildProcess,
    PeerMissing,
    free_port,
    stop_process,
    tail_text,
    wait_until,
)

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian: newest major version first
SUPERUSER = "denoise"


def postgres_bin(program: str) -> str:
    """Full path of a PostgreSQL server program (Debian keeps them out of PATH); raises :class:`PeerMissing`."""
    for directory in _BIN_DIRS:
        if (directory / program).is_file():
            return str(directory / program)
    found = shutil.which(program)
    if found is None:
        raise PeerMissing(f"{program} is not installed (Debian package postgresql)")
    return found


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged owner of the cluster when we are root; None when we are not root (we own it ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PeerMissing("running as root and neither a 'postgres' nor a 'nobody' user exists to own the cluster")


class PostgresServer(ChildProcess):
    """``PostgresServer().start()``: a server on 127.0.0.1:``port``; :meth:`create_database` gives a SQLAlchemy URL.

    :meth:`stop` stops it and deletes the cluster. The directory is made with :func:`tempfile.mkdtemp` (not under
    pytest's ``tmp_path``, whose parents are root-only and would keep the unprivileged owner out).
    """

    def __init__(self) -> None:
        self.proc = None
        self.port = free_port()
        self.user = _server_user()
        self.base_dir = Path(tempfile.mkdtemp(prefix="denoise-pg-"))
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        self._databases = 0

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups", *argv]

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
        if self.user is not None:
            os.chown(self.base_dir, self.user.pw_uid, self.user.pw_gid)
        subprocess.run(
            self._as_owner([initdb, "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                            "--no-sync", "--no-instructions"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        log = open(self.log_path, "wb")  # noqa: SIM115  (the child keeps writing to it)
        self.proc = subprocess.Popen(
            self._as_owner([postgres, "-D", str(self.data_dir), "-h", LOOPBACK, "-p", str(self.port),
                            "-k", str(self.base_dir), "-c", "fsync=off", "-c", "max_connections=200"]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        if not wait_until(self._accepts, timeout, interval=0.1):
            self.stop()
            raise TimeoutError(f"PostgreSQL did not start in {timeout} s:\n{tail_text(self.log_path)}")
        return self

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{tail_text(self.log_path)}")
        return self.psql("SELECT 1", check=False).returncode == 0

    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one SQL statement as the superuser (psql over loopback TCP)."""
        return subprocess.run(
            [postgres_bin("psql"), "-h", LOOPBACK, "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True, text=True, timeout=60, check=check,
        )  # fmt: skip

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL (psycopg 3)."""
        self._databases += 1
        name = name or f"catalog{self._databases}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
        shutil.rmtree(self.base_dir, ignore_errors=True)
