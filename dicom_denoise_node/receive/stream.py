"""Incoming data sets streamed to the spool's disk as their fragments arrive, with ``max_dataset_mb`` enforced while
receiving.

pynetdicom, by default, collects a C-STORE's data set in memory and hands it over only once it is complete, so a
size limit could be checked only after the memory was spent (16 associations of 1 GiB each: 16 GiB). In its
chunked mode (``STORE_RECV_CHUNKED_DATASET``) it writes each P-DATA fragment to a temporary file instead; the node
gives it a :class:`ReceivedFile` for that (pynetdicom_patches.stream_received_datasets): a file in the spool's
``incoming/.receiving/`` folder (the same file system as the spool, so storing it is a rename, never a copy) that
stops writing, and throws away what it has, the moment the data set passes the limit. The C-STORE handler then
answers Out of Resources with the size it saw. What the node holds of one transfer is one PDU (``max_pdu``).

A file whose association ends before its last fragment (abort, dropped connection) is deleted when the connection
closes (:meth:`ReceiveSink.drop_association`), and any left by a crash end in ``.tmp`` and go with the spool's
start-up clean-up (Spool.remove_partial_writes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from dicom_denoise_node.store.disk import MIB
from dicom_denoise_node.store.spool import DIR_MODE, FILE_MODE, temp_name

log = logging.getLogger(__name__)

RECEIVING_DIR = ".receiving"


class ReceivedFile:
    """A file-like object that pynetdicom writes one data set into (the stand-in for its NamedTemporaryFile).

    pynetdicom calls ``write``, ``file.flush()``, ``close()`` and reads ``name``; nothing else.
    """

    def __init__(self, directory: Path, limit: int, owner: int) -> None:
        fd, name = _make_temp(directory)
        self._fd: int | None = fd
        self.name = name
        self.path = Path(name)
        self.limit = limit
        self.owner = owner  # the association (its id()) whose connection-close deletes an unfinished file
        self.received = 0  # bytes pynetdicom handed over: the file meta and the data set as received
        self.over_limit = False
        self.write_error: OSError | None = None  # disk full, I/O error: the data set is answered Out of Resources

    @property
    def file(self) -> ReceivedFile:
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        self.received += size
        if self.over_limit or self.write_error is not None or self._fd is None:
            return size
        try:
            if self.received > self.limit:  # stop here: what came so far is thrown away, what follows is not kept
                self.over_limit = True
                os.ftruncate(self._fd, 0)
                return size
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # raised here it would end pynetdicom's DUL thread: kept for the handler instead
            self.write_error = exc
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
        return size

    def flush(self) -> None:
        """Nothing to flush: every write goes straight to the file descriptor."""

    def finish(self) -> None:
        """Make the bytes durable (fsync) and close the file, before it is renamed into the spool."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _make_temp(directory: Path) -> tuple[int, str]:
    name = directory / temp_name(f"{os.urandom(12).hex()}.dcm")
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), str(name)


class ReceiveSink:
    """Makes the :class:`ReceivedFile` of every incoming data set of one SCP and finds it again for the handler."""

    def __init__(self, incoming: Path, max_dataset_mb: float) -> None:
        self.directory = incoming / RECEIVING_DIR
        self.directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        self.limit = int(max_dataset_mb * MIB)
        self._open: dict[str, ReceivedFile] = {}
        self._lock = threading.Lock()

    def new_file(self, owner: object) -> ReceivedFile:
        """Called by pynetdicom (through the patch) when a C-STORE-RQ's data set starts arriving."""
        received = ReceivedFile(self.directory, self.limit, id(owner))
        with self._lock:
            self._open[received.name] = received
        return received

    def take(self, path: Path | str) -> ReceivedFile | None:
        """The file of a complete data set, handed to the C-STORE handler (which stores or discards it)."""
        with self._lock:
            return self._open.pop(str(path), None)

    def drop_association(self, owner: object) -> int:
        """Delete the unfinished files of an association whose connection closed; returns how many."""
        with self._lock:
            left = [f for f in self._open.values() if f.owner == id(owner)]
            for f in left:
                del self._open[f.name]
        for f in left:
            f.discard()
        if left:
            log.info("deleted %d partly received data set(s) of a closed association", len(left))
        return len(left)

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)
