"""Derived series for the send tests (DIMSE, STOW-RS): one in a catalog with the send stage run on it, or one made
and sent by a running node."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydicom import dcmread

from denoise_harness.dcmtk import storescu
from denoise_harness.node import NodeProcess
from dicom_denoise_node.complete.routing import destinations_for
from dicom_denoise_node.config import Settings
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.send import deliver
from dicom_denoise_node.store.catalog import Catalog, Claim, DerivedRecord, InstanceMeta, SeriesState, utcnow

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def derived_series(tmp_path: Path, count: int = 0, files: Sequence[Path] = ()) -> Catalog:
    """A catalog whose one series is DERIVED: the real ``files`` (their own SOP Instance UIDs), or else ``count``
    instances 9.9.1…9.9.N at paths d1…dN.dcm that need not exist (for a faked send)."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    meta = InstanceMeta("P", "1.2", "1.2.3", "1.2.3.1", CT_CLASS, "1.2.840.10008.1.2.1", "CT", "LD", 1, "/x", 1)
    catalog.intake.record_instance(meta)
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    assert claim is not None
    if files:
        uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        records = [DerivedRecord(uid, "1.2.3.1", str(f)) for uid, f in zip(uids, files, strict=True)]
    else:
        records = [DerivedRecord(f"9.9.{i}", "1.2.3.1", str(tmp_path / f"d{i}.dcm")) for i in range(1, count + 1)]
    catalog.queue.finish_processing(claim, "9.9", "1", records)
    return catalog


def send_attempts(catalog: Catalog, settings: Settings, attempts: int) -> Claim:
    """Run the send stage ``attempts`` times, each once the previous attempt's backoff is over; the last claim."""
    metrics = NodeMetrics(catalog, lambda: 1.0)
    for attempt in range(1, attempts + 1):
        claim = catalog.deliveries.claim_for_sending(0.0, now=utcnow() + timedelta(seconds=attempt))
        assert claim is not None
        rule = catalog.completion.series_rule(claim.series_id)
        deliver.deliver_claim(claim, catalog, settings, metrics, destinations_for(settings, rule))
    return claim


def node_sends(work: Path, model: Path, destinations: list[dict[str, Any]], files: list[Path], **config: Any) -> str:
    """Run `denoise-node serve`, C-STORE ``files`` to it and wait until their series is SENT; return the node's log."""
    uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    node = NodeProcess(work, model, destinations, **config).start()
    try:
        assert storescu(files, node.port, "DENOISE").returncode == 0
        assert node.wait_state(uid, SeriesState.SENT, timeout=120), node.log()[-3000:]
    finally:
        node.stop()
    return node.log()
