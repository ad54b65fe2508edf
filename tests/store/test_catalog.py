import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from dicom_denoise_node.store.catalog import Catalog, DerivedRecord, InstanceMeta, SeriesState, utcnow


def meta(n: int, series: str = "1.2.3.4", path: str = "/x") -> InstanceMeta:
    return InstanceMeta(
        patient_id="P1",
        study_uid="1.2.3",
        series_uid=series,
        sop_uid=f"{series}.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        modality="CT",
        series_description="LD",
        instance_number=n,
        path=f"{path}/{n}",
        size=10,
    )


@pytest.fixture
def catalog(catalog_url):
    """The catalog on each backend (SQLite file, real PostgreSQL server): every test below runs on both."""
    cat = Catalog(catalog_url)
    yield cat
    cat.close()


@pytest.fixture
def sqlite_catalog(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    yield cat
    cat.close()


def test_catalog_is_a_real_wal_file(sqlite_catalog, tmp_path):
    sqlite_catalog.intake.record_instance(meta(1))
    assert (tmp_path / "catalog.sqlite").exists()
    with sqlite_catalog.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_late_instance_reopens_a_finished_series_on_both_backends(catalog):
    """A series COMPLETE (or SENT, SKIPPED…) that gets another instance is RECEIVING again, with a new generation.
    On PostgreSQL the "is this series new?" test once read psycopg's rowcount (-1 either way): it stayed COMPLETE."""
    catalog.intake.record_instance(meta(1))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    assert catalog.views.series_state("1.2.3.4") is SeriesState.COMPLETE
    catalog.intake.record_instance(meta(2))
    assert catalog.views.series_state("1.2.3.4") is SeriesState.RECEIVING


def test_full_life_cycle(catalog):
    for n in range(3):
        catalog.intake.record_instance(meta(n))
    catalog.intake.record_instance(meta(1))  # a resend replaces, never duplicates
    assert len(catalog.queue.instances(1)) == 3
    assert catalog.completion.complete_quiet_series(60) == []  # not quiet yet
    assert [
        uid for _, uid, _ in catalog.completion.complete_quiet_series(60, now=utcnow() + timedelta(seconds=61))
    ] == ["1.2.3.4"]
    claim = catalog.queue.claim_for_processing()
    assert claim is not None and catalog.queue.claim_for_processing() is None
    assert catalog.views.series_state("1.2.3.4") is SeriesState.PROCESSING
    derived = [DerivedRecord(f"9.{n}", f"1.2.3.4.{n}", f"/d/{n}") for n in range(3)]
    assert catalog.queue.finish_processing(claim, "9", "v1", derived)
    assert catalog.views.series_state("1.2.3.4") is SeriesState.DERIVED
    send = catalog.deliveries.claim_for_sending(lease_s=600)
    assert send is not None
    assert catalog.deliveries.claim_for_sending(lease_s=600) is None  # leased
    catalog.deliveries.record_delivery(send, "pacs")
    assert catalog.deliveries.delivered_to(send) == {"pacs"}
    assert catalog.deliveries.send_succeeded(send)
    assert catalog.views.series_state("1.2.3.4") is SeriesState.SENT
    assert len(catalog.deliveries.derived_instances(send.series_id)) == 3


def test_late_instance_during_processing_requeues(catalog):
    catalog.intake.record_instance(meta(1))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    catalog.intake.record_instance(meta(2))  # arrives while the worker runs
    assert catalog.views.series_state("1.2.3.4") is SeriesState.PROCESSING
    assert not catalog.queue.finish_processing(claim, "9", "v1", [])
    assert catalog.views.series_state("1.2.3.4") is SeriesState.RECEIVING


def test_send_backoff_then_failed_then_retry(catalog):
    catalog.intake.record_instance(meta(1))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    catalog.queue.finish_processing(claim, "9", "v1", [DerivedRecord("9.1", "1.2.3.4.1", "/d/1")])
    c1 = catalog.deliveries.claim_for_sending(600)
    assert (
        catalog.deliveries.send_failed(c1, "down", max_attempts=2, backoff_s=100, backoff_max_s=1000)
        is SeriesState.DERIVED
    )
    assert catalog.deliveries.claim_for_sending(600) is None  # waiting for backoff
    c2 = catalog.deliveries.claim_for_sending(600, now=utcnow() + timedelta(seconds=101))
    assert c2 is not None and c2.attempts == 1
    assert catalog.deliveries.send_failed(c2, "still down", 2, 100, 1000) is SeriesState.FAILED
    rows = catalog.views.series_overview()
    assert rows[0]["state"] == "FAILED" and rows[0]["last_error"] == "still down" and rows[0]["attempts"] == 2
    assert catalog.recovery.retry("1.2.3.4") is SeriesState.DERIVED
    assert catalog.deliveries.claim_for_sending(600) is not None
    with pytest.raises(KeyError):
        catalog.recovery.retry("7.7.7")


def test_processing_failure_retry_goes_back_to_complete(catalog):
    catalog.intake.record_instance(meta(1))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    assert catalog.queue.fail(claim.series_id, "process", "bad pixels", SeriesState.PROCESSING)
    assert not catalog.queue.fail(claim.series_id, "process", "again", SeriesState.PROCESSING)  # guarded by state
    assert catalog.views.series_overview()[0]["last_error"] == "bad pixels"
    assert catalog.recovery.retry("1.2.3.4") is SeriesState.COMPLETE
    with pytest.raises(ValueError, match="not FAILED"):
        catalog.recovery.retry("1.2.3.4")


def test_restart_recovers_processing(catalog):
    catalog.intake.record_instance(meta(1))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    catalog.queue.claim_for_processing()
    assert catalog.recovery.recover_after_restart() == ["1.2.3.4"]
    assert catalog.views.series_state("1.2.3.4") is SeriesState.COMPLETE


def test_concurrent_claims_take_each_series_once(catalog_url):
    first = Catalog(catalog_url)
    series = [f"1.2.3.{s + 10}" for s in range(30)]
    for uid in series:
        first.intake.record_instance(meta(1, series=uid))
    first.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    # Catalogs with their own engines behave like worker processes (or hosts): no shared lock, only the SQL claim.
    catalogs = [first, Catalog(catalog_url, node_id="b"), Catalog(catalog_url, node_id="c")]
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(cat):
        for _ in range(40):
            c = cat.queue.claim_for_processing()
            if c is not None:
                with lock:
                    claimed.append(c.series_uid)

    threads = [threading.Thread(target=worker, args=(c,)) for c in catalogs for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(series)
    for c in catalogs:
        c.close()


def _one_complete_series(catalog) -> None:
    catalog.intake.record_instance(meta(1))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))


