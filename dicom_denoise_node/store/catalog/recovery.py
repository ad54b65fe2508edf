"""Recovery: what a restart, an operator or another node needs after something went wrong — FAILED series
re-queued (`retry`), a series processed again at another strength (`reprocess`), a crashed node's own claims given
back, and the claims other nodes still hold (the spool check)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.schema import Series, SeriesState, utcnow

# What `denoise-node reprocess` takes: a series whose processing has finished (or not begun), never one a worker
# holds (PROCESSING), one still arriving (RECEIVING), one no rule takes (SKIPPED) or a training archive's.
REPROCESSABLE = (SeriesState.SENT, SeriesState.DERIVED, SeriesState.FAILED, SeriesState.COMPLETE)


def _requeue(series: Series) -> SeriesState:
    """FAILED → DERIVED when it failed sending or was held by the guard, else → COMPLETE."""
    target = SeriesState.DERIVED if series.failed_stage in ("send", "guard") else SeriesState.COMPLETE
    series.state = target
    series.attempts = 0
    series.next_attempt_at = None
    series.failed_stage = None
    return target


def _why_not_reprocessed(series: Series, now: datetime) -> str:
    what = f"series {series.series_uid}"
    if series.origin != "received":
        return f"{what} is in a training archive ({series.origin}), not one the node received"
    if series.purged_at is not None:
        return f"{what}: its files were purged ({series.purged_at:%Y-%m-%d %H:%M} UTC): nothing left to process"
    hints = {
        SeriesState.RECEIVING: "wait until it is COMPLETE",
        SeriesState.PROCESSING: "a worker is denoising it: wait until it is DERIVED",
        SeriesState.SKIPPED: "no routing rule takes it: change the rules, then send it again",
    }
    if series.state in hints:
        return f"{what} is {series.state}: {hints[SeriesState(series.state)]}"
    if series.state == SeriesState.DERIVED and series.next_attempt_at is not None and series.next_attempt_at > now:
        return f"{what} is being sent (until {series.next_attempt_at:%H:%M:%S} UTC at the latest): try again then"
    return f"{what} changed state meanwhile (now {series.state}): try again"


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
            return _requeue(series)

    def retry_failed(self) -> list[tuple[str, SeriesState]]:
        """`retry --failed`: every FAILED received series re-queued as :meth:`retry` does, in one commit; returns
        (series UID, the state it went back to), oldest failure first."""
        with self.db.transaction() as s:
            failed = s.scalars(
                select(Series)
                .where(Series.state == SeriesState.FAILED, Series.origin == "received")
                .order_by(Series.updated_at)
            ).all()
            return [(series.series_uid, _requeue(series)) for series in failed]

    def reprocess(self, series_uid: str, strength: float | None, now: datetime | None = None) -> SeriesState:
        """Process a series again, at ``strength`` (None: the rule's, or [model] strength), whatever became of it:
        SENT, DERIVED (unless a send attempt holds it now), FAILED, or still COMPLETE. Returns the state it was in.

        It goes back to COMPLETE with a new generation, so that every destination is sent the new derived series
        (deliveries count per generation), whose UIDs differ from the earlier one's when the strength does
        (denoise/derive.py ``derivation_key``). The earlier derived rows stay until the worker's result replaces
        them (then the worker deletes their files), so a series whose reprocessing fails keeps what it had."""
        if strength is not None and not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength {strength:g}: expected 0 (the source) … 1 (the model's output)")
        now = now or utcnow()
        not_being_sent = or_(
            Series.state != SeriesState.DERIVED,
            Series.claimed_by.is_(None),
            Series.next_attempt_at.is_(None),
            Series.next_attempt_at <= now,
        )
        with self.db.transaction() as s:
            series = s.scalar(select(Series).where(Series.series_uid == series_uid))
            if series is None:
                raise KeyError(f"no series {series_uid} in the catalog")
            was = SeriesState(series.state)
            res = s.execute(
                update(Series)
                .where(
                    Series.id == series.id,
                    Series.state == was,  # the state read above: an atomic claim, as the queue's
                    Series.state.in_(REPROCESSABLE),
                    Series.origin == "received",
                    Series.purged_at.is_(None),
                    not_being_sent,
                )
                .values(
                    state=SeriesState.COMPLETE,
                    generation=Series.generation + 1,
                    strength=strength,
                    attempts=0,
                    next_attempt_at=None,
                    failed_stage=None,
                    last_error=None,
                    claimed_by=None,
                    lease_until=None,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                return was
            s.refresh(series)
            raise ValueError(_why_not_reprocessed(series, now))

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
