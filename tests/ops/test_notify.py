"""Webhook notifications (ops/notify.py, ops/notify_events.py) on a real SQLite catalog and a real HTTP receiver on
loopback: a FAILED series announced once with its reason, a 500 retried (to that URL only), given up after
max_attempts, nothing lost or repeated by a restart, a retried series that fails again announced again, guard flags
and disk pressure, and nothing older than max_age_h. Time moves by editing a row's due time, never by sleeping.
The last test does it with the running node."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import update

from denoise_harness.node import NodeProcess
from dicom_denoise_node.config import NotifySettings, Settings
from dicom_denoise_node.ops.notify import NotifyJob, url_id
from dicom_denoise_node.store.catalog import Catalog, InstanceMeta, QualityRecord, Series, SeriesState, utcnow
from dicom_denoise_node.store.catalog.notifications import Notification
from dicom_denoise_node.store.disk import MIB, DiskSpace
from tests.ops.webhook import WebhookReceiver
from tests.peers import free_port, storescu, write_ct_series

PATIENT_ID = "PHI-ID-4711"


def _catalog(tmp_path: Path) -> Catalog:
    return Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}", node_id="test-node")


def _failed_series(catalog: Catalog, uid: str, reason: str) -> int:
    """A received series taken by a worker and FAILED with ``reason``, as the worker records it."""
    meta = InstanceMeta(PATIENT_ID, "1.2", uid, f"{uid}.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "CT",
                        "LD", 1, f"/spool/{uid}", 1)  # fmt: skip
    catalog.intake.record_instance(meta)
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    assert claim is not None and claim.series_uid == uid
    assert catalog.queue.fail(claim.series_id, "process", reason, SeriesState.PROCESSING, owner=claim.owner)
    return claim.series_id


def _settings(urls: list[str], **notify: object) -> Settings:
    return Settings(notify=NotifySettings(webhook_url=urls, backoff_s=3600, **notify))  # type: ignore[arg-type]


def _job(catalog: Catalog, settings: Settings, disk: DiskSpace | None = None) -> NotifyJob:
    disk = disk or DiskSpace(Path("/"), 0)
    return NotifyJob(catalog, settings, disk, catalog.db.node_id, threading.Event())


def _make_due(catalog: Catalog) -> None:
    """Move every pending notification's next attempt to now (the backoff has passed)."""
    with catalog.db.transaction() as s:
        s.execute(update(Notification).where(Notification.state == "pending").values(next_attempt_at=utcnow()))


def _rows(catalog: Catalog) -> list[dict[str, object]]:
    return catalog.notifications.rows()


def test_a_failed_series_is_announced_once_with_its_reason_and_a_500_is_retried(tmp_path):
    catalog = _catalog(tmp_path)
    with WebhookReceiver([500, 200]) as hook:
        _failed_series(catalog, "1.2.3", "DecodeError: slice 7 is truncated")
        job = _job(catalog, _settings([hook.url]))
        try:
            job.run()
            (first,) = hook.posts()
            assert first.status == 500 and first.headers["Content-Type"] == "application/json"
            body = first.body
            assert body["event"] == "series_failed" and body["series_uid"] == "1.2.3" and body["study_uid"] == "1.2"
            assert body["reason"] == "DecodeError: slice 7 is truncated" and body["stage"] == "process"
            assert "1.2.3 FAILED at process: DecodeError" in body["text"] and body["node"] == "DENOISE"
            assert PATIENT_ID.encode() not in first.raw  # UIDs, never patient IDs
            (row,) = _rows(catalog)
            assert row["state"] == "pending" and row["attempts"] == 1 and "500" in str(row["last_error"])
            assert "secret-path" not in str(row["last_error"])  # a webhook's path is its secret: never recorded

            job.run()  # the backoff (an hour) has not passed: nothing is sent, nothing is recorded twice
            assert len(hook.posts()) == 1 and len(_rows(catalog)) == 1
            _make_due(catalog)
            job.run()
            second = hook.posts()[1]
            assert second.status == 200 and second.body == body
            assert second.headers["X-Denoise-Notification"] == first.headers["X-Denoise-Notification"]
            (row,) = _rows(catalog)
            assert row["state"] == "sent" and row["attempts"] == 2 and row["last_error"] is None
        finally:
            job.close()
            catalog.close()

        # A restart (a new catalog object and job on the same file): nothing is announced or sent again.
        catalog = _catalog(tmp_path)
        job = _job(catalog, _settings([hook.url]))
        try:
            _make_due(catalog)
            job.run()
            assert len(hook.posts()) == 2 and len(_rows(catalog)) == 1

            # Retried by an admin, and FAILED again: a new failure, a new notification.
            catalog.recovery.retry("1.2.3")
            claim = catalog.queue.claim_for_processing()
            assert claim is not None
            catalog.queue.fail(
                claim.series_id, "process", "MemoryError: again", SeriesState.PROCESSING, owner=claim.owner
            )
            job.run()
            assert [p.body["reason"] for p in hook.posts()] == [body["reason"]] * 2 + ["MemoryError: again"]
            assert len(_rows(catalog)) == 2
        finally:
            job.close()
            catalog.close()


