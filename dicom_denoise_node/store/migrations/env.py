"""Alembic environment of the catalog: run from :func:`dicom_denoise_node.store.migrations.upgrade_catalog` on the
connection it passes (never from an alembic.ini; the node has no second place for its database URL)."""

from alembic import context

from dicom_denoise_node.store.catalog import Base

connection = context.config.attributes["connection"]
# render_as_batch: SQLite alters tables by copy-and-move, which Alembic's batch mode does for us.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
