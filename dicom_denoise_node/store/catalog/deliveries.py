"""Deliveries: a DERIVED series claimed for sending under a lease, each destination's acknowledgement recorded so a
retry skips it, and the attempt's outcome (SENT, or backoff and FAILED after max attempts)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.queue import Claim
from dicom_denoise_node.store.catalog.schema import (
    Delivery,
    DerivedInstance,
    InstanceDelivery,
    Series,
    SeriesState,
    Study,
    utcnow,
)


class Deliveries:
    """State transitions of derived series, from DERIVED to SENT or FAILED (``catalog.deliveries``)."""

    def __init__(self, db: CatalogEngine) -> None:
        self.db = db

    def claim_for_sending(self, lease_s: float, now: datetime | None = None) -> Claim | None:
        """Take a DERIVED series that is due, by pushing its next_attempt_at forward by a lease (its owner named in
        claimed_by, so that a restart drops only this node's leases). Read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
        as the processing claim is (queue.py)."""
        now = now or utcnow()
        with self.db.transaction() as s:
            due = (Series.next_attempt_at.is_(None)) | (Series.next_attempt_at <= now)
            row = s.execute(
                select(Series.id, Series.series_uid, Study.study_uid, Series.generation, Series.attempts)
                .join(Study, Series.study_fk == Study.id)
                .where(Series.state == SeriesState.DERIVED, due)
                .order_by(Series.updated_at)
                .limit(1)
                .with_for_update(of=Series, skip_locked=True)
            ).first()
            if row is None:
                return None
            owner = self.db.new_owner()
            res = s.execute(
                update(Series)
                .where(Series.id == row[0], Series.state == SeriesState.DERIVED, due)
                .values(next_attempt_at=now + timedelta(seconds=lease_s), claimed_by=owner)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return Claim(row[0], row[1], row[2], row[3], row[4], owner)

    def derived_instances(self, series_id: int) -> list[DerivedInstance]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(DerivedInstance).where(DerivedInstance.series_fk == series_id).order_by(DerivedInstance.id)
                )
            )

    def delivered_to(self, claim: Claim) -> set[str]:
        with self.db.session() as s:
            return set(
                s.scalars(
                    select(Delivery.destination).where(
                        Delivery.series_fk == claim.series_id, Delivery.generation == claim.generation
                    )
                )
            )

    def confirmed_instances(self, claim: Claim, destination: str) -> set[str]:
        """SOP Instance UIDs ``destination`` confirmed for this generation of the series (a resumed send skips them)."""
        with self.db.session() as s:
            return set(
                s.scalars(
                    select(InstanceDelivery.sop_uid).where(
                        InstanceDelivery.series_fk == claim.series_id,
                        InstanceDelivery.destination == destination,
                        InstanceDelivery.generation == claim.generation,
                    )
                )
            )

    def record_instance_deliveries(self, claim: Claim, destination: str, sop_uids: list[str]) -> None:
        """``destination`` answered Success (or a warning) for these derived instances; one commit."""
        with self.db.transaction() as s:
            rows = {
                r.sop_uid: r
                for r in s.scalars(
                    select(InstanceDelivery).where(
                        InstanceDelivery.destination == destination, InstanceDelivery.sop_uid.in_(sop_uids)
                    )
                )
            }
            for sop_uid in sop_uids:
                row = rows.get(sop_uid)
                if row is None:
                    s.add(InstanceDelivery(series_fk=claim.series_id, destination=destination, sop_uid=sop_uid,
                                           generation=claim.generation))  # fmt: skip
                else:
                    row.generation, row.delivered_at = claim.generation, utcnow()

    def record_delivery(self, claim: Claim, destination: str) -> None:
        with self.db.transaction() as s:
            row = s.scalar(
                select(Delivery).where(Delivery.series_fk == claim.series_id, Delivery.destination == destination)
            )
            if row is None:
                s.add(Delivery(series_fk=claim.series_id, destination=destination, generation=claim.generation))
            else:
                row.generation, row.delivered_at = claim.generation, utcnow()

    def send_succeeded(self, claim: Claim) -> bool:
        """SENT, if this claim still owns the series (False: its lease ran out and another node took it over)."""
        with self.db.transaction() as s:
            res = s.execute(
                update(Series)
                .where(Series.id == claim.series_id, Series.state == SeriesState.DERIVED)
                .where(Series.claimed_by == claim.owner)
                .values(
                    state=SeriesState.SENT, next_attempt_at=None, last_error=None, claimed_by=None, updated_at=utcnow()
                )
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def send_failed(
        self, claim: Claim, error: str, max_attempts: int, backoff_s: float, backoff_max_s: float
    ) -> SeriesState | None:
        """Count the attempt; schedule the next one with exponential backoff or give up (FAILED).

        None: the claim's lease ran out and another node owns the series now; nothing is written, so its attempt is
        not cut short by this one's backoff."""
        attempts = claim.attempts + 1
        with self.db.transaction() as s:
            if attempts >= max_attempts:
                values: dict[str, object] = dict(state=SeriesState.FAILED, failed_stage="send", next_attempt_at=None)
                outcome = SeriesState.FAILED
            else:
                delay = min(backoff_max_s, backoff_s * 2 ** (attempts - 1))
                values = dict(next_attempt_at=utcnow() + timedelta(seconds=delay))
                outcome = SeriesState.DERIVED
            res = s.execute(
                update(Series)
                .where(Series.id == claim.series_id, Series.state == SeriesState.DERIVED)
                .where(Series.claimed_by == claim.owner)
                .values(attempts=attempts, last_error=error[:4000], claimed_by=None, updated_at=utcnow(), **values)
            )
        return outcome if res.rowcount == 1 else None  # type: ignore[attr-defined]
