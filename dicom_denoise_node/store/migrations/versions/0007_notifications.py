"""notifications (webhook events and their delivery) and quality_summaries (each processing run's guard and noise
figures)

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-12
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("series_fk", sa.Integer(), nullable=True),
        sa.Column("node_id", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("delivered_to", sa.Text(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["series_fk"], ["series.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notifications_event"), ["event"], unique=False)
        batch_op.create_index(batch_op.f("ix_notifications_series_fk"), ["series_fk"], unique=False)
        batch_op.create_index(batch_op.f("ix_notifications_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_notifications_created_at"), ["created_at"], unique=False)
    op.create_table(
        "quality_summaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_fk", sa.Integer(), nullable=False),
        sa.Column("derived_series_uid", sa.String(length=64), nullable=False),
        sa.Column("derivation_key", sa.String(length=64), nullable=False),
        sa.Column("slices", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Integer(), nullable=False),
        sa.Column("noise_before", sa.Float(), nullable=True),
        sa.Column("noise_after", sa.Float(), nullable=True),
        sa.Column("guard_policy", sa.String(length=8), nullable=False),
        sa.Column("first_flag", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["series_fk"], ["series.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("quality_summaries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_quality_summaries_series_fk"), ["series_fk"], unique=False)
        batch_op.create_index(batch_op.f("ix_quality_summaries_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("quality_summaries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quality_summaries_created_at"))
        batch_op.drop_index(batch_op.f("ix_quality_summaries_series_fk"))
    op.drop_table("quality_summaries")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_created_at"))
        batch_op.drop_index(batch_op.f("ix_notifications_state"))
        batch_op.drop_index(batch_op.f("ix_notifications_series_fk"))
        batch_op.drop_index(batch_op.f("ix_notifications_event"))
    op.drop_table("notifications")
