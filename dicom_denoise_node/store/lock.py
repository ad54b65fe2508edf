"""One node per data directory: an exclusive lock on ``<data_dir>/denoise-node.lock``, taken before anything else.

Why first: a second `serve` on the same folder used to open (and migrate) the catalog, give PROCESSING series back
to the queue and repair the spool against the live node, and only then fail to bind the port. The lock is an
``flock`` on an open file, so the kernel releases it when the process ends, however it ends (kill -9 included):
no stale lock file to clean up. The file holds the owner's pid, for the message.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = "denoise-node.lock"


class DataDirLocked(OSError):
    """Another process holds the data directory."""


class DataDirLock:
    """Held from :meth:`acquire` to :meth:`release` (or the end of the process)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirLocked` naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirLocked(
                f"{self.path.parent} is in use by another denoise-node (pid {holder}): one node per data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        log.debug("holding %s", self.path)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
