"""① Intake: record a received instance (and its patient, study and series) before the SCP answers Success.

Concurrent C-STOREs (one thread per association) share commits through group_commit.py; the common case (another
instance of a series already arriving) takes a two-statement fast path on both backends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_denoise_node.store.catalog.engine import CatalogEngine
from dicom_denoise_node.store.catalog.schema import (
    Base,
    Instance,
    Patient,
    Series,
    SeriesState,
    Study,
    UTCDateTime,
    utcnow,
)
from dicom_denoise_node.store.group_commit import GroupCommit, GroupCommitStats

log = logging.getLogger(__name__)


class SeriesBeingPurged(RuntimeError):
    """An instance for a series whose purge is under way: refused (nothing kept), to be sent again once it ends."""


@dataclass(frozen=True)
class InstanceMeta:
    """What the receiver learnt about one stored instance (no PHI beyond the patient ID)."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str
    series_description: str
    instance_number: int | None
    path: str
    size: int
    calling_aet: str = ""


# Bound as UTCDateTime, so each backend stores the time in the format its ORM columns use.
_BUMP_ARRIVING = text(
    "UPDATE series SET generation = generation + 1, last_received_at = :now "
    "WHERE series_uid = :uid AND state = 'RECEIVING' AND origin = 'received' RETURNING id"
).bindparams(bindparam("now", type_=UTCDateTime()))
_UPSERT_INSTANCE = text(
    "INSERT INTO instances (sop_uid, series_fk, sop_class_uid, transfer_syntax, instance_number, path, size, "
    "calling_aet, received_at) VALUES (:sop_uid, :series_fk, :sop_class_uid, :transfer_syntax, :instance_number, "
    ":path, :size, :calling_aet, :received_at) ON CONFLICT (sop_uid) DO UPDATE SET "
    "series_fk = excluded.series_fk, sop_class_uid = excluded.sop_class_uid, "
    "transfer_syntax = excluded.transfer_syntax, instance_number = excluded.instance_number, "
    "path = excluded.path, size = excluded.size, calling_aet = excluded.calling_aet, "
    "received_at = excluded.received_at"
).bindparams(bindparam("received_at", type_=UTCDateTime()))


