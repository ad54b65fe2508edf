"""Group commit (group_commit.py) and the catalog's batched instance records on a real SQLite file."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from dicom_denoise_node.store.catalog import Catalog
from dicom_denoise_node.store.group_commit import GroupCommit
from tests.peers import wait_until
from tests.store.test_catalog import meta


def _submit_all(group: GroupCommit, items: list, errors: dict) -> list[threading.Thread]:
    def one(item) -> None:
        try:
            group.submit(item)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            errors[item] = exc

    threads = [threading.Thread(target=one, args=(item,)) for item in items]
    for t in threads:
        t.start()
    return threads


def _queued(group: GroupCommit, n: int) -> bool:
    return wait_until(lambda: group.queued() == n, timeout=10)


def test_requests_queued_behind_a_commit_share_the_next_batch_and_errors_stay_with_their_item():
    committed: list[list[int]] = []

    def commit_batch(items):
        committed.append(list(items))
        return [ValueError(f"bad {i}") if i == 3 else None for i in items]

    group = GroupCommit(commit_batch)
    errors: dict = {}
    with group.commit_in_progress():  # a commit in progress: the next eight callers queue behind it
        threads = _submit_all(group, list(range(8)), errors)
        assert _queued(group, 8)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(committed) == 1 and sorted(committed[0]) == list(range(8))
    assert set(errors) == {3} and "bad 3" in str(errors[3])
    assert (group.stats.batches, group.stats.items, group.stats.largest) == (1, 8, 8)


def test_batches_are_capped_and_a_raising_batch_fails_its_callers_without_hanging():
    calls: list[int] = []

    def commit_batch(items):
        calls.append(len(items))
        raise OSError("disk gone")

    group = GroupCommit(commit_batch, max_batch=3)
    errors: dict = {}
    with group.commit_in_progress():
        threads = _submit_all(group, list(range(7)), errors)
        assert _queued(group, 7)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert sorted(calls) == [1, 3, 3]
    assert set(errors) == set(range(7)) and all(isinstance(e, OSError) for e in errors.values())


def test_lone_caller_commits_its_own_item():
    group = GroupCommit(lambda items: [None] * len(items))
    group.submit("x")
    assert (group.stats.batches, group.stats.items) == (1, 1)


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    yield cat
    cat.close()


def test_concurrent_instances_are_committed_together_on_a_real_catalog(catalog):
    catalog.intake.record_instance(meta(0))  # the series exists: the rest take the prepared-statement path
    errors: dict = {}
    with catalog.intake.group_commit.commit_in_progress():
        threads = _submit_all(catalog.intake.group_commit, [meta(n) for n in range(1, 9)], errors)
        assert _queued(catalog.intake.group_commit, 8)
    for t in threads:
        t.join(30)
    assert not errors
    assert catalog.intake.group_commit.stats.largest == 8
    with catalog.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM instances")).scalar() == 9
        assert conn.execute(text("SELECT generation FROM series")).scalar() == 9


def test_a_bad_instance_in_a_batch_fails_alone(catalog):
    catalog.intake.record_instance(meta(0, series="9.9"))
    with catalog.db.engine.begin() as conn:  # a series of the training archive: the node may not receive into it
        conn.execute(text("UPDATE series SET origin = 'archive' WHERE series_uid = '9.9'"))
    catalog.intake.record_instance(meta(0))
    items = [meta(1), meta(1, series="9.9"), meta(2), meta(3, series="5.5")]
    errors: dict = {}
    with catalog.intake.group_commit.commit_in_progress():
        threads = _submit_all(catalog.intake.group_commit, items, errors)
        assert _queued(catalog.intake.group_commit, 4)
    for t in threads:
        t.join(30)
    assert list(errors) == [items[1]] and "training archive" in str(errors[items[1]])
    with catalog.db.engine.connect() as conn:
        uids = set(conn.execute(text("SELECT sop_uid FROM instances")).scalars())
    assert uids == {"9.9.0", "1.2.3.4.0", "1.2.3.4.1", "1.2.3.4.2", "5.5.3"}
