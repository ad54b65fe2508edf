"""Quality summaries: what the consistency guard and the noise measure found in each processing run of a series.

The quality report itself (an SR) goes to the PACS beside the derived series; this is the catalog's short memory
of it, kept after retention purges the files, for the status page's "last quality reports" and for the
``guard_flagged`` notification (ops/notify_events.py). Declared here with its component, like archive.py's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from dicom_denoise_node.store.catalog.engine import CatalogEngine, SessionSource
from dicom_denoise_node.store.catalog.schema import Base, Series, UTCDateTime, utcnow


class QualitySummary(Base):
    """One processing run's figures: slices, slices flagged by the guard, the median noise before and after."""

    __tablename__ = "quality_summaries"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    derived_series_uid: Mapped[str] = mapped_column(String(64))
    derivation_key: Mapped[str] = mapped_column(String(64), default="")
    slices: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[int] = mapped_column(Integer, default=0)
    noise_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    noise_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    guard_policy: Mapped[str] = mapped_column(String(8), default="")  # mark, hold or off
    first_flag: Mapped[str | None] = mapped_column(Text, nullable=True)  # the first flagged slice's reasons
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


@dataclass(frozen=True)
class QualityRecord:
    """What the worker records of one processing run (noise in HU; None where no flat region was found)."""

    derived_series_uid: str
    derivation_key: str
    slices: int
    flagged: int
    noise_before: float | None
    noise_after: float | None
    guard_policy: str
    first_flag: str | None = None


class Quality:
    """The quality summaries (``catalog.quality``): written after a run, read by the status page and notifications."""

    def __init__(self, db: CatalogEngine | SessionSource) -> None:
        self.db = db

    def record(self, series_id: int, record: QualityRecord) -> int:
        """Keep one run's figures; returns the row's id."""
        assert isinstance(self.db, CatalogEngine), "a read-only catalog records nothing"
        with self.db.transaction() as s:
            row = QualitySummary(
                series_fk=series_id,
                derived_series_uid=record.derived_series_uid,
                derivation_key=record.derivation_key[:64],
                slices=record.slices,
                flagged=record.flagged,
                noise_before=record.noise_before,
                noise_after=record.noise_after,
                guard_policy=record.guard_policy[:8],
                first_flag=record.first_flag[:4000] if record.first_flag else None,
            )
            s.add(row)
            s.flush()
            return int(row.id)

    def latest(
        self, limit: int = 10, since: datetime | None = None, flagged_only: bool = False
    ) -> list[dict[str, object]]:
        """The newest runs first, with their source series' UID and state: the status page's quality reports; with
        ``since`` and ``flagged_only``, the runs a ``guard_flagged`` notification may be about."""
        query = (
            select(QualitySummary, Series.series_uid, Series.state)
            .join(Series, QualitySummary.series_fk == Series.id)
            .order_by(QualitySummary.created_at.desc(), QualitySummary.id.desc())
            .limit(limit)
        )
        if since is not None:
            query = query.where(QualitySummary.created_at >= since)
        if flagged_only:
            query = query.where(QualitySummary.flagged > 0)
        with self.db.session() as s:
            return [
                {
                    "id": q.id,
                    "series_uid": uid,
                    "state": state,
                    "derived_series_uid": q.derived_series_uid,
                    "derivation_key": q.derivation_key,
                    "slices": q.slices,
                    "flagged": q.flagged,
                    "noise_before": q.noise_before,
                    "noise_after": q.noise_after,
                    "guard_policy": q.guard_policy,
                    "first_flag": q.first_flag,
                    "created_at": q.created_at,
                }
                for q, uid, state in s.execute(query).all()
            ]