class Intake:
    """Recording received instances (``catalog.intake``)."""

    def __init__(self, db: CatalogEngine) -> None:
        self.db = db
        # Public so that a test can hold a commit in progress and watch callers queue behind it.
        self.group_commit: GroupCommit[InstanceMeta] = GroupCommit(self._record_batch)

    @property
    def instance_commits(self) -> GroupCommitStats:
        """How many transactions recorded how many received instances (group commit, /metrics)."""
        return self.group_commit.stats

    def record_instance(self, meta: InstanceMeta) -> None:
        """Insert or replace an instance row and wake its series (RECEIVING, generation+1); returns once committed.

        Concurrent callers (one thread per association) share commits: group_commit.py."""
        self.group_commit.submit(meta)

    def _record_batch(self, metas: Sequence[InstanceMeta]) -> list[BaseException | None]:
        """One transaction for a batch; if it fails, each instance alone, so that only the bad one fails."""
        if len(metas) > 1:
            try:
                with self.db.transaction() as s:
                    for meta in metas:
                        self._record_in(s, meta)
                return [None] * len(metas)
            except Exception as exc:  # noqa: BLE001 - isolated below
                log.info("batch of %d catalog records failed (%s); recording them one by one", len(metas), exc)
        results: list[BaseException | None] = []
        for meta in metas:
            try:
                self._record_one(meta)
                results.append(None)
            except Exception as exc:  # noqa: BLE001 - returned to that instance's caller
                results.append(exc)
        return results

    def _record_one(self, meta: InstanceMeta) -> None:
        """One instance in its own transaction. Another process (a second receiver on a shared catalog) may insert
        the same patient, study or series first: the unique index makes us wait for its commit and fail; the next
        attempt finds the row. Each of the three parents can collide once, hence four attempts."""
        for attempt in range(4):
            try:
                with self.db.transaction() as s:
                    self._record_in(s, meta)
                return
            except IntegrityError:
                if attempt == 3:
                    raise

    def _record_in(self, s: Session, meta: InstanceMeta) -> None:
        if not self._record_arriving(s, meta):
            self._record(s, meta)

    @staticmethod
    def _record_arriving(s: Session, meta: InstanceMeta) -> bool:
        """The common case in two statements: another instance of a RECEIVING series (bump the series, upsert the
        instance). The ORM path below costs four lookups, two flushes and statement construction per instance (about
        3 ms on SQLite, a round trip each on PostgreSQL); this is what keeps the C-STORE path short under load
        (bench/receive.py, bench/receivers.py). Returns False, having written nothing, for any other case."""
        now = utcnow()
        series_id = s.execute(_BUMP_ARRIVING, {"now": now, "uid": meta.series_uid}).scalar()
        if series_id is None:
            return False
        s.execute(
            _UPSERT_INSTANCE,
            {
                "sop_uid": meta.sop_uid,
                "series_fk": series_id,
                "sop_class_uid": meta.sop_class_uid,
                "transfer_syntax": meta.transfer_syntax,
                "instance_number": meta.instance_number,
                "path": meta.path,
                "size": meta.size,
                "calling_aet": meta.calling_aet,
                "received_at": now,
            },
        )
        return True

    @staticmethod
    def _revive_purged(s: Session, series: Series) -> None:
        """An instance for a tombstoned series: refused while its purge is under way (its rows still exist: the purge
        would delete this file or row next), otherwise the purged series lives again (tombstone cleared, so that the
        start-up check never takes it for an interrupted purge)."""
        if s.scalar(select(Instance.id).where(Instance.series_fk == series.id).limit(1)) is not None:
            raise SeriesBeingPurged(f"series {series.series_uid} is being purged (retention); send it again later")
        log.info("series %s: purged earlier, received again", series.series_uid)
        series.purged_at = None

    @staticmethod
    def _ensure(s: Session, table: type[Base], key: str, values: dict[str, object]) -> bool:
        """Insert a parent row unless its unique key exists (``INSERT … ON CONFLICT DO NOTHING``); True if inserted.

        Two receivers on one catalog may create the same patient, study or series at the same moment: on PostgreSQL
        the second insert waits for the first to commit and then does nothing, instead of failing the C-STORE."""
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        statement = insert(table).values(**values).on_conflict_do_nothing(index_elements=[key])
        # RETURNING, not rowcount: psycopg reports -1 for either outcome, so every parent looked new on PostgreSQL.
        return s.execute(statement.returning(getattr(table, key))).first() is not None

    def _record(self, s: Session, meta: InstanceMeta) -> None:
        now = utcnow()
        self._ensure(s, Patient, "patient_id", {"patient_id": meta.patient_id})
        patient_fk = s.scalar(select(Patient.id).where(Patient.patient_id == meta.patient_id))
        self._ensure(s, Study, "study_uid", {"study_uid": meta.study_uid, "patient_fk": patient_fk})
        study_fk = s.scalar(select(Study.id).where(Study.study_uid == meta.study_uid))
        created = self._ensure(
            s,
            Series,
            "series_uid",
            {
                "series_uid": meta.series_uid,
                "study_fk": study_fk,
                "modality": meta.modality[:16],
                "description": meta.series_description[:64],
                "state": SeriesState.RECEIVING,
                "last_received_at": now,
            },
        )
        series = s.scalar(select(Series).where(Series.series_uid == meta.series_uid).with_for_update())
        assert series is not None
        if series.purged_at is not None:
            self._revive_purged(s, series)
        if series.origin != "received":
            raise ValueError(f"series {meta.series_uid} belongs to the training archive in this catalog")
        if not created:
            if series.state != SeriesState.RECEIVING:
                log.info("series %s: new instance while %s, back to RECEIVING", series.series_uid, series.state)
            # A PROCESSING series keeps its state; the worker sees the new generation and re-queues it.
            if series.state != SeriesState.PROCESSING:
                series.state = SeriesState.RECEIVING
                series.attempts = 0
                series.last_error = None
                series.failed_stage = None
                series.next_attempt_at = None
            series.last_received_at = now
        series.generation = series.generation + 1
        fields = {"sop_uid": meta.sop_uid, "series_fk": series.id, "sop_class_uid": meta.sop_class_uid,
                  "transfer_syntax": meta.transfer_syntax, "path": meta.path}  # fmt: skip
        self._ensure(s, Instance, "sop_uid", fields)  # a resend may reach the other receiver at the same moment
        inst = s.scalar(select(Instance).where(Instance.sop_uid == meta.sop_uid))
        assert inst is not None
        inst.series_fk = series.id
        inst.received_at = now
        inst.sop_class_uid = meta.sop_class_uid
        inst.transfer_syntax = meta.transfer_syntax
        inst.instance_number = meta.instance_number
        inst.path = meta.path
        inst.size = meta.size
        inst.calling_aet = meta.calling_aet
        inst.received_at = now