def test_a_dead_workers_claim_is_taken_over_once_its_lease_runs_out(catalog_url):
    """Two workers on one catalog: the first stops renewing (it died); after its lease the second takes the series,
    and nothing the first might still write (progress, finish, requeue, fail) lands."""
    a, b = Catalog(catalog_url, node_id="host-a:/data"), Catalog(catalog_url, node_id="host-b:/data")
    try:
        _one_complete_series(a)
        first = a.queue.claim_for_processing(lease_s=30)
        assert first is not None and first.owner.startswith("host-a:/data#")
        assert b.queue.claim_for_processing(lease_s=30) is None  # the lease holds
        assert a.queue.renew_claim(first, 30)
        later = utcnow() + timedelta(seconds=31)
        second = b.queue.claim_for_processing(lease_s=30, now=later)
        assert second is not None and second.owner.startswith("host-b:/data#") and second.attempts == 2
        assert not a.queue.renew_claim(first, 30)
        a.queue.record_progress(first, 1, 1)
        assert not a.queue.finish_processing(first, "9", "v1", [DerivedRecord("9.1", "1.2.3.4.1", "/d/1")])
        assert not a.queue.requeue(first)
        assert not a.queue.fail(first.series_id, "process", "late", SeriesState.PROCESSING, owner=first.owner)
        assert a.views.series_state("1.2.3.4") is SeriesState.PROCESSING  # still the second worker's
        assert a.deliveries.derived_instances(second.series_id) == []
        assert b.queue.finish_processing(second, "9", "v1", [DerivedRecord("9.1", "1.2.3.4.1", "/d/1")])
        assert b.views.series_state("1.2.3.4") is SeriesState.DERIVED
    finally:
        a.close()
        b.close()


