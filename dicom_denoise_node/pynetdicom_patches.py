"""Every place the node reaches into pynetdicom's internals, in one module, with the versions it was checked on.

pynetdicom has no public API for two things the node needs, so the node patches private attributes here and
nowhere else (tests/send/test_send.py fails loudly when the installed pynetdicom leaves ``CHECKED_VERSIONS``, and
``check_version`` logs a warning at start). Each patch degrades to pynetdicom's own behaviour when an attribute is
missing, so a newer pynetdicom is slower, not broken:

- ``Association.dul._run_loop_delay`` (the DUL thread's idle poll) and the TCP socket's Nagle setting: see
  "TCP_NODELAY" below;
- ``Association._reactor_checkpoint``, ``_is_paused`` and ``_kill`` (the requestor's reactor): see "The requestor's
  reactor" below;
- ``AssociationServer.get_request`` and ``process_request_thread`` (where the TLS handshake happens) and
  ``ApplicationEntity._servers`` (the servers an AE shuts down): see :class:`DeferredHandshakeServer`;
- ``dimse_messages.NamedTemporaryFile`` (where the chunked receive mode writes a data set) and the DUL thread's
  ``assoc``: see :func:`stream_received_datasets`.

TCP_NODELAY
-----------
TCP_NODELAY and a short poll interval on the node's DIMSE associations: every one it accepts, and its SCU's.

pynetdicom leaves Nagle's algorithm on. A C-STORE is a small command PDU followed by data PDUs whose last
segment is short; with Nagle that segment waits for the peer's delayed ACK (≈ 40 ms on Linux), which capped
a pynetdicom sender at about 23 instances/s on loopback (44 ms per 512² CT image to dcmtk storescp, 6 ms with
TCP_NODELAY: docs/benchmarks.md). dcmtk has the same stall and the same cure (its TCP_NODELAY variable). The node's
own SCU (send/scu.py) turns Nagle off the same way, but only while it holds its association's reactor
(held_reactor below): fast responses expose a race in pynetdicom's requestor reactor otherwise.

pynetdicom's DUL thread also sleeps ``_run_loop_delay`` (1 ms) whenever a pass of its loop found nothing to do,
and a C-STORE crosses that loop several times; 0.2 ms cut the node's receive time from 7.8 to 6.4 ms per 512²
image (bench/receive.py). The price is CPU while an association sits idle: measured with one idle association,
both ends in one process, 17 % of a core at 1 ms and 23 % at 0.2 ms. Associations from modalities are short; a
peer that holds one open for hours costs that much more. ``_run_loop_delay`` is a private attribute: if a
pynetdicom release drops it, nothing breaks and the default applies.

The requestor's reactor
-----------------------
Hold pynetdicom's requestor reactor while the SCU sends, so that its sockets can run without Nagle.

pynetdicom runs a reactor thread on every association, requestor side included, which takes any complete DIMSE
message off the queue and serves it. ``send_c_store`` pauses it first, but the pause is a check-then-act race: the
reactor sets ``_is_paused`` just before it waits on its checkpoint event, so the sender can see "paused", send,
and have the reactor (already past the still-set checkpoint) take the C-STORE response ("Received unexpected
C-STORE service message", then a DIMSE timeout; pynetdicom issue #875 reports the same for C-FIND). With Nagle on,
responses come ≥ 40 ms late and the window always closes first; with TCP_NODELAY they come in ≈ 1 ms and the
eight-scanner load test lost 15 responses in one run.

:func:`held_reactor` replaces the checkpoint with a gate that knows when the reactor is *blocked* in it (not just
about to be), waits for that, and keeps it closed for the whole series: ``send_c_store``'s own pause and unpause
become no-ops, so no response can be taken. The gate opens again before release and whenever the association is
killed (abort, timeout), so the reactor always ends. It touches two private attributes (``_reactor_checkpoint``,
``_is_paused``; pynetdicom 3.0); when they are missing or the reactor does not block in time, it yields False and
the caller keeps Nagle on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

from packaging.specifiers import SpecifierSet
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

CHECKED_VERSIONS = SpecifierSet(">=3.0.0,<3.1")
TLS_HANDSHAKE_TIMEOUT_S = 5.0  # the private attributes below were read in pynetdicom 3.0.x


def check_version() -> bool:
    """True when the installed pynetdicom is one these patches were checked against; else a warning, once, at start."""
    installed = version("pynetdicom")
    if installed in CHECKED_VERSIONS:
        return True
    log.warning(
        "pynetdicom %s is outside %s, the versions the node's patches were checked on "
        "(dicom_denoise_node/pynetdicom_patches.py): they fall back to pynetdicom's own behaviour where an attribute "
        "is gone, which may be slower",
        installed,
        CHECKED_VERSIONS,
    )
    return False


DUL_POLL_S = 0.0002


def disable_nagle(assoc: Association) -> bool:
    """Nagle off and a short DUL poll on one association (best effort: never fails it); True when set."""
    dul = assoc.dul
    if hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_POLL_S
    transport = getattr(dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not a TCP socket (e.g. a test double) or already closed
        log.debug("TCP_NODELAY not set: %s", exc)
        return False
    return True


def set_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler for the SCP: :func:`disable_nagle` on every accepted association."""
    disable_nagle(event.assoc)


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, set_nodelay)

