"""TCP_NODELAY on every DIMSE socket the node opens or accepts.

pynetdicom leaves Nagle's algorithm on. A C-STORE is a small command PDU followed by data PDUs whose last
segment is short; with Nagle that segment waits for the peer's delayed ACK (≈ 40 ms on Linux), which capped
the sender at about 23 instances/s on loopback (44 ms per 512² CT image to dcmtk storescp, 6 ms with
TCP_NODELAY: docs/benchmarks.md). dcmtk has the same stall and the same cure (its TCP_NODELAY variable).
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt
from pynetdicom.events import Event

log = logging.getLogger(__name__)


def set_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler: turn Nagle off on the association's socket (best effort: never fails a connection)."""
    transport = getattr(event.assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not a TCP socket (e.g. a test double) or already closed
        log.debug("TCP_NODELAY not set: %s", exc)


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, set_nodelay)
