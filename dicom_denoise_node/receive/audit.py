"""①a The association audit: every association the SCP saw, accepted or rejected (and why), and what it carried.

A row is written when an association is accepted or rejected and completed when it ends, so the C-STORE path
itself only increments an in-memory counter. Rejections come from two places: the node's own admission hook
(``EVT_REQUESTED``, with the reason it gave) and pynetdicom's negotiation (``EVT_REJECTED``, with the reason read
from the A-ASSOCIATE-RJ it sent).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from pynetdicom.events import Event
from sqlalchemy import select, update

from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.store.catalog import Association, Catalog, ReadOnlyCatalog, utcnow

log = logging.getLogger(__name__)

# (result, source, diagnostic) of A-ASSOCIATE-RJ, PS3.8 9.3.4, as the reasons an admin reads.
REJECT_REASONS = {
    (0x01, 0x01, 0x01): "no reason given",
    (0x01, 0x01, 0x02): "application context name not supported",
    (0x01, 0x01, 0x03): "calling AE title not recognised (not in allowed_calling_aets)",
    (0x01, 0x01, 0x07): "called AE title not recognised (not this node's ae_title)",
    (0x02, 0x02, 0x01): "user identity refused",
    (0x02, 0x03, 0x01): "temporary congestion",
    (0x02, 0x03, 0x02): "local limit exceeded (max_associations)",
}


def record_association(
    catalog: Catalog, calling: str, called: str, address: str, port: int | None, accepted: bool, reason: str | None
) -> int:
    """A new audit row; returns its id (an accepted association is completed by finish_association)."""
    with catalog.db.transaction() as s:
        row = Association(
            calling_aet=calling[:16],
            called_aet=called[:16],
            address=address[:64],
            port=port,
            accepted=accepted,
            reason=reason,
            outcome="" if accepted else "rejected",
            ended_at=None if accepted else utcnow(),
        )
        s.add(row)
        s.flush()
        return int(row.id)


def finish_association(catalog: Catalog, row_id: int, outcome: str, instances: int, failures: int) -> None:
    with catalog.db.transaction() as s:
        s.execute(
            update(Association)
            .where(Association.id == row_id)
            .values(ended_at=utcnow(), outcome=outcome, instances=instances, failures=failures)
        )


def association_rows(catalog: Catalog | ReadOnlyCatalog, limit: int = 50) -> list[dict[str, object]]:
    """Newest first, for `denoise-node status --associations` and /associations."""
    with catalog.db.session() as s:
        rows = s.scalars(select(Association).order_by(Association.id.desc()).limit(limit)).all()
        return [
            {
                "started_at": r.started_at,
                "ended_at": r.ended_at,
                "calling_aet": r.calling_aet,
                "called_aet": r.called_aet,
                "address": r.address,
                "port": r.port,
                "accepted": r.accepted,
                "reason": r.reason,
                "outcome": r.outcome,
                "instances": r.instances,
                "failures": r.failures,
            }
            for r in rows
        ]


@dataclass
class _Open:
    row_id: int
    instances: int = 0
    failures: int = 0


class AssociationAudit:
    """Event handlers that record associations in the catalog; also the counters /metrics reads."""

    def __init__(self, catalog: Catalog, metrics: NodeMetrics | None = None) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self._open: dict[int, _Open] = {}
        self._lock = threading.Lock()

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.associations.labels(result).inc()

    @staticmethod
    def _peer(event: Event) -> tuple[str, str, str, int | None]:
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or requestor.ae_title or "").strip()
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        return calling, called, str(requestor.address), requestor.port

    def _safe(self, what: str, fn, *args) -> None:  # noqa: ANN001
        """The audit must never break an association: a catalog error is logged, not raised."""
        try:
            fn(*args)
        except Exception:
            log.exception("association audit: could not record %s", what)

    def rejected_by_node(self, event: Event, reason: str) -> None:
        """Called by the admission hook right after it sent A-ASSOCIATE-RJ."""
        calling, called, address, port = self._peer(event)
        self._count("rejected")
        self._safe("a rejection", record_association, self.catalog, calling, called, address, port, False, reason)

    def on_rejected(self, event: Event) -> None:
        primitive = event.assoc.acceptor.primitive
        code = (primitive.result, primitive.result_source, primitive.diagnostic) if primitive else None
        reason = REJECT_REASONS.get(code, f"rejected (result/source/diagnostic {code})") if code else "rejected"
        calling, called, address, port = self._peer(event)
        log.warning("association from %s (%s) rejected: %s", calling, address, reason)
        self._count("rejected")
        self._safe("a rejection", record_association, self.catalog, calling, called, address, port, False, reason)

    def on_accepted(self, event: Event) -> None:
        calling, called, address, port = self._peer(event)
        log.info("association accepted from %s (%s)", calling, address)
        self._count("accepted")
        try:
            row = record_association(self.catalog, calling, called, address, port, True, None)
        except Exception:
            log.exception("association audit: could not record the association from %s", calling)
            return
        with self._lock:
            self._open[id(event.assoc)] = _Open(row)

    def count_store(self, event: Event, status: int) -> None:
        if self.metrics is not None:
            self.metrics.instances_received.labels(f"0x{status:04X}").inc()
        with self._lock:
            entry = self._open.get(id(event.assoc))
            if entry is not None:
                if status == 0:
                    entry.instances += 1
                else:
                    entry.failures += 1

    def _finish(self, event: Event, outcome: str) -> None:
        with self._lock:
            entry = self._open.pop(id(event.assoc), None)
        if entry is not None:
            self._safe(
                "the end of an association",
                finish_association,
                self.catalog,
                entry.row_id,
                outcome,
                entry.instances,
                entry.failures,
            )

    def on_released(self, event: Event) -> None:
        self._finish(event, "released")

    def on_aborted(self, event: Event) -> None:
        self._finish(event, "aborted")

    def on_closed(self, event: Event) -> None:
        self._finish(event, "closed")  # connection dropped without release or abort
