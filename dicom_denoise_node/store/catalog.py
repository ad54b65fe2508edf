"""The catalog: every received instance, every series and its state, every derived instance and delivery.

The catalog and the spool are the only interface between stages. State changes are atomic claims
(``UPDATE … WHERE state = :expected``), so two workers never take the same series and a restart resumes from
what is written here, never from module globals or directory timestamps.

Series states::

    RECEIVING → COMPLETE → PROCESSING → DERIVED → SENT      (FAILED with last_error, from PROCESSING or DERIVED)
    RECEIVING → SKIPPED                                      (no routing rule matched; last_error says why)

The schema is versioned with Alembic (migrations/); every Catalog() upgrades its database to the newest revision.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from dicom_denoise_node.store.group_commit import GroupCommit, GroupCommitStats

log = logging.getLogger(__name__)


class SeriesState(enum.StrEnum):
    RECEIVING = "RECEIVING"
    COMPLETE = "COMPLETE"
    PROCESSING = "PROCESSING"
    DERIVED = "DERIVED"
    SENT = "SENT"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"  # received, but no routing rule matched: kept until retention, never denoised
    ARCHIVED = "ARCHIVED"  # indexed by `catalog scan` for training; never processed by the node


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog; use utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING, index=True)
    # Bumped by every received instance: a worker only finishes the generation it read.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failed_stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    derived_series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Training archive: where the series came from, its dose domain (LD/HD/REF) and body part.
    origin: Mapped[str] = mapped_column(String(16), default="received")
    domain: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)
    body_part: Mapped[str | None] = mapped_column(String(32), nullable=True)
    exposure_mas: Mapped[float | None] = mapped_column(nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Denoising progress of the current (or last) processing run: for `status` and the demo's progress bar.
    slices_done: Mapped[int] = mapped_column(Integer, default=0)
    slices_total: Mapped[int] = mapped_column(Integer, default=0)
    processing_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    processing_seconds: Mapped[float | None] = mapped_column(nullable=True)
    # Routing (routing.py): NULL = not looked at yet, "" = no rule matched so far, else the rule's name.
    rule: Mapped[str | None] = mapped_column(String(64), nullable=True)
    quiet_period_s: Mapped[float | None] = mapped_column(nullable=True)
    # Set when retention (or `purge`) deleted the series' spool files; the row stays as the audit record.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer, default=0)
    calling_aet: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    series: Mapped[Series] = relationship(back_populates="instances")


class Split(Base):
    """Patient-level role in training: train_ld, train_hd, test or val (reproducible by seed)."""

    __tablename__ = "splits"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), unique=True)
    role: Mapped[str] = mapped_column(String(16), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DerivedInstance(Base):
    __tablename__ = "derived_instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    source_sop_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """One destination acknowledged every derived instance of a series (so a retry skips it)."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("series_fk", "destination"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Association(Base):
    """The association audit: who connected, from where, whether they got in (and why not), what they sent."""

    __tablename__ = "associations"
    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    calling_aet: Mapped[str] = mapped_column(String(16), default="")
    called_aet: Mapped[str] = mapped_column(String(16), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    accepted: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(16), default="")  # released, aborted, closed, rejected


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


@dataclass(frozen=True)
class Claim:
    """A series a worker now owns, and the generation it must finish."""

    series_id: int
    series_uid: str
    study_uid: str
    generation: int
    attempts: int


@dataclass(frozen=True)
class DerivedRecord:
    sop_uid: str
    source_sop_uid: str
    path: str


_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"
_BUMP_ARRIVING = (
    "UPDATE series SET generation = generation + 1, last_received_at = ? "
    "WHERE series_uid = ? AND state = 'RECEIVING' AND origin = 'received' RETURNING id"
)
_UPSERT_INSTANCE = (
    "INSERT INTO instances (sop_uid, series_fk, sop_class_uid, transfer_syntax, instance_number, path, size, "
    "calling_aet, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sop_uid) DO UPDATE SET "
    "series_fk = excluded.series_fk, sop_class_uid = excluded.sop_class_uid, "
    "transfer_syntax = excluded.transfer_syntax, instance_number = excluded.instance_number, "
    "path = excluded.path, size = excluded.size, calling_aet = excluded.calling_aet, "
    "received_at = excluded.received_at"
)


