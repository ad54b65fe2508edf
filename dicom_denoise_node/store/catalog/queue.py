"""The queue: each series' way through the states, as atomic claims (``UPDATE … WHERE state = :expected``), so two
workers never take the same series and a restart resumes from what is written here.

Several workers, on one host or many, may share one catalog (PostgreSQL): a claim names its owner
(``claimed_by = "<node id>#<token>"``) and holds a lease (``lease_until``) that the owner renews while it works
(denoise/lease.py). Candidates are read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so workers polling together take
different series instead of queueing on one row (SQLite has one writer and ignores the clause). A worker that dies
stops renewing; once its lease has run out another worker takes the series over (counted as an attempt), and every
later write of the dead claim (progress, finish, requeue, fail) matches no row, since each checks the owner.

    RECEIVING ─complete_quiet_series (completion.py)─► COMPLETE ─claim_for_processing─► PROCESSING
    PROCESSING ─finish_processing─► DERIVED ─► SENT or FAILED: deliveries.py; retry and restarts: recovery.py
    COMPLETE ─skip─► SKIPPED;  FAILED ─retry─► COMPLETE or DERIVED;  PROCESSING at start-up ─► COMPLETE
    SENT, DERIVED, FAILED or COMPLETE ─reprocess (recovery.py)─► COMPLETE, at the strength asked for
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.schema import (
    DerivedInstance,
    Instance,
    Series,
    SeriesState,
    Study,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 120.0


@dataclass(frozen=True)
class Claim:
    """A series a worker now owns, and the generation it must finish; ``owner`` is the catalog's claimed_by value;
    ``strength`` the one `denoise-node reprocess --strength` asked for (None: the rule's, or [model] strength)."""

    series_id: int
    series_uid: str
    study_uid: str
    generation: int
    attempts: int
    owner: str = ""
    strength: float | None = None


@dataclass(frozen=True)
class DerivedRecord:
    sop_uid: str
    source_sop_uid: str
    path: str


class Queue:
    """State transitions of received series through processing, COMPLETE to DERIVED (``catalog.queue``)."""

    def __init__(self, db: CatalogEngine) -> None:
        self.db = db

    # ---- processing ----------------------------------------------------------------------------------------

    def claim_for_processing(
        self, max_attempts: int = 0, lease_s: float = DEFAULT_LEASE_S, now: datetime | None = None
    ) -> Claim | None:
        """Atomically take the oldest COMPLETE series (COMPLETE → PROCESSING), or a PROCESSING one whose lease ran
        out (its worker died), counting the attempt. With ``max_attempts``, a series taken that often already (the
        worker died each time: an out-of-memory kill, a decoder that aborts) ends FAILED instead, so that it cannot
        take the node down at every start."""
        now = now or utcnow()
        claimable = or_(
            Series.state == SeriesState.COMPLETE,
            and_(Series.state == SeriesState.PROCESSING, Series.lease_until < now),
        )
        with self.db.transaction() as s:
            while True:
                row = s.execute(
                    select(
                        Series.id, Series.series_uid, Study.study_uid, Series.generation, Series.attempts,
                        Series.state, Series.claimed_by, Series.strength,
                    )
                    .join(Study, Series.study_fk == Study.id)
                    .where(claimable)
                    .where(or_(Series.rule.is_(None), Series.rule != ""))  # "" = routing has not decided yet
                    .order_by(Series.last_received_at)
                    .limit(1)
                    .with_for_update(of=Series, skip_locked=True)
                ).first()  # fmt: skip
                if row is None:
                    return None
                if row[5] == SeriesState.PROCESSING:
                    log.warning("series %s: the claim of %s ran out (its worker stopped renewing it); taking it over",
                                row[1], row[6])  # fmt: skip
                gave_up = bool(max_attempts) and row[4] >= max_attempts
                reason = f"processing did not finish in {row[4]} attempts (the worker stopped each time: see the log)"
                owner = self.db.new_owner()
                res = s.execute(
                    update(Series)
                    .where(Series.id == row[0], claimable)
                    .values(
                        state=SeriesState.FAILED,
                        failed_stage="process",
                        last_error=reason,
                        claimed_by=None,
                        lease_until=None,
                        updated_at=utcnow(),
                    )
                    if gave_up
                    else update(Series)
                    .where(Series.id == row[0], claimable)
                    .values(
                        state=SeriesState.PROCESSING,
                        attempts=row[4] + 1,
                        slices_done=0,
                        slices_total=0,
                        processing_started_at=utcnow(),
                        processing_seconds=None,
                        claimed_by=owner,
                        lease_until=now + timedelta(seconds=lease_s),
                        updated_at=utcnow(),
                    )
                )
                if gave_up:
                    log.error("series %s state=FAILED: %s", row[1], reason)
                    continue
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    return None
                return Claim(row[0], row[1], row[2], row[3], row[4] + 1, owner, row[7])

    def _holds(self, claim: Claim) -> object:
        """The WHERE clause of a write that only the claim's owner may make."""
        return and_(
            Series.id == claim.series_id, Series.state == SeriesState.PROCESSING, Series.claimed_by == claim.owner
        )

    def renew_claim(self, claim: Claim, lease_s: float) -> bool:
        """Push the claim's lease forward; False when it is no longer this claim's (taken over, or the series left
        PROCESSING): the worker must stop."""
        with self.db.transaction() as s:
            res = s.execute(
                update(Series).where(self._holds(claim)).values(lease_until=utcnow() + timedelta(seconds=lease_s))
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def record_progress(self, claim: Claim, done: int, total: int) -> None:
        """Slices denoised so far in this processing run (only while the claim still holds)."""
        with self.db.transaction() as s:
            s.execute(update(Series).where(self._holds(claim)).values(slices_done=done, slices_total=total))

    def instances(self, series_id: int) -> list[Instance]:
        with self.db.session() as s:
            return list(
                s.scalars(select(Instance).where(Instance.series_fk == series_id).order_by(Instance.instance_number))
            )

    def finish_processing(
        self,
        claim: Claim,
        derived_series_uid: str,
        derivation_key: str,
        derived: list[DerivedRecord],
        processing_seconds: float | None = None,
        hold_reason: str | None = None,
    ) -> bool:
        """PROCESSING → DERIVED with the derived instances, unless new instances arrived meanwhile; with
        ``hold_reason`` (the guard's "hold" policy) → FAILED at stage "guard" in the same commit, so the sender
        never sees it.

        Returns False when the generation moved on (the series goes back to RECEIVING) or the claim is no longer
        this worker's (its lease ran out and another worker took the series: nothing is written).
        """
        with self.db.transaction() as s:
            res = s.execute(
                update(Series)
                .where(self._holds(claim), Series.generation == claim.generation)
                .values(
                    state=SeriesState.FAILED if hold_reason else SeriesState.DERIVED,
                    derived_series_uid=derived_series_uid,
                    derivation_key=derivation_key,
                    processing_seconds=processing_seconds,
                    attempts=0,
                    next_attempt_at=None,
                    last_error=hold_reason[:4000] if hold_reason else None,
                    failed_stage="guard" if hold_reason else None,
                    claimed_by=None,
                    lease_until=None,
                    updated_at=utcnow(),
                )
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                moved_on = s.execute(
                    update(Series)
                    .where(self._holds(claim))
                    .values(state=SeriesState.RECEIVING, claimed_by=None, lease_until=None, updated_at=utcnow())
                )
                if moved_on.rowcount != 1:  # type: ignore[attr-defined]
                    log.warning("series %s: the claim %s was lost (its lease ran out); this result is discarded",
                                claim.series_uid, claim.owner)  # fmt: skip
                return False
            keep = {d.sop_uid for d in derived}
            for old in s.scalars(select(DerivedInstance).where(DerivedInstance.series_fk == claim.series_id)):
                if old.sop_uid not in keep:
                    s.delete(old)
            s.flush()
            existing = {
                d.sop_uid: d
                for d in s.scalars(select(DerivedInstance).where(DerivedInstance.series_fk == claim.series_id))
            }
            for d in derived:
                row = existing.get(d.sop_uid)
                if row is None:
                    s.add(DerivedInstance(series_fk=claim.series_id, **d.__dict__))
                else:
                    row.path, row.source_sop_uid = d.path, d.source_sop_uid
            return True

    def requeue(self, claim: Claim) -> bool:
        """PROCESSING → COMPLETE: a worker gives a series back unfinished (shutdown: not an attempt)."""
        with self.db.transaction() as s:
            res = s.execute(
                update(Series)
                .where(self._holds(claim))
                .values(
                    state=SeriesState.COMPLETE,
                    attempts=Series.attempts - 1,
                    claimed_by=None,
                    lease_until=None,
                    updated_at=utcnow(),
                )
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def fail(self, series_id: int, stage: str, error: str, expected: SeriesState, owner: str | None = None) -> bool:
        """expected → FAILED with the reason; the series is kept for `denoise-node retry`. With ``owner``, only while
        that claim still holds the series."""
        where = [Series.id == series_id, Series.state == expected]
        if owner is not None:
            where.append(Series.claimed_by == owner)
        with self.db.transaction() as s:
            res = s.execute(
                update(Series)
                .where(*where)
                .values(
                    state=SeriesState.FAILED,
                    failed_stage=stage,
                    last_error=error[:4000],
                    next_attempt_at=None,
                    claimed_by=None,
                    lease_until=None,
                    updated_at=utcnow(),
                )
            )
            return res.rowcount == 1  # type: ignore[attr-defined]
