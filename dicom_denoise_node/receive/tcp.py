"""TCP_NODELAY and a short poll interval on the node's DIMSE associations: every one it accepts, and its SCU's.

pynetdicom leaves Nagle's algorithm on. A C-STORE is a small command PDU followed by data PDUs whose last
segment is short; with Nagle that segment waits for the peer's delayed ACK (≈ 40 ms on Linux), which capped
a pynetdicom sender at about 23 instances/s on loopback (44 ms per 512² CT image to dcmtk storescp, 6 ms with
TCP_NODELAY: docs/benchmarks.md). dcmtk has the same stall and the same cure (its TCP_NODELAY variable). The node's
own SCU (send.py) turns Nagle off the same way, but only while it holds its association's reactor (requestor.py):
fast responses expose a race in pynetdicom's requestor reactor otherwise.

pynetdicom's DUL thread also sleeps ``_run_loop_delay`` (1 ms) whenever a pass of its loop found nothing to do,
and a C-STORE crosses that loop several times; 0.2 ms cut the node's receive time from 7.8 to 6.4 ms per 512²
image (bench/receive.py). The price is CPU while an association sits idle: measured with one idle association,
both ends in one process, 17 % of a core at 1 ms and 23 % at 0.2 ms. Associations from modalities are short; a
peer that holds one open for hours costs that much more. ``_run_loop_delay`` is a private attribute: if a
pynetdicom release drops it, nothing breaks and the default applies.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event

log = logging.getLogger(__name__)

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
