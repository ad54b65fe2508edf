"""Catalog schema versions: migrations equal the models, a catalog of the previous schema is upgraded in place
with its data kept, and only `serve` and `migrate` create or migrate (every other command refuses a missing, older
or newer catalog; an older node refuses a newer one)."""

from __future__ import annotations

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from dicom_denoise_node.receive.audit import association_rows, record_association
from dicom_denoise_node.store.catalog import Base, Catalog, SeriesState, open_readonly
from dicom_denoise_node.store.migrations import (
    BASELINE,
    CatalogMissing,
    CatalogOutdated,
    CatalogTooNew,
    current_revision,
    head_revision,
    upgrade_catalog,
)

NOW = "2026-01-01 10:00:00.000000"


def _schema_1_catalog(path) -> None:
    """A catalog as the node wrote it before migrations existed: schema 1 tables, no alembic_version, data."""
    engine = create_engine(f"sqlite:///{path}")
    upgrade_catalog(engine, BASELINE)
    engine.dispose()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE alembic_version")
    now = "2026-01-01 10:00:00.000000"
    con.execute("INSERT INTO patients (id, patient_id, created_at) VALUES (1, 'P1', ?)", (now,))
    con.execute("INSERT INTO studies (id, study_uid, patient_fk, created_at) VALUES (1, '1.2.3', 1, ?)", (now,))
    con.execute(
        "INSERT INTO series (id, series_uid, study_fk, modality, description, state, generation, attempts, "
        "last_received_at, origin, slices_done, slices_total, created_at, updated_at) "
        "VALUES (1, '1.2.3.4', 1, 'CT', 'LD chest', 'SENT', 3, 0, ?, 'received', 0, 0, ?, ?)",
        (now, now, now),
    )
    con.execute(
        "INSERT INTO instances (sop_uid, series_fk, sop_class_uid, transfer_syntax, path, size, calling_aet, "
        "received_at) VALUES ('1.2.3.4.5', 1, '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', '/x', 10, "
        "'CT1', ?)",
        (now,),
    )
    con.commit()
    con.close()


def test_migrations_build_exactly_the_models(catalog_url):
    """On each backend (SQLite, a real PostgreSQL server): the migrations are the schema's only definition."""
    catalog = Catalog(catalog_url)
    try:
        assert current_revision(catalog.db.engine) == head_revision()
        with catalog.db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
    finally:
        catalog.close()


