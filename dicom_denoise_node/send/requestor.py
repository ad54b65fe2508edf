"""Hold pynetdicom's requestor reactor while the SCU sends, so that its sockets can run without Nagle.

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

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pynetdicom.association import Association

log = logging.getLogger(__name__)

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
