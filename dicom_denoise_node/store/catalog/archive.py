"""The training archive's table: each archived patient's role in training (train_ld, train_hd, test, val).

It belongs to the trainer (trainer/split.py writes and reads it; `catalog scan` fills the archive columns of the
series table, origin "archive" and state ARCHIVED). It is declared here, beside the node's tables, because one
Alembic history migrates one database and the node never imports the trainer.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from dicom_denoise_node.store.catalog.schema import Base, UTCDateTime, utcnow


class Split(Base):
    """Patient-level role in training: train_ld, train_hd, test or val (reproducible by seed)."""

    __tablename__ = "splits"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), unique=True)
    role: Mapped[str] = mapped_column(String(16), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
