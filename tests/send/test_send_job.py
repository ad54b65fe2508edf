"""The send job (send/deliver.py SendJob): claims under the configured ``[send] lease_s`` and sends each series to
where routing says its rule goes."""

from __future__ import annotations

import threading
from datetime import timedelta

from dicom_denoise_node.config import Destination, Settings
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.send import deliver
from dicom_denoise_node.store.catalog import Series, SeriesState, utcnow
from tests.send.derived import derived_series

PACS = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=11112)


def test_the_send_job_claims_under_the_configured_lease_and_sends_where_routing_says(tmp_path, monkeypatch):
    catalog = derived_series(tmp_path, count=1)
    settings = Settings(destinations=[PACS], send={"lease_s": 1234})
    sent: list[tuple[str, list[str]]] = []
    rules: list[str | None] = []

    def fake_deliver(claim, catalog_, settings_, metrics, destinations) -> None:
        with catalog.db.session() as s:
            lease_until = s.get(Series, claim.series_id).next_attempt_at
        assert timedelta(seconds=1200) < lease_until - utcnow() <= timedelta(seconds=1234)
        sent.append((claim.series_uid, [d.key for d in destinations]))
        assert catalog.deliveries.send_succeeded(claim)

    def route(rule: str | None) -> list[Destination]:
        rules.append(rule)
        return [PACS]

    monkeypatch.setattr(deliver, "deliver_claim", fake_deliver)
    try:
        deliver.SendJob(catalog, settings, NodeMetrics(catalog, lambda: 1.0), route, threading.Event()).run()
        assert sent == [("1.2.3", [PACS.key])] and rules == [catalog.completion.series_rule(1)]
        assert catalog.views.series_state("1.2.3") is SeriesState.SENT
    finally:
        catalog.close()


def test_without_destinations_the_send_job_leaves_derived_series_waiting(tmp_path):
    catalog = derived_series(tmp_path, count=1)
    try:
        job = deliver.SendJob(
            catalog, Settings(), NodeMetrics(catalog, lambda: 1.0), lambda rule: [], threading.Event()
        )
        job.run()
        assert catalog.views.series_state("1.2.3") is SeriesState.DERIVED
        with catalog.db.session() as s:
            assert s.get(Series, 1).claimed_by is None  # not even claimed
    finally:
        catalog.close()
