"""derivations: every derivation of a source series (its key), with the variant its SeriesNumbers are made from

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-12
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "derivations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_fk", sa.Integer(), nullable=False),
        sa.Column("derivation_key", sa.String(length=255), nullable=False),
        sa.Column("variant", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["series_fk"], ["series.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_fk", "derivation_key"),
        sa.UniqueConstraint("series_fk", "variant"),
    )
    with op.batch_alter_table("derivations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_derivations_series_fk"), ["series_fk"], unique=False)
    # A series derived before this revision was numbered source + 1000 (report + 2000): variant 0 of its key, so a
    # later derivation of it at another strength or version gets a number of its own.
    op.execute(
        "INSERT INTO derivations (series_fk, derivation_key, variant, rule, created_at, used_at) "
        "SELECT id, derivation_key, 0, COALESCE(rule, ''), updated_at, updated_at FROM series "
        "WHERE derivation_key IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("derivations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_derivations_series_fk"))
    op.drop_table("derivations")