def test_each_url_gets_it_once_and_a_notification_is_given_up_after_max_attempts(tmp_path, caplog):
    catalog = _catalog(tmp_path)
    with WebhookReceiver([200]) as good, WebhookReceiver([500]) as bad:
        _failed_series(catalog, "1.2.4", "send failed")
        job = _job(catalog, _settings([good.url, bad.url], max_attempts=2))
        try:
            job.run()
            assert len(good.posts()) == 1 and len(bad.posts()) == 1
            _make_due(catalog)
            with caplog.at_level(logging.ERROR, logger="dicom_denoise_node.ops.notify"):
                job.run()
            assert len(good.posts()) == 1, "a URL that took it is not sent it again"
            assert len(bad.posts()) == 2
            (row,) = _rows(catalog)
            assert row["state"] == "failed" and row["attempts"] == 2
            given_up = [r.getMessage() for r in caplog.records if "given up after 2 attempts" in r.getMessage()]
            assert len(given_up) == 1 and "secret-path" not in given_up[0]
            with catalog.db.session() as s:
                assert s.query(Notification).one().delivered_to == url_id(good.url)
            _make_due(catalog)
            job.run()
            assert len(bad.posts()) == 2, "a notification given up is not sent again"
        finally:
            job.close()
            catalog.close()


def test_guard_flags_are_announced_for_series_sent_marked_not_for_held_ones(tmp_path):
    catalog = _catalog(tmp_path)
    with WebhookReceiver() as hook:
        marked = _failed_series(catalog, "1.2.5", "x")  # the state does not matter to a quality record
        catalog.quality.record(marked, QualityRecord("2.25.1", "1.0.0", 40, 3, 30.2, 9.1, "mark", "blob removed"))
        catalog.quality.record(marked, QualityRecord("2.25.2", "1.0.0", 40, 0, 30.2, 9.1, "mark"))
        catalog.quality.record(marked, QualityRecord("2.25.3", "1.0.0", 40, 5, 30.2, 9.1, "hold", "shift"))
        job = _job(catalog, _settings([hook.url], events=["guard_flagged"]))
        try:
            job.run()
            job.run()
            (post,) = hook.posts()
            body = post.body
            assert body["event"] == "guard_flagged" and body["flagged"] == 3 and body["slices"] == 40
            assert body["derived_series_uid"] == "2.25.1" and "blob removed" in body["text"]
        finally:
            job.close()
            catalog.close()


