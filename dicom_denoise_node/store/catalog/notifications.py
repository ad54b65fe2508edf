"""Notifications: every event the node announces (ops/notify.py), recorded once under a key and then delivered.

The key makes an event's record idempotent: a FAILED series is one event per failure (its UID and the time it
failed), so the job that looks for events may look again, on any node sharing the catalog, after any restart,
without announcing anything twice. Delivery is a claim like the send job's: a pass takes a due row under a lease,
POSTs it, and records which URLs acknowledged it (by a hash: no URL secrets in the catalog), or counts the attempt
and sets the next one. A node that dies mid-POST leaves the lease to run out, and the row is sent again: at least
once. Declared here with its component, like archive.py's table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, Integer, String, Text, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.schema import Base, Series, SeriesState, Study, UTCDateTime, utcnow

log = logging.getLogger(__name__)

PENDING, SENT, GAVE_UP = "pending", "sent", "failed"


class Notification(Base):
    """One event to announce, and how far its delivery got."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    event: Mapped[str] = mapped_column(String(32), index=True)
    series_fk: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True, index=True)
    node_id: Mapped[str] = mapped_column(String(255), default="")  # disk events: the node whose disk it is
    payload: Mapped[str] = mapped_column(Text)  # the JSON body
    state: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    delivered_to: Mapped[str] = mapped_column(Text, default="")  # hashes of the URLs that acknowledged it
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


@dataclass(frozen=True)
class FailedSeries:
    """A FAILED series as a series_failed event tells it."""

    series_id: int
    series_uid: str
    study_uid: str
    stage: str
    reason: str
    attempts: int
    rule: str
    failed_at: datetime


@dataclass(frozen=True)
class Due:
    """A claimed notification: its body, and the URLs (hashes) that already have it."""

    id: int
    key: str
    event: str
    payload: dict[str, object]
    attempts: int
    delivered_to: frozenset[str]


class Notifications:
    """Recording events and delivering them (``catalog.notifications``)."""

    def __init__(self, db: CatalogEngine) -> None:
        self.db = db

    # ---- events --------------------------------------------------------------------------------------------

    def known(self, keys: list[str]) -> set[str]:
        """Which of these event keys are recorded already."""
        if not keys:
            return set()
        with self.db.session() as s:
            return set(s.scalars(select(Notification.key).where(Notification.key.in_(keys))))

    def record(
        self, event: str, key: str, payload: dict[str, object], series_id: int | None = None, node_id: str = ""
    ) -> bool:
        """Record an event to announce; False when its key is recorded already (by this node or another)."""
        try:
            with self.db.transaction() as s:
                if s.scalar(select(Notification.id).where(Notification.key == key)) is not None:
                    return False
                s.add(
                    Notification(
                        key=key,
                        event=event,
                        series_fk=series_id,
                        node_id=node_id,
                        payload=json.dumps(payload, default=str),
                    )
                )
        except IntegrityError:  # another node recorded the same key between the look and the insert
            return False
        return True

    def failed_since(self, since: datetime) -> list[FailedSeries]:
        """Received series FAILED since ``since`` (by the time of their last change) and not purged since."""
        with self.db.session() as s:
            rows = s.execute(
                select(Series, Study.study_uid)
                .join(Study, Series.study_fk == Study.id)
                .where(
                    Series.origin == "received",
                    Series.state == SeriesState.FAILED,
                    Series.purged_at.is_(None),
                    Series.updated_at >= since,
                )
                .order_by(Series.updated_at)
            ).all()
            return [
                FailedSeries(
                    r.id,
                    r.series_uid,
                    study_uid,
                    r.failed_stage or "",
                    r.last_error or "",
                    r.attempts,
                    r.rule or "",
                    r.updated_at,
                )  # fmt: skip
                for r, study_uid in rows
            ]

    def last_event(self, events: tuple[str, ...], node_id: str) -> str | None:
        """The newest of ``events`` recorded for this node (its disk's last announced state), or None."""
        with self.db.session() as s:
            return s.scalar(
                select(Notification.event)
                .where(Notification.event.in_(events), Notification.node_id == node_id)
                .order_by(Notification.id.desc())
                .limit(1)
            )

    # ---- delivery ------------------------------------------------------------------------------------------

    def claim_due(self, lease_s: float, limit: int = 50) -> list[Due]:
        """Take up to ``limit`` pending notifications whose next attempt is due, each under a lease of ``lease_s``
        (another node's pass skips them meanwhile), oldest first."""
        now = utcnow()
        due = or_(Notification.next_attempt_at.is_(None), Notification.next_attempt_at <= now)
        claimed = []
        with self.db.transaction() as s:
            rows = s.scalars(
                select(Notification)
                .where(Notification.state == PENDING, due)
                .order_by(Notification.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                res = s.execute(
                    update(Notification)
                    .where(Notification.id == row.id, Notification.state == PENDING, due)
                    .values(next_attempt_at=now + timedelta(seconds=lease_s))
                )
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(
                        Due(
                            row.id,
                            row.key,
                            row.event,
                            json.loads(row.payload),
                            row.attempts,
                            frozenset(row.delivered_to.split()),
                        )  # fmt: skip
                    )
        return claimed

    def delivered(self, due: Due, delivered_to: set[str]) -> None:
        """Every URL has it: SENT."""
        with self.db.transaction() as s:
            s.execute(
                update(Notification)
                .where(Notification.id == due.id)
                .values(
                    state=SENT,
                    attempts=due.attempts + 1,
                    delivered_to=" ".join(sorted(delivered_to)),
                    next_attempt_at=None,
                    last_error=None,
                    sent_at=utcnow(),
                )
            )

    def attempt_failed(self, due: Due, delivered_to: set[str], error: str, retry_at: datetime | None) -> None:
        """Some URL did not take it: try those again at ``retry_at``, or give up (None)."""
        with self.db.transaction() as s:
            s.execute(
                update(Notification)
                .where(Notification.id == due.id)
                .values(
                    state=PENDING if retry_at else GAVE_UP,
                    attempts=due.attempts + 1,
                    delivered_to=" ".join(sorted(delivered_to)),
                    next_attempt_at=retry_at,
                    last_error=error[:4000],
                )
            )

    def rows(self, limit: int = 100) -> list[dict[str, object]]:
        """The newest notifications and their delivery, for the status page and tests."""
        with self.db.session() as s:
            return [
                {
                    "key": n.key,
                    "event": n.event,
                    "state": n.state,
                    "attempts": n.attempts,
                    "last_error": n.last_error,
                    "created_at": n.created_at,
                    "sent_at": n.sent_at,
                    "payload": json.loads(n.payload),
                }
                for n in s.scalars(select(Notification).order_by(Notification.id.desc()).limit(limit))
            ]