def test_previous_schema_is_upgraded_in_place_with_its_data(tmp_path):
    path = tmp_path / "old.sqlite"
    _schema_1_catalog(path)
    before = {c["name"] for c in inspect(create_engine(f"sqlite:///{path}")).get_columns("series")}
    assert "rule" not in before

    catalog = Catalog(f"sqlite:///{path}")  # what the node does at start
    try:
        assert current_revision(catalog.db.engine) == head_revision() != BASELINE
        assert catalog.views.series_state("1.2.3.4") is SeriesState.SENT
        row = catalog.views.series_overview()[0]
        assert row["description"] == "LD chest" and row["instances"] == 1 and row["rule"] is None
        # New parts of the schema work on the upgraded file.
        record_association(catalog, "CT1", "DENOISE", "127.0.0.1", 5000, False, "test")
        assert association_rows(catalog)[0]["reason"] == "test"
        assert catalog.views.state_counts()["SENT"] == 1
    finally:
        catalog.close()
    # Opening again is a no-op (already at head).
    Catalog(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
    con.close()


def test_stamped_baseline_upgrades_too(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")
    upgrade_catalog(engine, BASELINE)
    assert current_revision(engine) == BASELINE
    upgrade_catalog(engine)
    assert current_revision(engine) == head_revision()
    assert "associations" in inspect(engine).get_table_names()
    engine.dispose()


def test_nodes_starting_together_migrate_a_postgresql_catalog_once(postgres_url):
    """Several nodes opening one empty PostgreSQL catalog at the same moment: one migrates (under the advisory lock),
    the others wait and find the newest revision; none fails."""
    import subprocess
    import sys

    go = "import sys; from dicom_denoise_node.store.catalog import Catalog; Catalog(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", go, postgres_url], stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)
    engine = create_engine(postgres_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_the_derivation_key_column_keeps_what_model_version_held(catalog_url):
    """0005 renames series.model_version to derivation_key on each backend (SQLite in batch mode), value kept."""
    engine = create_engine(catalog_url)
    try:
        upgrade_catalog(engine, "0004")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO patients (id, patient_id, created_at) VALUES (1, 'P1', :t)"), {"t": NOW})
            conn.execute(
                text("INSERT INTO studies (id, study_uid, patient_fk, created_at) VALUES (1, '1.2.3', 1, :t)"),
                {"t": NOW},
            )
            conn.execute(
                text(
                    "INSERT INTO series (id, series_uid, study_fk, modality, description, state, generation, "
                    "attempts, last_received_at, origin, slices_done, slices_total, created_at, updated_at, "
                    "model_version) VALUES (1, '1.2.3.4', 1, 'CT', 'LD', 'SENT', 1, 0, :t, 'received', 0, 0, :t, "
                    ":t, '1.4.0@ensemble=8')"
                ),
                {"t": NOW},
            )
    finally:
        engine.dispose()
    catalog = Catalog(catalog_url)  # what the node does at start
    try:
        assert current_revision(catalog.db.engine) == head_revision()
        progress = catalog.views.series_progress("1.2.3.4")
        assert progress is not None and progress["derivation_key"] == "1.4.0@ensemble=8"
        columns = {c["name"] for c in inspect(catalog.db.engine).get_columns("series")}
        assert "derivation_key" in columns and "model_version" not in columns
    finally:
        catalog.close()


def test_a_command_never_creates_a_missing_catalog_nor_its_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'data' / 'catalog.sqlite'}"
    with pytest.raises(CatalogMissing, match="no catalog at .*nothing was created"):
        Catalog(url, migrate=False)
    with pytest.raises(CatalogMissing):
        open_readonly(url, require_schema=True)
    assert not (tmp_path / "data").exists()


def test_a_command_refuses_an_empty_an_older_or_a_newer_catalog_and_changes_nothing(tmp_path):
    path = tmp_path / "catalog.sqlite"
    path.touch()  # an empty database: no schema
    with pytest.raises(CatalogMissing, match="is empty"):
        Catalog(f"sqlite:///{path}", migrate=False)
    engine = create_engine(f"sqlite:///{path}")
    upgrade_catalog(engine, "0004")
    for opener in (lambda u: Catalog(u, migrate=False), lambda u: open_readonly(u, require_schema=True)):
        with pytest.raises(CatalogOutdated, match=f"revision 0004, .* needs {head_revision()}: run `denoise-node migr"):
            opener(f"sqlite:///{path}")
    assert current_revision(engine) == "0004"  # nothing was migrated
    upgrade_catalog(engine)
    Catalog(f"sqlite:///{path}", migrate=False).close()  # at this code's revision: opened
    open_readonly(f"sqlite:///{path}", require_schema=True).close()
    _stamp(engine, "9999_from_the_future")
    with pytest.raises(CatalogTooNew, match=f"revision 9999_from_the_future, newer .* newest is {head_revision()}"):
        Catalog(f"sqlite:///{path}", migrate=False)
    engine.dispose()


def _stamp(engine, revision: str) -> None:
    """What a newer denoise-node leaves: its own revision id in alembic_version."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_an_older_node_refuses_to_migrate_a_newer_catalog_naming_both_revisions(catalog_url):
    """Even `serve` (which migrates) must not run on, nor try to downgrade, a schema it does not know."""
    Catalog(catalog_url).close()
    engine = create_engine(catalog_url)
    _stamp(engine, "9999_from_the_future")
    with pytest.raises(CatalogTooNew, match=f"9999_from_the_future.*newest is {head_revision()}.*nothing was changed"):
        Catalog(catalog_url)
    assert current_revision(engine) == "9999_from_the_future"
    engine.dispose()


def test_upgrade_reports_where_it_started(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    assert upgrade_catalog(engine, "0003") == (None, "0003")
    assert upgrade_catalog(engine) == ("0003", head_revision())
    assert upgrade_catalog(engine) == (head_revision(), head_revision())
    engine.dispose()