def test_a_send_claim_taken_over_after_its_lease_writes_nothing(catalog_url):
    """A send that outlasts its lease: the second node's claim decides SENT or the backoff; the first node's late
    success or failure writes nothing (it would mark SENT a series the other is still sending, or cut its backoff)."""
    a, b = Catalog(catalog_url, node_id="host-a:/data"), Catalog(catalog_url, node_id="host-b:/data")
    try:
        _one_complete_series(a)
        work = a.queue.claim_for_processing()
        assert a.queue.finish_processing(work, "9", "v1", [DerivedRecord("9.1", "1.2.3.4.1", "/d/1")])
        first = a.deliveries.claim_for_sending(lease_s=30)
        assert first is not None and b.deliveries.claim_for_sending(lease_s=30) is None  # the lease holds
        second = b.deliveries.claim_for_sending(lease_s=30, now=utcnow() + timedelta(seconds=31))
        assert second is not None and second.owner != first.owner
        assert a.deliveries.send_failed(first, "late failure", max_attempts=1, backoff_s=10, backoff_max_s=10) is None
        assert not a.deliveries.send_succeeded(first)
        assert a.views.series_state("1.2.3.4") is SeriesState.DERIVED  # neither FAILED nor SENT by the stale claim
        assert (
            b.deliveries.send_failed(second, "down", max_attempts=3, backoff_s=10, backoff_max_s=10)
            is SeriesState.DERIVED
        )
        third = b.deliveries.claim_for_sending(lease_s=30, now=utcnow() + timedelta(seconds=11))
        assert third is not None and third.attempts == 1  # only the owner's attempt counted
        assert b.deliveries.send_succeeded(third)
        assert a.views.series_state("1.2.3.4") is SeriesState.SENT
    finally:
        a.close()
        b.close()


def test_a_restart_takes_back_only_its_own_claims(catalog_url):
    """A node restarting gives back what it was processing at once, and leaves another node's live claim alone."""
    a, b = Catalog(catalog_url, node_id="host-a:/data"), Catalog(catalog_url, node_id="host-b:/data")
    try:
        for n, uid in enumerate(("1.2.3.4", "1.2.3.5")):
            a.intake.record_instance(meta(n, series=uid))
        a.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
        mine, theirs = a.queue.claim_for_processing(), b.queue.claim_for_processing()
        assert mine is not None and theirs is not None
        restarted = Catalog(catalog_url, node_id="host-a:/data")
        try:
            assert restarted.recovery.recover_after_restart() == [mine.series_uid]
        finally:
            restarted.close()
        assert a.views.series_state(mine.series_uid) is SeriesState.COMPLETE
        assert a.views.series_state(theirs.series_uid) is SeriesState.PROCESSING
        assert b.queue.renew_claim(theirs, 30)
    finally:
        a.close()
        b.close()


def test_catalog_file_is_owner_only(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'new' / 'catalog.sqlite'}")
    try:
        with cat.db.session() as s:
            s.execute(text("SELECT 1"))
        for path in (tmp_path / "new").iterdir():
            assert path.stat().st_mode & 0o077 == 0, path
    finally:
        cat.close()


