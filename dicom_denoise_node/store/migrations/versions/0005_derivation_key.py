"""series.model_version renamed derivation_key: it holds the derivation key (``1.4.0@ensemble=8``), not a version

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode, but never the copy-and-move: SQLite (3.25+) renames a column in place, as PostgreSQL does, and a
    # copy of ``series`` would fail its children's foreign keys and rewrite the largest table for a name.
    with op.batch_alter_table("series", schema=None, recreate="never") as batch_op:
        batch_op.alter_column("model_version", new_column_name="derivation_key")


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None, recreate="never") as batch_op:
        batch_op.alter_column("derivation_key", new_column_name="model_version")