BLOCK_TIMEOUT_S = 2.0
KILL_POLL_S = 0.05


class ReactorGate:
    """Stands in for ``Association._reactor_checkpoint``: closed until :meth:`open`, ignoring ``set()`` meanwhile."""

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._cond = threading.Condition()
        self._open = False
        self._blocked = False

    # -- the threading.Event interface the reactor and the send_* methods use
    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        """The send_* methods' "unpause": ignored, the series is not over yet."""

    def clear(self) -> None:
        """The send_* methods' "pause": the gate is already closed."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block the reactor until :meth:`open`, or until the association is killed (its ``kill()`` calls ``set()``
        before it raises the kill flag, so the flag is polled)."""
        with self._cond:
            while not self._open and not self._assoc._kill:
                self._blocked = True
                self._cond.notify_all()
                self._cond.wait(KILL_POLL_S)
            self._blocked = False
            return True

    # -- the sender's side
    def wait_until_blocked(self, timeout: float) -> bool:
        """True once the reactor is inside :meth:`wait` (read under the gate's lock, so it cannot be on its way)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._blocked, timeout)

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()


@contextmanager
def held_reactor(assoc: Association, timeout: float = BLOCK_TIMEOUT_S) -> Iterator[bool]:
    """Keep ``assoc``'s reactor blocked inside the block; yields whether it is (False: send as pynetdicom does)."""
    original = getattr(assoc, "_reactor_checkpoint", None)
    if original is None or not hasattr(assoc, "_is_paused") or not hasattr(assoc, "_kill"):
        log.debug("pynetdicom has no reactor checkpoint here; reactor not held")
        yield False
        return
    gate = ReactorGate(assoc)
    assoc._reactor_checkpoint = gate  # type: ignore[assignment]
    held = gate.wait_until_blocked(timeout)
    if not held:
        log.warning("association reactor did not pause within %.1f s; sending with pynetdicom's own pause", timeout)
        assoc._reactor_checkpoint = original
        gate.open()
    try:
        yield held
    finally:
        if held:
            assoc._reactor_checkpoint = original
            gate.open()


class DeferredHandshakeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake moved off the accept thread, and bounded.

    pynetdicom wraps each accepted socket in TLS inside ``get_request``, on the one thread that accepts every
    connection, with no timeout: a client that connects and says nothing stopped every new association (a TLS
    C-ECHO timed out after 5 s while one silent client was connected). Here ``get_request`` only accepts; the
    handshake runs in the association's own thread with ``TLS_HANDSHAKE_TIMEOUT_S``, and a client that does not
    complete it is logged and dropped. Without TLS nothing changes.
    """

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        return self.socket.accept()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context:
            before = request.gettimeout()
            try:
                request.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(before)
            except OSError as exc:  # ssl.SSLError and socket timeouts are OSErrors
                log.warning("TLS handshake with %s failed or timed out: %s", client_address, exc)
                with contextlib.suppress(OSError):
                    request.close()
                return
        super().process_request_thread(request, client_address)


def start_server(
    ae: AE, address: tuple[str, int], ssl_context: ssl.SSLContext | None, evt_handlers: list[Any]
) -> ThreadedAssociationServer:
    """``ae.start_server(address, block=False, …)`` with :class:`DeferredHandshakeServer`."""
    server = ae.make_server(
        address, ssl_context=ssl_context, evt_handlers=evt_handlers, server_class=DeferredHandshakeServer
    )
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{address[1]}", daemon=True)
    thread.start()
    ae._servers.append(server)  # as start_server does: the server's shutdown() removes itself from this list
    return server


RECEIVE_SINK_ATTR = "denoise_receive_sink"  # set on an AE whose incoming data sets go to a receive.stream sink
_pynetdicom_temp_file = dimse_messages.NamedTemporaryFile


def _received_dataset_file(*args: Any, **kwargs: Any) -> Any:
    """What pynetdicom's chunked receive opens for a data set: the sink of the receiving AE, else its own temp file.

    pynetdicom calls this from the association's DUL thread (``DULServiceProvider.assoc``), which is how the file
    finds the AE, and with it the folder and the size limit, that it belongs to.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    sink = getattr(getattr(assoc, "ae", None), RECEIVE_SINK_ATTR, None)
    if sink is None:
        return _pynetdicom_temp_file(*args, **kwargs)
    return sink.new_file(assoc)


def stream_received_datasets(ae: AE, sink: Any) -> None:
    """Stream the C-STORE data sets ``ae`` receives into ``sink`` (receive/stream.py) instead of memory.

    pynetdicom's chunked mode is a process-wide switch (``_config.STORE_RECV_CHUNKED_DATASET``); AEs without a sink
    get pynetdicom's own temporary file in it, and ``event.dataset`` still works for them.
    """
    setattr(ae, RECEIVE_SINK_ATTR, sink)
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _received_dataset_file  # type: ignore[assignment]
