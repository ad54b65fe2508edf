"""Generic helpers for peers run as child processes on loopback: programs, ports, bounded waits, stopping.

dcmtk (and Orthanc, which uses dcmtk's network layer) waits for Nagle's algorithm (~45 ms per message) unless
``TCP_NODELAY=1`` is set, so every peer started by the harness gets it (``peer_env``). Every wait is bounded; each
child runs in its own process group so that stopping it also stops anything it started.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
StrPath = str | os.PathLike[str]
_HANDED_OUT: set[int] = set()


class PeerMissing(RuntimeError):
    """A peer program (dcmtk, Orthanc) is not installed."""


def find_program(binary: str) -> str | None:
    """Full path of the native ``binary`` on PATH or in the sbin directories (Debian installs Orthanc in /usr/sbin).

    Only compiled programs count: pynetdicom 3 installs Python scripts named ``storescu``, ``storescp`` and
    ``echoscu`` into the virtualenv, with other options than dcmtk's, and an activated venv puts them first.
    """
    for directory in [*os.environ.get("PATH", os.defpath).split(os.pathsep), *_SBIN_DIRS]:
        found = shutil.which(binary, path=directory) if directory else None
        if found is None:
            continue
        with contextlib.suppress(OSError), open(found, "rb") as fh:
            if fh.read(4) == b"\x7fELF":
                return found
    return None


def require(binary: str) -> str:
    """Return the full path of ``binary``; raise :class:`PeerMissing` naming the Debian package when absent."""
    found = find_program(binary)
    if found is None:
        package = {"Orthanc": "orthanc", "dciodvfy": "dicom3tools"}.get(binary, "dcmtk")
        raise PeerMissing(f"{binary} is not installed (Debian package {package})")
    return found


def peer_env() -> dict[str, str]:
    """Environment for dcmtk-based processes: ``TCP_NODELAY=1`` avoids the Nagle stall per message."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago and not handed out before in this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; return whether it became truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class PeakWatch:
    """Samples ``sample()`` on a thread while a ``with`` block runs and keeps the largest value: what a load or a
    transfer reached at its worst (a queue length, a file's size), observed rather than timed."""

    def __init__(self, sample: Callable[[], int], interval: float = 0.01) -> None:
        self.sample, self.interval = sample, interval
        self.peak, self.samples = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="peak-watch", daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a listening TCP socket on ``port`` (Linux ``/proc``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if inodes:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return True
    return False


def wait_for_port(
    port: int, timeout: float = 10.0, host: str = LOOPBACK, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until ``host:port`` accepts connections.

    With ``proc``, wait until that very process listens on the port (no probe connection, no false positive
    from another listener) and raise ``RuntimeError`` as soon as it exits.  Raises ``TimeoutError``.
    """
    use_proc = proc is not None and Path("/proc/net/tcp").exists()

    def ready() -> bool:
        if proc is None:
            return port_open(port, host)
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before port {port} opened")
        return listens(proc.pid, port) if use_proc else port_open(port, host)

    if not wait_until(ready, timeout):
        raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), wait, SIGKILL."""
    pgid = proc.pid
    if proc.returncode is not None:
        return  # reaped earlier (e.g. a second stop): its pid may belong to someone else by now
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout)
    # Children left in the group (e.g. a -xcr shell) go too; a pid still used as a group id is not reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def tail_text(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


class ChildProcess:
    """A peer program run as a child process (``proc``)."""

    proc: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        """Pid of the running program, if any."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the program is alive."""
        return self.proc is not None and self.proc.poll() is None