def test_read_only_opener_reads_a_live_catalog_and_never_writes_or_migrates(sqlite_catalog, tmp_path):
    catalog = sqlite_catalog
    from sqlalchemy.exc import OperationalError

    from dicom_denoise_node.store.catalog import open_readonly

    missing = tmp_path / "none.sqlite"
    reader = open_readonly(f"sqlite:///{missing}")
    with pytest.raises(OperationalError):  # no file is created for it, and no schema
        reader.views.state_counts()
    reader.close()
    assert not missing.exists()

    catalog.intake.record_instance(meta(1))
    catalog.intake.record_instance(meta(2))
    reader = open_readonly(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        progress = reader.views.series_progress("1.2.3.4")
        assert progress is not None and progress["state"] == "RECEIVING" and progress["instances"] == 2
        assert reader.views.series_progress("9.9") is None
        assert reader.views.state_counts()["RECEIVING"] == 1
        with pytest.raises(OperationalError, match="readonly"), reader.db.session() as s:
            s.execute(text("DELETE FROM instances"))
            s.commit()
    finally:
        reader.close()
    assert catalog.views.series_progress("1.2.3.4")["instances"] == 2  # type: ignore[index]


def test_a_failed_statement_does_not_carry_its_parameters(catalog):
    """hide_parameters: a catalog error that is logged (or shown) must not quote a PatientID."""
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as failed, catalog.db.transaction() as s:
        s.execute(text("INSERT INTO no_such_table VALUES (:patient)"), {"patient": "PHI-ID-4711"})
    assert "PHI-ID-4711" not in str(failed.value)


def test_a_series_whose_processing_never_finishes_ends_failed_after_max_attempts(catalog):
    """A poison series (the worker dies in it: OOM kill, an aborting decoder) is not claimed at every start forever."""
    catalog.intake.record_instance(meta(1))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    for _ in range(3):
        claim = catalog.queue.claim_for_processing(max_attempts=3)
        assert claim is not None
        assert catalog.recovery.recover_after_restart() == ["1.2.3.4"]  # the node died while PROCESSING
    assert catalog.queue.claim_for_processing(max_attempts=3) is None
    row = catalog.views.series_overview()[0]
    assert row["state"] == SeriesState.FAILED and "did not finish in 3 attempts" in str(row["last_error"])
    assert catalog.recovery.retry("1.2.3.4") is SeriesState.COMPLETE  # an operator can start over
    claim = catalog.queue.claim_for_processing(max_attempts=3)
    assert claim is not None and catalog.queue.requeue(claim)  # a clean shutdown is not an attempt
    assert catalog.views.series_overview()[0]["attempts"] == 0


def test_receivers_on_one_catalog_record_the_first_instances_of_a_new_series_together(catalog_url):
    """Four receivers (own engines) get the first instances of a new patient, study and series at the same moment:
    each parent row is created once and every instance is recorded (none refused for a unique-key race)."""
    receivers = [Catalog(catalog_url, node_id=f"r{i}") for i in range(4)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def receive(cat, n):
        barrier.wait()
        try:
            cat.intake.record_instance(meta(n, series="1.2.3.77"))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    try:
        for _round in range(5):  # bounded: five rounds of eight simultaneous first instances
            threads = [threading.Thread(target=receive, args=(receivers[n % 4], n)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            rows = receivers[0].views.series_overview()
            assert len(rows) == 1 and rows[0]["instances"] == 8, rows
            with receivers[0].db.transaction() as s:  # a new patient, study and series for the next round
                for table in ("instances", "series", "studies", "patients"):
                    s.execute(text(f"DELETE FROM {table}"))
    finally:
        for cat in receivers:
            cat.close()


def _sent_series(catalog, series: str = "1.2.3.4") -> None:
    """One series received, derived (one instance) and acknowledged by the destination "pacs"."""
    catalog.intake.record_instance(meta(1, series))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    catalog.queue.finish_processing(claim, "9", "v1", [DerivedRecord(f"9.{series}", f"{series}.1", f"/d/{series}")])
    send = catalog.deliveries.claim_for_sending(600)
    catalog.deliveries.record_delivery(send, "pacs")
    assert catalog.deliveries.send_succeeded(send)


def test_retry_failed_requeues_every_failed_series_and_nothing_else(catalog):
    for series in ("1.2.3.4", "1.2.3.5", "1.2.3.6"):
        catalog.intake.record_instance(meta(1, series))
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    processing = catalog.queue.claim_for_processing()
    assert catalog.queue.fail(processing.series_id, "process", "boom", SeriesState.PROCESSING)
    derived = catalog.queue.claim_for_processing()
    catalog.queue.finish_processing(derived, "9", "v1", [DerivedRecord("9.1", f"{derived.series_uid}.1", "/d/1")])
    send = catalog.deliveries.claim_for_sending(600)
    assert catalog.deliveries.send_failed(send, "PACS down", 1, 1, 1) is SeriesState.FAILED
    untouched = catalog.queue.claim_for_processing()  # the third: PROCESSING, not FAILED

    assert sorted(catalog.recovery.retry_failed()) == sorted(
        [(processing.series_uid, SeriesState.COMPLETE), (derived.series_uid, SeriesState.DERIVED)]
    )
    assert catalog.views.series_state(untouched.series_uid) is SeriesState.PROCESSING
    assert catalog.recovery.retry_failed() == []


def test_reprocess_takes_a_sent_series_back_at_its_strength_and_resends_it(catalog):
    _sent_series(catalog)
    assert catalog.recovery.reprocess("1.2.3.4", 0.5) is SeriesState.SENT
    assert catalog.views.series_state("1.2.3.4") is SeriesState.COMPLETE
    claim = catalog.queue.claim_for_processing()
    assert claim is not None and claim.strength == 0.5 and claim.attempts == 1
    # The earlier derived rows stay until the new result replaces them (a failed run keeps what it had).
    assert [d.sop_uid for d in catalog.deliveries.derived_instances(claim.series_id)] == ["9.1.2.3.4"]
    assert catalog.queue.finish_processing(claim, "8", "v1@strength=0.5", [DerivedRecord("8.1", "1.2.3.4.1", "/e/1")])
    assert [d.sop_uid for d in catalog.deliveries.derived_instances(claim.series_id)] == ["8.1"]
    send = catalog.deliveries.claim_for_sending(600)
    assert send is not None and catalog.deliveries.delivered_to(send) == set()  # a new generation: sent again
    # Without --strength the override is dropped: the rule's (or [model]) strength decides again.
    catalog.deliveries.record_delivery(send, "pacs")
    assert catalog.deliveries.send_succeeded(send)
    catalog.recovery.reprocess("1.2.3.4", None)
    assert catalog.queue.claim_for_processing().strength is None


def test_reprocess_refuses_what_it_must_not_take_with_the_reason(catalog):
    catalog.intake.record_instance(meta(1))
    with pytest.raises(ValueError, match="RECEIVING: wait until it is COMPLETE"):
        catalog.recovery.reprocess("1.2.3.4", 0.5)
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    with pytest.raises(ValueError, match="PROCESSING: a worker is denoising it"):
        catalog.recovery.reprocess("1.2.3.4", 0.5)
    catalog.queue.finish_processing(claim, "9", "v1", [DerivedRecord("9.1", "1.2.3.4.1", "/d/1")])
    send = catalog.deliveries.claim_for_sending(600)
    with pytest.raises(ValueError, match="is being sent"):  # its sender would record SENT for the old series
        catalog.recovery.reprocess("1.2.3.4", 0.5)
    assert catalog.views.series_state("1.2.3.4") is SeriesState.DERIVED
    assert catalog.deliveries.send_succeeded(send)
    with pytest.raises(KeyError, match="no series 9.9"):
        catalog.recovery.reprocess("9.9", 0.5)
    with pytest.raises(ValueError, match="expected 0"):
        catalog.recovery.reprocess("1.2.3.4", 1.5)
    assert catalog.views.series_state("1.2.3.4") is SeriesState.SENT
