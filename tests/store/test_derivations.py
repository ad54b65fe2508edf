"""The catalog's derivations: each way a source series was derived keeps its numbering variant across retries and
reprocessing, a new way gets the next one, and a catalog from before them numbers its old series variant 0."""

from __future__ import annotations

import functools
import sqlite3
import threading
from datetime import timedelta

from sqlalchemy import create_engine

from dicom_denoise_node.complete.routing import destinations_for
from dicom_denoise_node.config import load_settings
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.send.deliver import SendJob
from dicom_denoise_node.store.catalog import Catalog, InstanceMeta, utcnow
from dicom_denoise_node.store.migrations import upgrade_catalog


def _series(catalog: Catalog, uid: str = "1.2.3") -> int:
    meta = InstanceMeta("P", "1.2", uid, uid + ".1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "CT", "LD",
                        1, "/x", 1)  # fmt: skip
    catalog.intake.record_instance(meta)
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    assert claim is not None
    return claim.series_id


def test_a_derivation_keeps_its_variant_and_a_new_one_gets_the_next(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        sid, other = _series(catalog), _series(catalog, "1.2.4")
        assert catalog.derivations.variant(sid, "1.1.0", "full") == 0
        assert catalog.derivations.variant(sid, "1.1.0@strength=0.5", "soft") == 1
        assert catalog.derivations.variant(sid, "1.1.0", "full") == 0  # a retry: the same number
        assert catalog.derivations.variant(sid, "1.2.0", "full") == 2  # a new model version: a new number
        assert catalog.derivations.variant(other, "1.1.0@strength=0.5", "soft") == 0  # per source series
        long_key = "9" * 300  # keys are cut to the column, consistently
        assert catalog.derivations.variant(sid, long_key) == catalog.derivations.variant(sid, long_key) == 3
        assert [d["variant"] for d in catalog.derivations.of_series(sid)] == [0, 1, 2, 3]
        assert catalog.derivations.last_rules(sid) == ["soft", "full"]  # made in this run, first made first
    finally:
        catalog.close()


def test_a_catalog_from_before_derivations_numbers_its_derived_series_variant_0(tmp_path):
    path = tmp_path / "old.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    upgrade_catalog(engine, "0007")
    engine.dispose()
    now = "2026-01-01 10:00:00.000000"
    con = sqlite3.connect(path)
    con.execute("INSERT INTO patients (id, patient_id, created_at) VALUES (1, 'P1', ?)", (now,))
    con.execute("INSERT INTO studies (id, study_uid, patient_fk, created_at) VALUES (1, '1.2.3', 1, ?)", (now,))
    con.execute(
        "INSERT INTO series (id, series_uid, study_fk, modality, description, state, generation, attempts, "
        "last_received_at, origin, slices_done, slices_total, created_at, updated_at, derivation_key, rule) "
        "VALUES (1, '1.2.3.4', 1, 'CT', 'LD chest', 'SENT', 1, 0, ?, 'received', 0, 0, ?, ?, '1.4.0@ensemble=8', "
        "'ct-axial')",
        (now, now, now),
    )
    con.commit()
    con.close()
    catalog = Catalog(f"sqlite:///{path}")
    try:
        assert catalog.derivations.of_series(1)[0] | {"used_at": None} == {
            "key": "1.4.0@ensemble=8", "variant": 0, "rule": "ct-axial", "used_at": None
        }  # fmt: skip
        assert catalog.derivations.variant(1, "1.4.0@ensemble=8@strength=0.5") == 1  # not 0: that number is taken
    finally:
        catalog.close()


def test_a_series_that_fell_through_goes_to_the_destinations_of_every_rule_that_made_a_series(tmp_path):
    """deliver.SendJob: the rules of the last processing run decide, each destination once."""
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "127.0.0.1"\nport = 1\n'
        '[[destinations]]\nname = "b"\nae_title = "B"\nhost = "127.0.0.1"\nport = 2\n'
        '[[rules]]\nname = "soft"\nstrength = 0.5\nfall_through = true\ndestinations = ["a"]\n'
        '[[rules]]\nname = "full"\ndestinations = ["a", "b"]\n'
    )
    settings = load_settings(cfg)
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        sid = _series(catalog)
        catalog.completion.set_route(sid, "soft")
        job = SendJob(catalog, settings, NodeMetrics(catalog, lambda: 1.0),
                      functools.partial(destinations_for, settings), threading.Event())  # fmt: skip
        assert [d.key for d in job.destinations(sid)] == ["a"]  # nothing derived yet: the series' rule
        catalog.derivations.variant(sid, "1.0@strength=0.5", "soft")
        catalog.derivations.variant(sid, "1.0", "full")
        assert [d.key for d in job.destinations(sid)] == ["a", "b"]
    finally:
        catalog.close()
