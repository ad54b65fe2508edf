"""Recovery: what a restart, an operator or another node needs after something went wrong — a FAILED series
re-queued, a crashed node's own claims given back, and the claims other nodes still hold (the spool check)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.schema import Series, SeriesState, utcnow


class Recovery:
    """Retry, recovery after a restart, and other nodes' live claims (``catalog.recovery``)."""

    def __init__(self, db: CatalogEngine) -> None:
        self.db = db

    def retry(self, series_uid: str) -> SeriesState:
        """Re-queue a FAILED series: back to DERIVED if it failed while sending or was held by the guard (a
        reviewer's "send it as it is"), else COMPLETE (process again)."""
        with self.db.transaction() as s:
            series = s.scalar(select(Series).where(Series.series_uid == series_uid))
            if series is None:
                raise KeyError(f"no series {series_uid} in the catalog")
            if series.state != SeriesState.FAILED:
                raise ValueError(f"series {series_uid} is {series.state}, not FAILED")
            target = SeriesState.DERIVED if series.failed_stage in ("send", "guard") else SeriesState.COMPLETE
            series.state = target
            series.attempts = 0
            series.next_attempt_at = None
            series.failed_stage = None
            return target

    def recover_after_restart(self) -> list[str]:
        """A series this node was PROCESSING when it stopped (a crash) goes back to the queue at once, and its send
        leases are dropped. Other nodes' claims are left alone: they are alive, or their leases run out."""
        mine = or_(Series.claimed_by.startswith(f"{self.db.node_id}#", autoescape=True), Series.claimed_by.is_(None))
        with self.db.transaction() as s:
            uids = list(s.scalars(select(Series.series_uid).where(Series.state == SeriesState.PROCESSING, mine)))
            s.execute(
                update(Series)
                .where(Series.state == SeriesState.PROCESSING, mine)
                .values(state=SeriesState.COMPLETE, claimed_by=None, lease_until=None, updated_at=utcnow())
            )
            # Leases of a dead sender are not worth waiting for.
            s.execute(
                update(Series)
                .where(Series.state == SeriesState.DERIVED, Series.attempts == 0, mine)
                .values(next_attempt_at=None, claimed_by=None)
            )
        return uids

    def claims_of_other_nodes(self, now: datetime | None = None) -> int:
        """PROCESSING series another node holds under a live lease: its worker may be writing derived files now."""
        now = now or utcnow()
        with self.db.session() as s:
            return len(
                s.scalars(
                    select(Series.id).where(
                        Series.state == SeriesState.PROCESSING,
                        Series.lease_until >= now,
                        ~Series.claimed_by.startswith(f"{self.db.node_id}#", autoescape=True),
                    )
                ).all()
            )
