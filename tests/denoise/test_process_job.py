"""The process job (denoise/worker.py ProcessJob): claims COMPLETE series while the disk has room, pauses below
``[node] min_free_mb`` (said once, and once again when space returns), and reports each series ready to send."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from dicom_denoise_node.config import Settings
from dicom_denoise_node.denoise import worker
from dicom_denoise_node.denoise.rule_denoisers import RuleDenoisers
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.store.catalog import Catalog, InstanceMeta, SeriesState, utcnow
from dicom_denoise_node.store.disk import MIB, DiskSpace
from dicom_denoise_node.store.spool import Spool


def test_processing_pauses_on_a_full_disk_and_resumes_when_space_returns(tmp_path, monkeypatch, caplog):
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    meta = InstanceMeta("P", "1.2", "1.2.3", "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "CT",
                        "LD", 1, "/x", 1)  # fmt: skip
    catalog.intake.record_instance(meta)
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    free = {"mb": 10.0}
    disk = DiskSpace(tmp_path, 100.0, free_bytes=lambda p: int(free["mb"] * MIB))
    claimed: list[str] = []

    def fake_denoise(claim, catalog_, *args) -> bool:
        claimed.append(claim.series_uid)
        return True

    monkeypatch.setattr(worker, "denoise_claim", fake_denoise)
    derived: list[int] = []
    denoisers = RuleDenoisers(None, {}, lambda rule, instances: [])  # type: ignore[arg-type]  (never denoises)
    job = worker.ProcessJob(catalog, denoisers, Spool(tmp_path / "spool"), NodeMetrics(catalog, lambda: 1.0),
                            Settings(), disk, threading.Event(), derived=lambda: derived.append(1))  # fmt: skip
    try:
        with caplog.at_level(logging.INFO, logger=worker.__name__):
            job.run()
            job.run()
            assert claimed == [] and catalog.views.series_state("1.2.3") is SeriesState.COMPLETE
            paused = [r for r in caplog.records if "processing paused" in r.getMessage()]
            assert len(paused) == 1 and "min_free_mb=100" in paused[0].getMessage()
            free["mb"] = 1000.0
            job.run()
        assert claimed == ["1.2.3"] and derived == [1]
        assert any("processing resumes" in r.getMessage() for r in caplog.records)
    finally:
        catalog.close()
