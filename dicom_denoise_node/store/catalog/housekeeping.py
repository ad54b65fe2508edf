"""Housekeeping: the rows the spool check compares with the files, and the rows retention purges."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.forwards import forward_pending
from dicom_denoise_node.store.catalog.schema import DerivedInstance, Instance, Series, SeriesState, utcnow

log = logging.getLogger(__name__)


class Housekeeping:
    """Spool rows, missing files, finished series and their purge (``catalog.housekeeping``)."""

    def __init__(self, db: CatalogEngine) -> None:
        self.db = db

    def spool_rows(self) -> tuple[dict[str, int], dict[str, int]]:
        """Paths the catalog expects in the spool: (received instance path → series id, derived path → series id)."""
        with self.db.session() as s:
            received = dict(
                s.execute(
                    select(Instance.path, Instance.series_fk)
                    .join(Series, Instance.series_fk == Series.id)
                    .where(Series.origin == "received")
                ).all()
            )
            derived = dict(s.execute(select(DerivedInstance.path, DerivedInstance.series_fk)).all())
        return {str(k): int(v) for k, v in received.items()}, {str(k): int(v) for k, v in derived.items()}

    def forget_missing_files(self, received: list[str], derived: list[str]) -> list[str]:
        """Rows whose file is gone. A received instance: its row goes and its series becomes FAILED with the reason
        (an operator must look: the PACS got Success for it). A derived instance: its rows go and the series is
        derived again (COMPLETE), which rewrites the same deterministic UIDs. Returns the affected series UIDs."""
        affected: set[str] = set()
        with self.db.transaction() as s:
            for path in received:
                inst = s.scalar(select(Instance).where(Instance.path == path))
                if inst is None:
                    continue
                series = s.get(Series, inst.series_fk)
                s.delete(inst)
                if series is not None:
                    series.state = SeriesState.FAILED
                    series.failed_stage = "spool"
                    series.last_error = f"received instance {inst.sop_uid} missing from the spool ({path})"
                    series.updated_at = utcnow()
                    affected.add(series.series_uid)
            for path in derived:
                der = s.scalar(select(DerivedInstance).where(DerivedInstance.path == path))
                if der is None:
                    continue
                series = s.get(Series, der.series_fk)
                s.execute(delete(DerivedInstance).where(DerivedInstance.series_fk == der.series_fk))
                if series is not None and series.state in (SeriesState.DERIVED, SeriesState.FAILED):
                    series.state = SeriesState.COMPLETE
                    series.updated_at = utcnow()
                    affected.add(series.series_uid)
        return sorted(affected)

    def finished_before(self, cutoff: datetime) -> list[tuple[int, str]]:
        """(id, UID) of SENT or SKIPPED series whose spool files still exist and that finished before cutoff; not one
        whose originals are still to be passed on (forwards.py): they may be the destination's only copy."""
        with self.db.session() as s:
            rows = s.execute(
                select(Series.id, Series.series_uid).where(
                    Series.origin == "received",
                    Series.state.in_((SeriesState.SENT, SeriesState.SKIPPED)),
                    Series.purged_at.is_(None),
                    Series.updated_at < cutoff,
                    ~forward_pending(),
                )
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def series_by_state(self, state: SeriesState) -> list[tuple[int, str]]:
        with self.db.session() as s:
            rows = s.execute(
                select(Series.id, Series.series_uid).where(Series.origin == "received", Series.state == state)
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def series_id(self, series_uid: str) -> int | None:
        with self.db.session() as s:
            return s.scalar(select(Series.id).where(Series.series_uid == series_uid))

    def begin_purge(self, series_id: int, allowed: tuple[SeriesState, ...]) -> list[str] | None:
        """Mark a series in one of ``allowed`` states purged (its tombstone) and return its files' paths, rows kept:
        the caller deletes the files, then :meth:`finish_purge` drops the rows. A crash in between leaves rows of a
        tombstoned series, which the start-up check finishes purging; never files without rows, which it would
        index as received and so denoise and send again. None when the series is no longer in ``allowed`` (an
        instance arrived since it was chosen): nothing is purged. The row is locked (FOR UPDATE) like the receiver's,
        so the two cannot interleave: after the tombstone the receiver refuses the series' instances until
        :meth:`finish_purge` (intake.py)."""
        with self.db.transaction() as s:
            series = s.get(Series, series_id, with_for_update=True)
            if series is None or series.state not in allowed:
                return None
            series.purged_at = utcnow()
            series.updated_at = utcnow()
            return self._paths(s, series_id)

    def finish_purge(self, series_id: int) -> None:
        """Drop the instance and derived rows of a tombstoned series (its files are gone)."""
        with self.db.transaction() as s:
            s.execute(delete(Instance).where(Instance.series_fk == series_id))
            s.execute(delete(DerivedInstance).where(DerivedInstance.series_fk == series_id))

    def unfinished_purges(self) -> list[tuple[int, str, list[str]]]:
        """(id, UID, file paths) of tombstoned series that still have rows: purges a crash interrupted."""
        with self.db.session() as s:
            rows = s.execute(select(Series.id, Series.series_uid).where(Series.purged_at.is_not(None))).all()
            found = [(int(r[0]), str(r[1]), self._paths(s, int(r[0]))) for r in rows]
        return [f for f in found if f[2]]

    @staticmethod
    def _paths(s: Session, series_id: int) -> list[str]:
        paths = [str(p) for p in s.scalars(select(Instance.path).where(Instance.series_fk == series_id))]
        return paths + [
            str(p) for p in s.scalars(select(DerivedInstance.path).where(DerivedInstance.series_fk == series_id))
        ]
