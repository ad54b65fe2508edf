"""② Completion and routing in the catalog: which RECEIVING series routing has not looked at, the rule it chose,
series with no rule SKIPPED, and RECEIVING → COMPLETE once a series has been quiet for its period."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.schema import Instance, Series, SeriesState, utcnow


class Completion:
    """State transitions of arriving series, up to COMPLETE (or SKIPPED) (``catalog.completion``)."""

    def __init__(self, db: CatalogEngine) -> None:
        self.db = db

    def complete_quiet_series(
        self, quiet_period_s: float, now: datetime | None = None, require_route: bool = False
    ) -> list[tuple[int, str, str | None]]:
        """RECEIVING → COMPLETE for every series silent for its quiet period (its rule's, else quiet_period_s).

        Returns (id, UID, rule) of each. ``require_route`` (the node) leaves series routing has not looked at yet.
        """
        now = now or utcnow()
        done: list[tuple[int, str, str | None]] = []
        with self.db.transaction() as s:
            query = select(
                Series.id, Series.series_uid, Series.last_received_at, Series.quiet_period_s, Series.rule
            ).where(Series.state == SeriesState.RECEIVING, Series.origin == "received")
            if require_route:
                query = query.where(Series.rule.is_not(None))
            for sid, uid, last, quiet, rule in s.execute(query).all():
                if last > now - timedelta(seconds=quiet or quiet_period_s):
                    continue
                res = s.execute(
                    update(Series)
                    .where(Series.id == sid, Series.state == SeriesState.RECEIVING, Series.last_received_at == last)
                    .values(state=SeriesState.COMPLETE, updated_at=utcnow())
                )
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    done.append((sid, uid, rule))
        return done

    def unrouted_series(self) -> list[tuple[int, str]]:
        """RECEIVING series routing has not looked at yet."""
        with self.db.session() as s:
            rows = s.execute(
                select(Series.id, Series.series_uid).where(
                    Series.state == SeriesState.RECEIVING, Series.origin == "received", Series.rule.is_(None)
                )
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def instance_refs(self, series_id: int, limit: int | None = None) -> list[tuple[Path, str]]:
        """(path, calling AE) of a series' instances in arrival order: what routing reads."""
        with self.db.session() as s:
            query = (
                select(Instance.path, Instance.calling_aet)
                .where(Instance.series_fk == series_id)
                .order_by(Instance.received_at, Instance.id)
            )
            if limit:
                query = query.limit(limit)
            return [(Path(r[0]), str(r[1])) for r in s.execute(query).all()]

    def set_route(self, series_id: int, rule: str, quiet_period_s: float | None = None) -> None:
        """Record the rule that routes a series ("" = none matched so far) and its quiet period."""
        with self.db.transaction() as s:
            s.execute(update(Series).where(Series.id == series_id).values(rule=rule, quiet_period_s=quiet_period_s))

    def skip(self, series_id: int, reason: str) -> bool:
        """COMPLETE → SKIPPED: no routing rule matched any instance; the reason goes to last_error."""
        with self.db.transaction() as s:
            res = s.execute(
                update(Series)
                .where(Series.id == series_id, Series.state == SeriesState.COMPLETE)
                .values(state=SeriesState.SKIPPED, last_error=reason[:2000], updated_at=utcnow())
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def series_rule(self, series_id: int) -> str | None:
        with self.db.session() as s:
            return s.scalar(select(Series.rule).where(Series.id == series_id))
