"""The catalog's tables: patients, studies, series (with their state), instances, derived instances, deliveries and
the association audit. The training archive's table is in archive.py.

Series states::

    RECEIVING → COMPLETE → PROCESSING → DERIVED → SENT      (FAILED with last_error, from PROCESSING or DERIVED)
    RECEIVING → SKIPPED                                      (no routing rule matched; last_error says why)
    ARCHIVED                                                 (indexed by `catalog scan` for training only)

The schema is versioned with Alembic (../migrations/); a writable Catalog upgrades its database to the newest
revision when it opens it.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

REPORT_SOURCE = ""  # DerivedInstance.source_sop_uid of the quality report (an SR of the whole series, no one source)


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
    # The worker holding a PROCESSING claim ("<node id>#<claim token>") and until when: a worker that dies stops
    # renewing, and another takes the series over once the lease has run out (queue.py).
    claimed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    derived_series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Training archive: where the series came from, its dose domain (LD/HD/REF) and body part.
    origin: Mapped[str] = mapped_column(String(16), default="received")
    domain: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)
    body_part: Mapped[str | None] = mapped_column(String(32), nullable=True)
    exposure_mas: Mapped[float | None] = mapped_column(nullable=True)
    # What the derived UIDs were made from: the model version, plus strength / self-ensemble when not 1
    # (denoise/derive.py derivation_key, e.g. "1.4.0@ensemble=8"), cut to 64 characters.
    derivation_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The strength `denoise-node reprocess --strength` asked for: it wins over the rule's and [model] strength for
    # this series' next processing runs (NULL: those decide).
    strength: Mapped[float | None] = mapped_column(nullable=True)
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


class InstanceDelivery(Base):
    """One destination confirmed one derived instance (Success or Warning): a resumed send skips it."""

    __tablename__ = "instance_deliveries"
    __table_args__ = (UniqueConstraint("destination", "sop_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_uid: Mapped[str] = mapped_column(String(64))
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
