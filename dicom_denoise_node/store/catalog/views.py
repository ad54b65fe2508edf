"""Views: what `status`, /metrics, /series, the admission limits and the demo read. Reads only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ScalarSelect, func, select

from dicom_denoise_node.store.catalog.engine import SessionSource
from dicom_denoise_node.store.catalog.schema import (
    REPORT_SOURCE,
    DerivedInstance,
    Instance,
    Patient,
    Series,
    SeriesState,
    Study,
)


def _instance_count() -> ScalarSelect[int]:
    """The received instances of the series in the enclosing query (a correlated subquery)."""
    return select(func.count(Instance.id)).where(Instance.series_fk == Series.id).correlate(Series).scalar_subquery()


class Views:
    """Read-only summaries of received series (``catalog.views``); all they need is sessions, so a read-only
    catalog has them too."""

    def __init__(self, db: SessionSource) -> None:
        self.db = db

    def series_overview(self, limit: int = 50) -> list[dict[str, object]]:
        """Rows for `denoise-node status`: newest first, with instance and derived counts."""
        with self.db.session() as s:
            n_inst = _instance_count()
            n_der = (  # derived images; the quality report (no source instance) is not counted
                select(func.count(DerivedInstance.id))
                .where(DerivedInstance.series_fk == Series.id, DerivedInstance.source_sop_uid != REPORT_SOURCE)
                .correlate(Series)
                .scalar_subquery()
            )
            rows = s.execute(
                select(Series, Study.study_uid, n_inst, n_der)
                .join(Study, Series.study_fk == Study.id)
                .where(Series.origin == "received")
                .order_by(Series.updated_at.desc())
                .limit(limit)
            ).all()
            return [
                {
                    "series_uid": r[0].series_uid,
                    "study_uid": r[1],
                    "modality": r[0].modality,
                    "description": r[0].description,
                    "rule": r[0].rule,
                    "state": r[0].state,
                    "instances": r[2],
                    "derived": r[3],
                    "attempts": r[0].attempts,
                    "last_error": r[0].last_error,
                    "derived_series_uid": r[0].derived_series_uid,
                    "slices_done": r[0].slices_done,
                    "slices_total": r[0].slices_total,
                    "processing_seconds": r[0].processing_seconds,
                    "updated_at": r[0].updated_at,
                }
                for r in rows
            ]

    def pending_series(self) -> int:
        """Received series not yet denoised (RECEIVING, COMPLETE or PROCESSING): the worker's queue length."""
        waiting = (SeriesState.RECEIVING, SeriesState.COMPLETE, SeriesState.PROCESSING)
        with self.db.session() as s:
            return int(
                s.scalar(select(func.count(Series.id)).where(Series.origin == "received", Series.state.in_(waiting)))
                or 0
            )

    def last_received_at(self, series_id: int) -> datetime | None:
        """When the series' last instance arrived (UTC): the start of its receive-to-sent latency."""
        with self.db.session() as s:
            return s.scalar(select(Series.last_received_at).where(Series.id == series_id))

    def series_state(self, series_uid: str) -> SeriesState | None:
        with self.db.session() as s:
            state = s.scalar(select(Series.state).where(Series.series_uid == series_uid))
            return None if state is None else SeriesState(state)

    def state_counts(self) -> dict[str, int]:
        """Received series per state (every state present, zeros included), for /metrics and `status`."""
        counts = {state.value: 0 for state in SeriesState if state != SeriesState.ARCHIVED}
        with self.db.session() as s:
            for state, n in s.execute(
                select(Series.state, func.count(Series.id)).where(Series.origin == "received").group_by(Series.state)
            ).all():
                counts[str(state)] = int(n)
        return counts

    def series_progress(self, series_uid: str) -> dict[str, object] | None:
        """One series as the demo's progress display shows it (state, instances, slices, result), or None."""
        with self.db.session() as s:
            n_inst = _instance_count()
            row = s.execute(select(Series, n_inst).where(Series.series_uid == series_uid)).first()
            if row is None:
                return None
            series = row[0]
            return {
                "state": series.state,
                "instances": int(row[1]),
                "slices_done": series.slices_done or 0,
                "slices_total": series.slices_total or 0,
                "derived_series_uid": series.derived_series_uid or "",
                "derivation_key": series.derivation_key or "",
                "processing_seconds": series.processing_seconds,
                "last_error": series.last_error or "",
            }

    def failed_series(self, limit: int = 50) -> list[dict[str, object]]:
        """FAILED received series, newest first, with the stage and the reason: the status page's failures."""
        with self.db.session() as s:
            rows = s.scalars(
                select(Series)
                .where(Series.origin == "received", Series.state == SeriesState.FAILED)
                .order_by(Series.updated_at.desc())
                .limit(limit)
            ).all()
            return [
                {
                    "series_uid": r.series_uid,
                    "rule": r.rule,
                    "stage": r.failed_stage or "",
                    "reason": r.last_error or "",
                    "attempts": r.attempts,
                    "purged": r.purged_at is not None,
                    "updated_at": r.updated_at,
                }
                for r in rows
            ]

    def patients_of(self, series_uids: list[str]) -> dict[str, tuple[str, str | None]]:
        """Series UID → (PatientID, the path of one of its received instances or None): only for a page whose admin
        turned patient data on (``[http] show_patient_data``)."""
        if not series_uids:
            return {}
        first = select(func.min(Instance.path)).where(Instance.series_fk == Series.id).correlate(Series)
        with self.db.session() as s:
            rows = s.execute(
                select(Series.series_uid, Patient.patient_id, first.scalar_subquery())
                .join(Study, Series.study_fk == Study.id)
                .join(Patient, Study.patient_fk == Patient.id)
                .where(Series.series_uid.in_(series_uids))
            ).all()
        return {str(uid): (str(pid), None if path is None else str(path)) for uid, pid, path in rows}
