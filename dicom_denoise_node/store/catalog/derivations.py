"""Derivations: every way a source series was denoised (its derivation key: model version, strength, …), numbered.

A source series can be derived more than once: two routing rules with different strengths, a rerun at another
strength, a new model version. Each derivation gets a *variant* (0, 1, 2 … per source series, in the order they
were first made) that its derived series' and report's SeriesNumbers are made from (denoise/naming.py), so that
no two of them share a number; the same derivation again (a retry) finds its variant here and keeps its number.
The rows stay when a series is reprocessed or purged: they are the numbering's memory. Each row also says which
routing rule the derivation was last made for, and when: the rules of a series' last processing run decide where
it is sent (send/deliver.py). Declared here with its component, like quality.py's table.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from dicom_denoise_node.store.catalog.engine import CatalogEngine, SessionSource
from dicom_denoise_node.store.catalog.schema import Base, Series, UTCDateTime, utcnow

log = logging.getLogger(__name__)


class Derivation(Base):
    """One derivation of a source series: its key, its numbering variant, the rule it was last made for."""

    __tablename__ = "derivations"
    __table_args__ = (UniqueConstraint("series_fk", "derivation_key"), UniqueConstraint("series_fk", "variant"))
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    derivation_key: Mapped[str] = mapped_column(String(255))
    variant: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Derivations:
    """The derivations of each source series (``catalog.derivations``)."""

    def __init__(self, db: CatalogEngine | SessionSource) -> None:
        self.db = db

    def variant(self, series_id: int, key: str, rule: str = "") -> int:
        """The variant of this derivation of the series: the one recorded for ``key``, else the next free one,
        recorded now; either way it is marked made for ``rule`` now."""
        assert isinstance(self.db, CatalogEngine), "a read-only catalog records nothing"
        key = key[:255]
        for _ in range(5):  # two workers never hold one series, but a uniqueness race costs only a retry
            try:
                with self.db.transaction() as s:
                    row = s.scalar(
                        select(Derivation).where(Derivation.series_fk == series_id, Derivation.derivation_key == key)
                    )
                    if row is None:
                        last = s.scalar(select(func.max(Derivation.variant)).where(Derivation.series_fk == series_id))
                        variant = 0 if last is None else last + 1
                        row = Derivation(series_fk=series_id, derivation_key=key, variant=variant)
                        s.add(row)
                    row.rule, row.used_at = rule[:64], utcnow()
                    s.flush()
                    return int(row.variant)
            except IntegrityError:
                log.debug("series id %s: derivation %s recorded meanwhile; reading it again", series_id, key)
        raise RuntimeError(f"series id {series_id}: cannot record derivation {key}")

    def last_rules(self, series_id: int) -> list[str]:
        """The rules of the series' last processing run (derivations made since it started), each once, first first."""
        with self.db.session() as s:
            started = s.scalar(select(Series.processing_started_at).where(Series.id == series_id))
            query = select(Derivation.rule).where(Derivation.series_fk == series_id).order_by(Derivation.used_at)
            if started is not None:
                query = query.where(Derivation.used_at >= started)
            return list(dict.fromkeys(r for r in s.scalars(query) if r))

    def of_series(self, series_id: int) -> list[dict[str, object]]:
        """Every derivation of the series, by variant."""
        with self.db.session() as s:
            rows = s.scalars(select(Derivation).where(Derivation.series_fk == series_id).order_by(Derivation.variant))
            return [{"key": d.derivation_key, "variant": d.variant, "rule": d.rule, "used_at": d.used_at} for d in rows]
