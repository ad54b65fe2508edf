"""Durable file layout: received instances and derived instances, written atomically.

A file is visible under its final name only once its bytes are on disk (write to a temporary name in the same
directory, fsync, rename, fsync the directory), so a crash leaves either the whole file or a ``.tmp`` file that
start-up clean-up removes. Paths are built only from validated UIDs, so a crafted UID cannot escape the spool.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TMP_SUFFIX = ".tmp"
FILE_MODE = 0o600
DIR_MODE = 0o700
FOREIGN_TMP_AGE_S = 24 * 3600  # another host's temporary file this old has lost its writer


def temp_name(stem: str) -> str:
    """A temporary file's name, tagged with its writer (``~pid@host``): several nodes may share one spool, and a
    node starting up must delete only the partial writes of writers that are gone (:func:`writer_gone`)."""
    return f"{stem}~{os.getpid()}@{socket.gethostname()}{TMP_SUFFIX}"


def writer_gone(tmp: Path, now: float | None = None) -> bool:
    """Whether the process that wrote this temporary file has ended: one of this host whose pid is not running,
    one of another host (whose processes we cannot see) only after FOREIGN_TMP_AGE_S, an untagged one always."""
    tag = tmp.name.removesuffix(TMP_SUFFIX).rpartition("~")[2]
    pid, _, host = tag.partition("@")
    if not host or not pid.isdigit():
        return True
    if host != socket.gethostname():
        try:
            return (now or time.time()) - tmp.stat().st_mtime > FOREIGN_TMP_AGE_S
        except FileNotFoundError:
            return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z"


class InvalidUID(ValueError):
    """A UID that is not a DICOM UID (and therefore never becomes part of a path)."""


def check_uid(uid: str, what: str = "UID") -> str:
    """Return the UID if it is a valid DICOM UID (digits and dots, at most 64 characters)."""
    uid = (uid or "").strip().rstrip("\x00")
    if not uid or len(uid) > 64 or not _UID_RE.match(uid):
        raise InvalidUID(f"{what} {uid[:80]!r} is not a valid DICOM UID")
    return uid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_file(path: Path, data: bytes | memoryview | Sequence[bytes | memoryview]) -> Path:
    """Write data (one buffer, or parts written one after the other without joining them) to a temporary file beside
    ``path``, durably (fsync), and return it; :func:`publish` renames it into place. A crash leaves only the
    temporary file, which :meth:`Spool.remove_partial_writes` deletes at the next start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    tmp = path.with_name(temp_name(f".{path.name}.{uuid.uuid4().hex}"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        for part in [data] if isinstance(data, bytes | memoryview) else data:
            view = memoryview(part)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def publish(staged: Path, path: Path) -> None:
    """Rename a staged file into place (atomically replacing an older copy) and make the rename durable."""
    try:
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return the ones created, outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    created = list(reversed(missing))
    for d in created:
        d.mkdir(mode=DIR_MODE, exist_ok=True)
    return created


def write_atomic(path: Path, data: bytes | memoryview | Sequence[bytes | memoryview]) -> None:
    """Write data to path so that the file is either complete and durable, or absent (see :func:`place_durably`)."""
    created = make_parents(path.parent)
    publish(stage_file(path, data), path)
    _fsync_created(created)


def place_durably(staged: Path, path: Path) -> None:
    """Rename an fsynced file (on the spool's file system) to ``path``: renamed into place, its folder fsynced, and
    every folder this created made durable in its own parent (a new study's and series' folders), so that a power
    cut after Success cannot lose the path to the file."""
    created = make_parents(path.parent)
    publish(staged, path)
    _fsync_created(created)


def _fsync_created(created: list[Path]) -> None:
    for directory in reversed(created):  # innermost first: each new entry, then the entry that leads to it
        _fsync_dir(directory.parent)


class Spool:
    """The spool: ``incoming/`` (as received) and ``derived/`` (as sent); the node's data directory unless
    ``[node] spool_dir`` names one that several nodes share."""

    def __init__(self, data_dir: Path, create: bool = True) -> None:
        """``create=False``: for a command that only looks (`check`), which must create no folder."""
        self.root = Path(data_dir)
        self.incoming = self.root / "incoming"
        self.derived = self.root / "derived"
        for d in (self.root, self.incoming, self.derived) if create else ():
            d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)

    def incoming_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.incoming
            / check_uid(study_uid, "StudyInstanceUID")
            / check_uid(series_uid, "SeriesInstanceUID")
            / f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        )

    def derived_path(self, derived_series_uid: str, sop_uid: str) -> Path:
        return self.derived / check_uid(derived_series_uid) / f"{check_uid(sop_uid)}.dcm"

    def remove_partial_writes(self) -> int:
        """Delete temporary files left by a crash mid-write; returns how many. Only the spool's own folders (other
        tenants of the data directory, such as inductor's kernel cache, see systemd/, keep theirs), and only those
        whose writer is gone (another node sharing the spool may be writing the rest)."""
        count = 0
        for folder in (self.incoming, self.derived):
            for tmp in folder.rglob(f"*{TMP_SUFFIX}"):
                if writer_gone(tmp):
                    tmp.unlink(missing_ok=True)
                    count += 1
        if count:
            log.warning("removed %d partial writes left by an interrupted run", count)
        return count