def _sqlite_pragmas(dbapi_connection: object, connection_record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the C-STORE answers Success
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Catalog:
    """SQLAlchemy access to the catalog with the state transitions of the pipeline."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, object] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # Owner-only from the first byte (it holds patient IDs); SQLite gives -wal/-shm the same mode.
                os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        from dicom_denoise_node.store.migrations import upgrade_catalog  # its env imports this module

        upgrade_catalog(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer; serialising writers in-process avoids busy retries under C-STORE load.
        self._write_lock = threading.Lock()
        self._instances: GroupCommit[InstanceMeta] = GroupCommit(self._record_batch)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            yield s

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._write_lock, self._sessions.begin() as s:
            yield s

    # ---- receive -------------------------------------------------------------------------------------------

    @property
    def instance_commits(self) -> GroupCommitStats:
        """How many transactions recorded how many received instances (group commit, /metrics)."""
        return self._instances.stats

    def record_instance(self, meta: InstanceMeta) -> None:
        """Insert or replace an instance row and wake its series (RECEIVING, generation+1); returns once committed.

        Concurrent callers (one thread per association) share commits: group_commit.py."""
        self._instances.submit(meta)

    def _record_batch(self, metas: Sequence[InstanceMeta]) -> list[BaseException | None]:
        """One transaction for a batch; if it fails, each instance alone, so that only the bad one fails."""
        if len(metas) > 1:
            try:
                with self._tx() as s:
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
        for attempt in range(2):
            try:
                with self._tx() as s:
                    self._record_in(s, meta)
                return
            except IntegrityError:  # a concurrent writer (another process) inserted the same parent first
                if attempt:
                    raise

    def _record_in(self, s: Session, meta: InstanceMeta) -> None:
        if not (self.url.startswith("sqlite") and self._record_arriving(s, meta)):
            self._record(s, meta)

    def _record_arriving(self, s: Session, meta: InstanceMeta) -> bool:
        """The common case in two prepared statements: another instance of a RECEIVING series.

        SQLite only (the caller checks). The ORM path below costs four lookups, two flushes and statement
        construction per instance, about 3 ms; this costs about 0.3 ms, which is what keeps the C-STORE path
        short under load (bench/receive.py). Returns False, having written nothing, for any other case.
        """
        now = utcnow().astimezone(UTC).strftime(_SQLITE_DATETIME)  # SQLAlchemy's own SQLite format
        conn = s.connection()
        series_id = conn.exec_driver_sql(_BUMP_ARRIVING, (now, meta.series_uid)).scalar()
        if series_id is None:
            return False
        conn.exec_driver_sql(
            _UPSERT_INSTANCE,
            (
                meta.sop_uid,
                series_id,
                meta.sop_class_uid,
                meta.transfer_syntax,
                meta.instance_number,
                meta.path,
                meta.size,
                meta.calling_aet,
                now,
            ),
        )
        return True

    def _record(self, s: Session, meta: InstanceMeta) -> None:
        now = utcnow()
        patient = s.scalar(select(Patient).where(Patient.patient_id == meta.patient_id))
        if patient is None:
            patient = Patient(patient_id=meta.patient_id)
            s.add(patient)
            s.flush()
        study = s.scalar(select(Study).where(Study.study_uid == meta.study_uid))
        if study is None:
            study = Study(study_uid=meta.study_uid, patient_fk=patient.id)
            s.add(study)
            s.flush()
        series = s.scalar(select(Series).where(Series.series_uid == meta.series_uid))
        if series is not None and series.origin != "received":
            raise ValueError(f"series {meta.series_uid} belongs to the training archive in this catalog")
        if series is None:
            series = Series(
                series_uid=meta.series_uid,
                study_fk=study.id,
                modality=meta.modality[:16],
                description=meta.series_description[:64],
                state=SeriesState.RECEIVING,
                last_received_at=now,
            )
            s.add(series)
            s.flush()
        else:
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
        inst = s.scalar(select(Instance).where(Instance.sop_uid == meta.sop_uid))
        if inst is None:
            inst = Instance(sop_uid=meta.sop_uid, series_fk=series.id)
            s.add(inst)
        inst.sop_class_uid = meta.sop_class_uid
        inst.transfer_syntax = meta.transfer_syntax
        inst.instance_number = meta.instance_number
        inst.path = meta.path
        inst.size = meta.size
        inst.calling_aet = meta.calling_aet
        inst.received_at = now

    # ---- series completion ---------------------------------------------------------------------------------

    def mark_complete(
        self, quiet_period_s: float, now: datetime | None = None, require_route: bool = False
    ) -> list[tuple[int, str, str | None]]:
        """RECEIVING → COMPLETE for every series silent for its quiet period (its rule's, else quiet_period_s).

        Returns (id, UID, rule) of each. ``require_route`` (the node) leaves series routing has not looked at yet.
        """
        now = now or utcnow()
        done: list[tuple[int, str, str | None]] = []
        with self._tx() as s:
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

    # ---- routing (routing.py, series_complete.py) ----------------------------------------------------------

    def unrouted_series(self) -> list[tuple[int, str]]:
        """RECEIVING series routing has not looked at yet."""
        with self.session() as s:
            rows = s.execute(
                select(Series.id, Series.series_uid).where(
                    Series.state == SeriesState.RECEIVING, Series.origin == "received", Series.rule.is_(None)
                )
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def instance_refs(self, series_id: int, limit: int | None = None) -> list[tuple[Path, str]]:
        """(path, calling AE) of a series' instances in arrival order: what routing reads."""
        with self.session() as s:
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
        with self._tx() as s:
            s.execute(update(Series).where(Series.id == series_id).values(rule=rule, quiet_period_s=quiet_period_s))

    def skip(self, series_id: int, reason: str) -> bool:
        """COMPLETE → SKIPPED: no routing rule matched any instance; the reason goes to last_error."""
        with self._tx() as s:
            res = s.execute(
                update(Series)
                .where(Series.id == series_id, Series.state == SeriesState.COMPLETE)
                .values(state=SeriesState.SKIPPED, last_error=reason[:2000], updated_at=utcnow())
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def series_rule(self, series_id: int) -> str | None:
        with self.session() as s:
            return s.scalar(select(Series.rule).where(Series.id == series_id))

    # ---- processing ----------------------------------------------------------------------------------------

    def claim_for_processing(self) -> Claim | None:
        """Atomically take the oldest COMPLETE series (COMPLETE → PROCESSING)."""
        with self._tx() as s:
            row = s.execute(
                select(Series.id, Series.series_uid, Study.study_uid, Series.generation, Series.attempts)
                .join(Study, Series.study_fk == Study.id)
                .where(Series.state == SeriesState.COMPLETE)
                .where(or_(Series.rule.is_(None), Series.rule != ""))  # "" = routing has not decided yet
                .order_by(Series.last_received_at)
                .limit(1)
            ).first()
            if row is None:
                return None
            res = s.execute(
                update(Series)
                .where(Series.id == row[0], Series.state == SeriesState.COMPLETE)
                .values(
                    state=SeriesState.PROCESSING,
                    slices_done=0,
                    slices_total=0,
                    processing_started_at=utcnow(),
                    processing_seconds=None,
                    updated_at=utcnow(),
                )
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return Claim(row[0], row[1], row[2], row[3], row[4])

    def record_progress(self, claim: Claim, done: int, total: int) -> None:
        """Slices denoised so far in this processing run (only while the claim still holds)."""
        with self._tx() as s:
            s.execute(
                update(Series)
                .where(Series.id == claim.series_id, Series.state == SeriesState.PROCESSING)
                .values(slices_done=done, slices_total=total)
            )

    def instances(self, series_id: int) -> list[Instance]:
        with self.session() as s:
            return list(
                s.scalars(select(Instance).where(Instance.series_fk == series_id).order_by(Instance.instance_number))
            )

    def finish_processing(
        self,
        claim: Claim,
        derived_series_uid: str,
        model_version: str,
        derived: list[DerivedRecord],
        processing_seconds: float | None = None,
        hold_reason: str | None = None,
    ) -> bool:
        """PROCESSING → DERIVED with the derived instances, unless new instances arrived meanwhile; with
        ``hold_reason`` (the guard's "hold" policy) → FAILED at stage "guard" in the same commit, so the sender
        never sees it.

        Returns False (and puts the series back to RECEIVING) when the generation moved on.
        """
        with self._tx() as s:
            res = s.execute(
                update(Series)
                .where(
                    Series.id == claim.series_id,
                    Series.state == SeriesState.PROCESSING,
                    Series.generation == claim.generation,
                )
                .values(
                    state=SeriesState.FAILED if hold_reason else SeriesState.DERIVED,
                    derived_series_uid=derived_series_uid,
                    model_version=model_version,
                    processing_seconds=processing_seconds,
                    attempts=0,
                    next_attempt_at=None,
                    last_error=hold_reason[:4000] if hold_reason else None,
                    failed_stage="guard" if hold_reason else None,
                    updated_at=utcnow(),
                )
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                s.execute(
                    update(Series)
                    .where(Series.id == claim.series_id, Series.state == SeriesState.PROCESSING)
                    .values(state=SeriesState.RECEIVING, updated_at=utcnow())
                )
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
        """PROCESSING → COMPLETE: a worker gives a series back unfinished (shutdown)."""
        with self._tx() as s:
            res = s.execute(
                update(Series)
                .where(Series.id == claim.series_id, Series.state == SeriesState.PROCESSING)
                .values(state=SeriesState.COMPLETE, updated_at=utcnow())
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def fail(self, series_id: int, stage: str, error: str, expected: SeriesState) -> bool:
        """expected → FAILED with the reason; the series is kept for `denoise-node retry`."""
        with self._tx() as s:
            res = s.execute(
                update(Series)
                .where(Series.id == series_id, Series.state == expected)
                .values(
                    state=SeriesState.FAILED,
                    failed_stage=stage,
                    last_error=error[:4000],
                    next_attempt_at=None,
                    updated_at=utcnow(),
                )
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    # ---- sending -------------------------------------------------------------------------------------------

    def claim_for_sending(self, lease_s: float, now: datetime | None = None) -> Claim | None:
        """Take a DERIVED series that is due, by pushing its next_attempt_at forward by a lease."""
        now = now or utcnow()
        with self._tx() as s:
            due = (Series.next_attempt_at.is_(None)) | (Series.next_attempt_at <= now)
            row = s.execute(
                select(Series.id, Series.series_uid, Study.study_uid, Series.generation, Series.attempts)
                .join(Study, Series.study_fk == Study.id)
                .where(Series.state == SeriesState.DERIVED, due)
                .order_by(Series.updated_at)
                .limit(1)
            ).first()
            if row is None:
                return None
            res = s.execute(
                update(Series)
                .where(Series.id == row[0], Series.state == SeriesState.DERIVED, due)
                .values(next_attempt_at=now + timedelta(seconds=lease_s))
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return Claim(row[0], row[1], row[2], row[3], row[4])

    def derived_instances(self, series_id: int) -> list[DerivedInstance]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(DerivedInstance).where(DerivedInstance.series_fk == series_id).order_by(DerivedInstance.id)
                )
            )

    def delivered_to(self, claim: Claim) -> set[str]:
        with self.session() as s:
            return set(
                s.scalars(
                    select(Delivery.destination).where(
                        Delivery.series_fk == claim.series_id, Delivery.generation == claim.generation
                    )
                )
            )

    def record_delivery(self, claim: Claim, destination: str) -> None:
        with self._tx() as s:
            row = s.scalar(
                select(Delivery).where(Delivery.series_fk == claim.series_id, Delivery.destination == destination)
            )
            if row is None:
                s.add(Delivery(series_fk=claim.series_id, destination=destination, generation=claim.generation))
            else:
                row.generation, row.delivered_at = claim.generation, utcnow()

    def send_succeeded(self, claim: Claim) -> bool:
        with self._tx() as s:
            res = s.execute(
                update(Series)
                .where(Series.id == claim.series_id, Series.state == SeriesState.DERIVED)
                .values(state=SeriesState.SENT, next_attempt_at=None, last_error=None, updated_at=utcnow())
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def send_failed(
        self, claim: Claim, error: str, max_attempts: int, backoff_s: float, backoff_max_s: float
    ) -> SeriesState:
        """Count the attempt; schedule the next one with exponential backoff or give up (FAILED)."""
        attempts = claim.attempts + 1
        with self._tx() as s:
            if attempts >= max_attempts:
                values: dict[str, object] = dict(state=SeriesState.FAILED, failed_stage="send", next_attempt_at=None)
                outcome = SeriesState.FAILED
            else:
                delay = min(backoff_max_s, backoff_s * 2 ** (attempts - 1))
                values = dict(next_attempt_at=utcnow() + timedelta(seconds=delay))
                outcome = SeriesState.DERIVED
            s.execute(
                update(Series)
                .where(Series.id == claim.series_id, Series.state == SeriesState.DERIVED)
                .values(attempts=attempts, last_error=error[:4000], updated_at=utcnow(), **values)
            )
        return outcome

    # ---- operations ----------------------------------------------------------------------------------------

    def retry(self, series_uid: str) -> SeriesState:
        """Re-queue a FAILED series: back to DERIVED if it failed while sending or was held by the guard (a
        reviewer's "send it as it is"), else COMPLETE (process again)."""
        with self._tx() as s:
            series = s.scalar(select(Series).where(Series.series_uid == series_uid))
            if series is None:
                raise KeyError(f"no series {series_uid} in the catalog")
            if series.state != SeriesState.FAILED:
                raise ValueError(f"series {series_uid} is {series.state}, not FAILED")
            target = SeriesState.DERIVED if series.failed_stage in ("send", "guard") else SeriesState.COMPLETE
            series.state = target
            series.attempts = 0
            series.next_attempt_at = None
            series.failed_stage = None
            return target

    # ---- spool consistency and retention (consistency.py, retention.py) -----------------------------------

    def spool_rows(self) -> tuple[dict[str, int], dict[str, int]]:
        """Paths the catalog expects in the spool: (received instance path → series id, derived path → series id)."""
        with self.session() as s:
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
        with self._tx() as s:
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

    def sent_before(self, cutoff: datetime) -> list[tuple[int, str]]:
        """(id, UID) of SENT or SKIPPED series whose spool files still exist and that finished before cutoff."""
        with self.session() as s:
            rows = s.execute(
                select(Series.id, Series.series_uid).where(
                    Series.origin == "received",
                    Series.state.in_((SeriesState.SENT, SeriesState.SKIPPED)),
                    Series.purged_at.is_(None),
                    Series.updated_at < cutoff,
                )
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def series_by_state(self, state: SeriesState) -> list[tuple[int, str]]:
        with self.session() as s:
            rows = s.execute(
                select(Series.id, Series.series_uid).where(Series.origin == "received", Series.state == state)
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def series_id(self, series_uid: str) -> int | None:
        with self.session() as s:
            return s.scalar(select(Series.id).where(Series.series_uid == series_uid))

    def purge(self, series_id: int, allowed: tuple[SeriesState, ...]) -> list[str]:
        """Drop the instance and derived rows of a series in one of ``allowed`` states, mark it purged, and
        return the file paths the caller deletes (rows first: a crash leaves orphan files, which the start-up
        check removes, never rows without files)."""
        with self._tx() as s:
            series = s.get(Series, series_id)
            if series is None or series.state not in allowed:
                return []
            paths = [str(p) for p in s.scalars(select(Instance.path).where(Instance.series_fk == series_id))]
            paths += [
                str(p) for p in s.scalars(select(DerivedInstance.path).where(DerivedInstance.series_fk == series_id))
            ]
            s.execute(delete(Instance).where(Instance.series_fk == series_id))
            s.execute(delete(DerivedInstance).where(DerivedInstance.series_fk == series_id))
            series.purged_at = utcnow()
            series.updated_at = utcnow()
        return paths

    def recover_after_restart(self) -> list[str]:
        """A PROCESSING series at start-up was interrupted by a crash: give it back to the queue."""
        with self._tx() as s:
            uids = list(s.scalars(select(Series.series_uid).where(Series.state == SeriesState.PROCESSING)))
            s.execute(
                update(Series)
                .where(Series.state == SeriesState.PROCESSING)
                .values(state=SeriesState.COMPLETE, updated_at=utcnow())
            )
            # Leases of a dead sender are not worth waiting for.
            s.execute(
                update(Series)
                .where(Series.state == SeriesState.DERIVED, Series.attempts == 0)
                .values(next_attempt_at=None)
            )
        return uids

    def series_overview(self, limit: int = 50) -> list[dict[str, object]]:
        """Rows for `denoise-node status`: newest first, with instance and derived counts."""
        with self.session() as s:
            n_inst = (
                select(func.count(Instance.id))
                .where(Instance.series_fk == Series.id)
                .correlate(Series)
                .scalar_subquery()
            )
            n_der = (  # derived images; the quality report (no source instance) is not counted
                select(func.count(DerivedInstance.id))
                .where(DerivedInstance.series_fk == Series.id, DerivedInstance.source_sop_uid != "")
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
        with self.session() as s:
            return int(
                s.scalar(select(func.count(Series.id)).where(Series.origin == "received", Series.state.in_(waiting)))
                or 0
            )

    def series_state(self, series_uid: str) -> SeriesState | None:
        with self.session() as s:
            state = s.scalar(select(Series.state).where(Series.series_uid == series_uid))
            return None if state is None else SeriesState(state)

    # ---- association audit (audit.py) ---------------------------------------------------------------------

    def record_association(
        self, calling: str, called: str, address: str, port: int | None, accepted: bool, reason: str | None
    ) -> int:
        """A new audit row; returns its id (an accepted association is completed by finish_association)."""
        with self._tx() as s:
            row = Association(
                calling_aet=calling[:16],
                called_aet=called[:16],
                address=address[:64],
                port=port,
                accepted=accepted,
                reason=reason,
                outcome="" if accepted else "rejected",
                ended_at=None if accepted else utcnow(),
            )
            s.add(row)
            s.flush()
            return int(row.id)

    def finish_association(self, row_id: int, outcome: str, instances: int, failures: int) -> None:
        with self._tx() as s:
            s.execute(
                update(Association)
                .where(Association.id == row_id)
                .values(ended_at=utcnow(), outcome=outcome, instances=instances, failures=failures)
            )

    def associations(self, limit: int = 50) -> list[dict[str, object]]:
        """Newest first, for `denoise-node status --associations` and /associations."""
        with self.session() as s:
            rows = s.scalars(select(Association).order_by(Association.id.desc()).limit(limit)).all()
            return [
                {
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                    "calling_aet": r.calling_aet,
                    "called_aet": r.called_aet,
                    "address": r.address,
                    "port": r.port,
                    "accepted": r.accepted,
                    "reason": r.reason,
                    "outcome": r.outcome,
                    "instances": r.instances,
                    "failures": r.failures,
                }
                for r in rows
            ]

    def state_counts(self) -> dict[str, int]:
        """Received series per state (every state present, zeros included), for /metrics and `status`."""
        counts = {state.value: 0 for state in SeriesState if state != SeriesState.ARCHIVED}
        with self.session() as s:
            for state, n in s.execute(
                select(Series.state, func.count(Series.id)).where(Series.origin == "received").group_by(Series.state)
            ).all():
                counts[str(state)] = int(n)
        return counts

    def write_probe(self) -> None:
        """Take and release the write lock without changing anything: raises if the catalog cannot be written."""
        with self._write_lock, self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                conn.exec_driver_sql("ROLLBACK")
            else:
                with conn.begin():
                    conn.exec_driver_sql("SELECT 1")
