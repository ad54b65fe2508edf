"""series.strength: the strength `denoise-node reprocess --strength` asked for (NULL: the rule's, or [model] strength)

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-11
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A new nullable column: SQLite adds it in place (never the copy-and-move, see 0005), as PostgreSQL does.
    with op.batch_alter_table("series", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("strength", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("strength")
