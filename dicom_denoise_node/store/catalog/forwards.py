"""Forwards: received series passed on unchanged (a routing rule's ``forward_originals``, and the dose reports the
node accepts only for that), whatever becomes of their denoising: they go whether the series is denoised, skipped
or FAILED, since the destination may have no other copy.

One row per forwarded series holds the retry state, as the series row does for its derived series: the generation
the last claim covered, ``sent_generation`` once every destination confirmed it, attempts, ``next_attempt_at``
(backoff, or the lease of the claim sending it now, owner in ``claimed_by``) and ``last_error``. Each original a
destination confirmed is in the delivery ledger (``instance_deliveries``, under the original's SOP Instance UID),
so a retry, or the forward of instances that arrived late (a new generation), sends only what it has not confirmed.
Declared here with its component, like derivations.py's table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, ForeignKey, Integer, String, Text, and_, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.schema import (
    Base,
    Instance,
    InstanceDelivery,
    Series,
    SeriesState,
    UTCDateTime,
    utcnow,
)


class Forward(Base):
    """The originals of one series on their way to the destinations routing gives them."""

    __tablename__ = "forwards"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), unique=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    sent_generation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


@dataclass(frozen=True)
class ForwardClaim:
    """A series whose originals this node passes on now, under a lease."""

    series_id: int
    series_uid: str
    rule: str | None
    generation: int
    attempts: int
    owner: str


def _unsent(generation: ColumnElement[int] | int) -> ColumnElement[bool]:
    return or_(Forward.sent_generation.is_(None), Forward.sent_generation < generation)


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(Forward.next_attempt_at.is_(None), Forward.next_attempt_at <= now)


def forward_pending() -> ColumnElement[bool]:
    """SQL, for a query over series: the series has originals still to pass on (retention keeps their files)."""
    return exists().where(Forward.series_fk == Series.id, _unsent(Series.generation))


class Forwards:
    """Passing received series on unchanged (``catalog.forwards``)."""

    def __init__(self, db: CatalogEngine) -> None:
        self.db = db

    def claim(
        self, rules: Sequence[str], sop_classes: Sequence[str], lease_s: float, now: datetime | None = None
    ) -> ForwardClaim | None:
        """Take a series whose originals are due: routed by one of ``rules`` or holding an instance of one of
        ``sop_classes``, no longer RECEIVING, not purged, its current generation not yet confirmed everywhere, and
        no backoff or other claim pending. Read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, as the other claims are."""
        now = now or utcnow()
        eligible = or_(
            Series.rule.in_(list(rules)),
            exists().where(Instance.series_fk == Series.id, Instance.sop_class_uid.in_(list(sop_classes))),
        )
        columns = (Series.id, Series.series_uid, Series.rule, Series.generation)
        try:
            with self.db.transaction() as s:
                row = s.execute(
                    select(*columns, Forward.id, Forward.generation, Forward.attempts)
                    .outerjoin(Forward, Forward.series_fk == Series.id)
                    .where(Series.origin == "received", Series.purged_at.is_(None), eligible)
                    .where(Series.state.not_in((SeriesState.RECEIVING, SeriesState.ARCHIVED)))
                    .where(or_(Forward.id.is_(None), and_(_unsent(Series.generation), _due(now))))
                    .order_by(Series.updated_at)
                    .limit(1)
                    .with_for_update(of=Series, skip_locked=True)
                ).first()
                if row is None:
                    return None
                series_id, uid, rule, generation, forward_id, claimed_generation, attempts = row
                attempts = attempts if claimed_generation == generation else 0  # new instances: a new count
                owner, lease = self.db.new_owner(), now + timedelta(seconds=lease_s)
                values = dict(generation=generation, attempts=attempts, next_attempt_at=lease, claimed_by=owner)
                if forward_id is None:
                    s.add(Forward(series_fk=series_id, **values))
                    s.flush()  # a node that inserted it first wins: IntegrityError below
                else:
                    claimable = (Forward.id == forward_id, _unsent(generation), _due(now))
                    res = s.execute(update(Forward).where(*claimable).values(**values))
                    if res.rowcount != 1:  # type: ignore[attr-defined]
                        return None
        except IntegrityError:
            return None
        return ForwardClaim(int(series_id), str(uid), rule, int(generation), int(attempts or 0), owner)

    def originals(self, series_id: int) -> list[tuple[str, str]]:
        """(SOP Instance UID, spool path) of every received instance of the series, in instance order."""
        with self.db.session() as s:
            rows = s.execute(
                select(Instance.sop_uid, Instance.path)
                .where(Instance.series_fk == series_id)
                .order_by(Instance.instance_number, Instance.id)
            ).all()
        return [(str(uid), str(path)) for uid, path in rows]

    def confirmed(self, series_id: int, destination: str) -> set[str]:
        """The originals of the series that ``destination`` confirmed, in any generation (an original is sent once)."""
        with self.db.session() as s:
            return set(
                s.scalars(
                    select(InstanceDelivery.sop_uid).where(
                        InstanceDelivery.series_fk == series_id, InstanceDelivery.destination == destination
                    )
                )
            )

    def record_confirmed(self, claim: ForwardClaim, destination: str, sop_uids: Sequence[str]) -> None:
        """``destination`` answered Success (or a warning) for these originals; one commit."""
        with self.db.transaction() as s:
            known = set(
                s.scalars(
                    select(InstanceDelivery.sop_uid).where(
                        InstanceDelivery.destination == destination, InstanceDelivery.sop_uid.in_(list(sop_uids))
                    )
                )
            )
            for sop_uid in dict.fromkeys(sop_uids):
                if sop_uid not in known:
                    s.add(InstanceDelivery(series_fk=claim.series_id, destination=destination, sop_uid=sop_uid,
                                           generation=claim.generation))  # fmt: skip

    def succeeded(self, claim: ForwardClaim) -> bool:
        """Every destination confirmed the claim's generation (False: the lease ran out and another node took it)."""
        with self.db.transaction() as s:
            res = s.execute(
                update(Forward)
                .where(Forward.series_fk == claim.series_id, Forward.claimed_by == claim.owner)
                .values(sent_generation=claim.generation, next_attempt_at=None, last_error=None, claimed_by=None)
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def failed(self, claim: ForwardClaim, error: str, backoff_s: float, backoff_max_s: float) -> datetime | None:
        """Count the attempt and schedule the next one (exponential backoff up to ``backoff_max_s``, never given
        up: the originals may be the destination's only copy). None: the lease was lost, nothing written."""
        attempts = claim.attempts + 1
        at = utcnow() + timedelta(seconds=min(backoff_max_s, backoff_s * 2 ** min(attempts - 1, 30)))
        with self.db.transaction() as s:
            res = s.execute(
                update(Forward)
                .where(Forward.series_fk == claim.series_id, Forward.claimed_by == claim.owner)
                .values(attempts=attempts, next_attempt_at=at, last_error=error[:4000], claimed_by=None)
            )
        return at if res.rowcount == 1 else None  # type: ignore[attr-defined]

    def release_own(self) -> int:
        """At start: this node's forward leases (a crash mid-send) are dropped, so those forwards go at once."""
        with self.db.transaction() as s:
            res = s.execute(
                update(Forward)
                .where(Forward.claimed_by.startswith(f"{self.db.node_id}#", autoescape=True))
                .values(next_attempt_at=None, claimed_by=None)
            )
            return int(res.rowcount)  # type: ignore[attr-defined]