def test_disk_pressure_is_announced_when_it_starts_and_when_it_ends_once_each(tmp_path):
    catalog = _catalog(tmp_path)
    free = {"mb": 50.0}
    disk = DiskSpace(tmp_path, 100.0, free_bytes=lambda p: int(free["mb"] * MIB))
    with WebhookReceiver() as hook:
        job = _job(catalog, _settings([hook.url]), disk)
        try:
            job.run()
            job.run()
            assert [p.body["event"] for p in hook.posts()] == ["disk_low"]
            assert hook.posts()[0].body["free_mb"] == 50.0 and "min_free_mb=100" in hook.posts()[0].body["text"]
            job.close()
            job = _job(catalog, _settings([hook.url]), disk)  # a restart remembers what it announced
            job.run()
            free["mb"] = 110.0  # above the watermark, not yet by the margin (64 MiB): a hovering disk is quiet
            job.run()
            assert len(hook.posts()) == 1
            free["mb"] = 200.0
            job.run()
            job.run()
            assert [p.body["event"] for p in hook.posts()] == ["disk_low", "disk_ok"]
            free["mb"] = 10.0
            job.run()
            assert [p.body["event"] for p in hook.posts()] == ["disk_low", "disk_ok", "disk_low"]
        finally:
            job.close()
            catalog.close()


@pytest.mark.parametrize("purged", [False, True])
def test_old_and_purged_failures_are_not_announced(tmp_path, purged):
    catalog = _catalog(tmp_path)
    with WebhookReceiver() as hook:
        series_id = _failed_series(catalog, "1.2.6", "old")
        with catalog.db.transaction() as s:
            values = {"purged_at": utcnow()} if purged else {"updated_at": utcnow() - timedelta(hours=25)}
            s.execute(update(Series).where(Series.id == series_id).values(**values))
        job = _job(catalog, _settings([hook.url], max_age_h=24))
        try:
            job.run()
            assert hook.posts() == [] and _rows(catalog) == []
        finally:
            job.close()
            catalog.close()


@pytest.mark.e2e
def test_a_failed_series_reaches_the_webhook_from_the_running_node_and_a_restart_repeats_nothing(tmp_path, tiny_model):
    """The issue's "Done when": a series FAILED in a running node (its PACS is down and [send] max_attempts = 1)
    reaches a webhook receiver with its UID and reason, through a first answer of 500 and the retry; restarted below
    its disk watermark, the node announces that, and not the failure again."""
    with WebhookReceiver([500, 200]) as hook:
        notify = f'[notify]\nwebhook_url = "{hook.url}"\nbackoff_s = 0.1\npoll_interval_s = 0.2\n'
        notify += 'events = ["series_failed", "disk_low"]\n'  # the untrained model's slices may be flagged too
        nobody = free_port()  # the destination: nothing listens there
        node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": nobody}], max_attempts=1, extra=notify)
        node.start(timeout=180)
        try:
            files = write_ct_series(tmp_path / "in", 2, rows=32, columns=32)
            assert storescu(files, node.port, "DENOISE").returncode == 0
            uid = str(dcmread(files[0]).SeriesInstanceUID)
            assert node.wait_state(uid, SeriesState.FAILED, timeout=120), node.log_tail(40)
            posts = hook.wait_for(2, "series_failed")
            assert [p.status for p in posts] == [500, 200], node.log_tail(40)
            cat = node.catalog()
            try:
                reason = cat.views.series_progress(uid)["last_error"]  # type: ignore[index]
            finally:
                cat.close()
            assert posts[1].body["series_uid"] == uid and posts[1].body["reason"] == reason and reason
            assert posts[1].body["stage"] == "send" and posts[0].body == posts[1].body
        finally:
            assert node.stop() == 0
        node.config.write_text(node.config.read_text().replace("min_free_mb = 0\n", "min_free_mb = 1e12\n"))
        node.start(timeout=180)
        try:
            (low,) = hook.wait_for(1, "disk_low")
            assert "min_free_mb=1e+12" in low.body["text"], node.log_tail(40)
        finally:
            assert node.stop() == 0
        # The failure's notification was recorded and delivered before disk_low was, had it been again.
        assert len(hook.posts("series_failed")) == 2
    log = node.log()
    assert f"notification series_failed:{uid}:" in log and "attempt 1/8 failed" in log
    assert "secret-path" not in log  # a webhook URL's path is its secret
