"""per-instance delivery ledger

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_fk", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["series_fk"], ["series.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destination", "sop_uid"),
    )
    with op.batch_alter_table("instance_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instance_deliveries_series_fk"), ["series_fk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instance_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_deliveries_series_fk"))
    op.drop_table("instance_deliveries")
