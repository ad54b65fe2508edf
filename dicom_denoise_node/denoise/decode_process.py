"""Pixel decoding in a child process, so that a decoder that crashes, hangs or eats all memory fails one series and
not the node.

The codecs behind pydicom (pylibjpeg's openjpeg and libjpeg, pyjpegls, GDCM, RLE) are C libraries fed with bytes
from the network. A crafted fragment that makes one of them segfault or abort would take the whole interpreter
with it, the SCP included; one that makes it loop or allocate without bound would stall or OOM the node. The
header checks (``[node] max_image_pixels``, ``MAX_DECODE_PIXELS``) stop the obvious bombs; this stops the rest:

- the child decodes one file at a time and sends back HU (float32) through a pipe (about 1 ms per 512² slice);
- it runs under an address-space limit (``[series] decode_memory_mb``, RLIMIT_AS): a decompression bomb ends in a
  MemoryError in the child;
- a slice that takes longer than ``[series] decode_timeout_s`` has its child killed;
- a child that dies (signal, abort, OOM killer) or is killed raises :class:`DecoderFailed` for that series (an
  attempt, FAILED after ``[series] max_attempts``), and the next slice starts a fresh child.

The child is started with ``spawn`` (never ``fork``: the node has threads, and a forked copy of a held lock
deadlocks) and imports only pydicom, numpy and this package's decode module.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import resource
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from dicom_denoise_node.denoise.decode import file_hu

log = logging.getLogger(__name__)

MIB = 1024 * 1024
START_TIMEOUT_S = 60.0  # a fresh child imports numpy and pydicom (about 1 s; minutes on a loaded host)


class DecoderFailed(RuntimeError):
    """The decoding child died, was killed, or ran out of time on one file."""


def _serve(conn: Connection, memory_mb: int) -> None:
    """The child's loop: a path in, ("ok", HU) or ("error", message) out, until the pipe closes."""
    if memory_mb > 0:
        limit = memory_mb * MIB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("ready", None))  # imports done: decode_timeout_s counts decoding only, never the start-up
    while True:
        try:
            path = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", file_hu(Path(path))))
        except MemoryError:
            conn.send(("error", f"decoding needs more than decode_memory_mb={memory_mb} MiB"))
        except Exception as exc:  # noqa: BLE001 - a bad file is reported back, the child stays
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class DecoderProcess:
    """One long-lived decoding child, restarted after it dies; ``hu(path)`` is the in-process ``file_hu``'s twin."""

    def __init__(self, timeout_s: float = 60.0, memory_mb: int = 4096) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self.restarts = 0

    def _start(self) -> Connection:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child, self.memory_mb), name="denoise-decoder", daemon=True
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        try:
            ready = parent.poll(START_TIMEOUT_S) and parent.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._stop(kill=True)
            raise DecoderFailed(f"the decoding process did not start (exit code {code})")
        return parent

    def hu(self, path: Path) -> np.ndarray:
        """HU (float32) of one file, decoded in the child; DecoderFailed if the child dies or times out, ValueError
        if the file cannot be decoded (the child survives that)."""
        alive = self._process is not None and self._process.is_alive()
        conn = self._conn if alive and self._conn is not None else self._start()
        try:
            conn.send(str(path))
            if not conn.poll(self.timeout_s):
                self._stop(kill=True)
                raise DecoderFailed(f"decoding {path.name} took more than decode_timeout_s={self.timeout_s:g} s")
            kind, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = self._stop(kill=True)
            self.restarts += 1
            raise DecoderFailed(f"the decoding process died on {path.name} (exit code {code})") from exc
        if kind == "error":
            raise ValueError(f"cannot decode {path.name}: {payload}")
        return payload

    def _stop(self, kill: bool = False) -> int | None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        if process is None:
            return None
        if kill and process.is_alive():
            process.kill()
        process.join(5)
        if kill:
            log.warning("decoding process %s stopped (exit code %s)", process.pid, process.exitcode)
        return process.exitcode

    def close(self) -> None:
        """End the child (it leaves when its pipe closes)."""
        self._stop()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid
