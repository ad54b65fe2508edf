"""Forwards in the catalog (store/catalog/forwards.py), on SQLite and PostgreSQL: which series are due, the ledger
that makes a retry send only what is missing, backoff that never gives up, late instances, retention's guard."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from dicom_denoise_node.store.catalog import Catalog, InstanceMeta, SeriesState, utcnow

CT = "1.2.840.10008.5.1.4.1.1.2"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
LATER = timedelta(seconds=3600)


def meta(series: str, n: int, sop_class: str = CT) -> InstanceMeta:
    return InstanceMeta("P1", "1.2.3", series, f"{series}.{n}", sop_class, "1.2.840.10008.1.2.1", "CT", "LD", n,
                        f"/spool/{series}/{n}", 10)  # fmt: skip


@pytest.fixture
def catalog(catalog_url):
    cat = Catalog(catalog_url)
    yield cat
    cat.close()


def complete(catalog: Catalog, series: str, rule: str, count: int = 2, sop_class: str = CT) -> int:
    """A received series of ``count`` instances, routed by ``rule`` ("" = none) and COMPLETE; its id."""
    for n in range(count):
        catalog.intake.record_instance(meta(series, n, sop_class))
    series_id = catalog.housekeeping.series_id(series)
    assert series_id is not None
    catalog.completion.set_route(series_id, rule)
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    return series_id


def claim(catalog: Catalog, now=None):
    return catalog.forwards.claim(["fwd"], [DOSE_SR], lease_s=600, now=now)


def test_the_series_of_a_forwarding_rule_and_dose_reports_are_due_once_complete_until_confirmed(catalog):
    catalog.intake.record_instance(meta("1.1", 0))  # still RECEIVING: not yet
    complete(catalog, "1.2", "other")  # another rule's: never
    assert claim(catalog) is None
    complete(catalog, "1.3", "fwd")
    sr_id = complete(catalog, "1.4", "", 1, DOSE_SR)  # no rule (SKIPPED later): a dose report
    catalog.completion.skip(sr_id, "no routing rule matched")
    first = claim(catalog)
    assert first is not None and first.series_uid == "1.3" and first.rule == "fwd" and first.attempts == 0
    assert claim(catalog) is not None  # the dose report, while the first is leased
    assert claim(catalog) is None
    assert [uid for uid, _ in catalog.forwards.originals(first.series_id)] == ["1.3.0", "1.3.1"]
    catalog.forwards.record_confirmed(first, "PACS", ["1.3.0", "1.3.1"])
    assert catalog.forwards.confirmed(first.series_id, "PACS") == {"1.3.0", "1.3.1"}
    assert catalog.forwards.confirmed(first.series_id, "OTHER") == set()
    assert catalog.forwards.succeeded(first)
    assert claim(catalog, now=utcnow() + LATER) is not None  # the leased dose report, its lease over
    assert claim(catalog, now=utcnow() + LATER) is None  # the confirmed series: done


def test_a_failed_forward_backs_off_and_is_never_given_up(catalog):
    complete(catalog, "2.1", "fwd")
    now = utcnow()
    for attempt in range(1, 8):
        got = claim(catalog, now=now)
        assert got is not None and got.attempts == attempt - 1
        retry_at = catalog.forwards.failed(got, f"PACS down ({attempt})", backoff_s=1, backoff_max_s=4)
        assert retry_at is not None
        assert claim(catalog, now=retry_at - timedelta(milliseconds=10)) is None  # backing off
        now = retry_at + timedelta(seconds=1)
    assert retry_at - utcnow() <= timedelta(seconds=4.5)  # capped at backoff_max_s
    assert claim(catalog, now=now) is not None  # still tried after 7 failures
    assert catalog.views.series_state("2.1") is SeriesState.COMPLETE  # the series' own state is not touched


def test_late_instances_are_forwarded_again_and_a_lost_lease_writes_nothing(catalog):
    series_id = complete(catalog, "3.1", "fwd")
    first = claim(catalog)
    assert first is not None
    catalog.forwards.record_confirmed(first, "PACS", ["3.1.0", "3.1.1"])
    assert catalog.forwards.succeeded(first)
    catalog.intake.record_instance(meta("3.1", 2))  # a late instance: a new generation, RECEIVING again
    assert claim(catalog) is None
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    again = claim(catalog)
    assert again is not None and again.generation > first.generation and again.attempts == 0
    missing = {uid for uid, _ in catalog.forwards.originals(series_id)} - catalog.forwards.confirmed(series_id, "PACS")
    assert missing == {"3.1.2"}  # the ledger: only what PACS has not confirmed goes again
    stale = replace(again, owner="another-node#x")
    assert not catalog.forwards.succeeded(stale) and catalog.forwards.failed(stale, "x", 1, 1) is None


def test_retention_keeps_series_whose_originals_are_pending_and_a_restart_drops_own_leases(catalog):
    series_id = complete(catalog, "4.1", "fwd")
    catalog.completion.skip(series_id, "no rule")  # SKIPPED: retention's to purge after sent_days …
    got = claim(catalog)
    assert got is not None
    assert catalog.housekeeping.finished_before(utcnow() + LATER) == []  # … not while forwarding is pending
    assert catalog.forwards.release_own() == 1
    again = claim(catalog)  # at once, not after the lease of the dead claim
    assert again is not None and catalog.forwards.succeeded(again)
    assert [uid for _, uid in catalog.housekeeping.finished_before(utcnow() + LATER)] == ["4.1"]
