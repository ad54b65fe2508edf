"""Operations against the real node process: routing rules with per-rule destinations and SKIPPED series,
/healthz, /metrics (parsed with the Prometheus text parser), /series, and the association audit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from denoise_harness.node import NodeProcess
from dicom_denoise_node.receive.audit import association_rows
from dicom_denoise_node.store.catalog import SeriesState
from tests.peers import echoscu, storescu, wait_until, write_ct_series

pytestmark = pytest.mark.e2e
N = 4


PHI = {"PatientName": "Sentinel^Phi", "PatientID": "PHI-ID-4711", "PatientBirthDate": "19510203"}


def _series(directory: Path, description: str) -> tuple[list[Path], str]:
    files = write_ct_series(directory, N, rows=32, columns=32)
    for path in files:
        ds = dcmread(path)
        ds.SeriesDescription = description
        ds.ProtocolName = f"{description} protocol"
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return files, str(dcmread(files[0]).SeriesInstanceUID)


def _logged_at_info_or_above(log_text: str) -> str:
    """The node's log without its DEBUG entries (a traceback's lines belong to the entry above them)."""
    kept, level = [], "INFO"
    for line in log_text.splitlines():
        match = re.match(r"^\d{4}-\d\d-\d\d \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)
        level = match.group(1) if match else level
        if level != "DEBUG":
            kept.append(line)
    return "\n".join(kept)


def _metrics(node: NodeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = node.http_get("/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_denoise_node", *args, "-c", str(node.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rules_route_per_destination_skip_the_rest_and_metrics_count_it(tmp_path, tiny_model, storescp_factory):
    pacs_a, pacs_b = storescp_factory("PACSA"), storescp_factory("PACSB")
    rules = (
        '[[rules]]\nname = "low-dose"\nseries_description = "low.?dose"\ndestinations = ["a"]\nquiet_period_s = 0.5\n'
    )
    node = NodeProcess(
        tmp_path,
        tiny_model,
        [
            {"ae_title": "PACSA", "port": pacs_a.port, "name": "a"},
            {"ae_title": "PACSB", "port": pacs_b.port, "name": "b"},
        ],
        extra=rules,
        node_extra='allowed_peers = { CT9 = ["10.0.0.0/8"] }',
    ).start()
    try:
        ld, ld_uid = _series(tmp_path / "ld", "Chest LOW DOSE")
        hd, hd_uid = _series(tmp_path / "hd", "Chest routine")
        assert storescu(ld, node.port, "DENOISE", calling_aet="CT1").returncode == 0
        assert storescu(hd, node.port, "DENOISE", calling_aet="CT1").returncode == 0
        assert node.wait_state(ld_uid, SeriesState.SENT, timeout=180), node.log()[-3000:]
        assert node.wait_state(hd_uid, SeriesState.SKIPPED, timeout=60), node.log()[-3000:]
        assert len(pacs_a.wait_for_files(N, timeout=30)) == N
        assert pacs_b.files() == []  # the rule sends to "a" only

        # Rejections for the audit: wrong called AE (pynetdicom's negotiation), peer allowlist (the node's hook).
        assert echoscu(node.port, "WRONG", calling_aet="CT1").returncode != 0
        assert echoscu(node.port, "DENOISE", calling_aet="CT9").returncode != 0

        cat = node.catalog()
        try:
            row = {r["series_uid"]: r for r in cat.views.series_overview()}
            assert row[ld_uid]["rule"] == "low-dose"
            assert (
                row[hd_uid]["state"] == "SKIPPED" and "SeriesDescription 'Chest routine'" in row[hd_uid]["last_error"]
            )
            assert wait_until(lambda: len(association_rows(cat)) >= 4, timeout=10)
            audit = association_rows(cat)
        finally:
            cat.close()
        stores = [a for a in audit if a["accepted"]]
        assert len(stores) == 2 and all(a["instances"] == N and a["outcome"] == "released" for a in stores)
        assert all(a["calling_aet"] == "CT1" and a["address"] == "127.0.0.1" for a in stores)
        rejected = {a["calling_aet"]: a["reason"] for a in audit if not a["accepted"]}
        assert "called AE title not recognised" in rejected["CT1"]
        assert "not allowed from 127.0.0.1" in rejected["CT9"]

        m = _metrics(node)
        assert m[("denoise_node_instances_sent_total", (("destination", "a"),))] == N
        assert ("denoise_node_instances_sent_total", (("destination", "b"),)) not in m
        assert m[("denoise_node_instances_received_total", (("status", "0x0000"),))] == 2 * N
        assert m[("denoise_node_series", (("state", "SENT"),))] == 1
        assert m[("denoise_node_series", (("state", "SKIPPED"),))] == 1
        assert m[("denoise_node_queue_depth", ())] == 0
        assert m[("denoise_node_associations_total", (("result", "accepted"),))] == 2
        assert m[("denoise_node_associations_total", (("result", "rejected"),))] == 2
        assert m[("denoise_node_inference_seconds_per_slice_count", ())] == 1
        assert m[("denoise_node_disk_free_bytes", ())] > 0
        assert m[("denoise_node_catalog_instance_records_total", ())] == 2 * N
        assert 1 <= m[("denoise_node_catalog_instance_commits_total", ())] <= 2 * N
        # One series sent: one receive-to-sent latency, at least its quiet period (0.5 s) long.
        assert m[("denoise_node_series_latency_seconds_count", ())] == 1
        assert m[("denoise_node_series_latency_seconds_sum", ())] >= 0.5
        info = {k: v for (name, labels), v in m.items() if name == "denoise_node_model_info" for k in [labels]}
        assert list(info.values()) == [1.0] and dict(next(iter(info))) == {
            "name": "tiny-random",
            "version": "0.0.1-test",
            "device": "cpu",
        }
        assert m[("process_resident_memory_bytes", ())] > 50 * 2**20  # the node's own process

        status, body = node.http_get("/series")
        assert status == 200
        assert {s["series_uid"]: s["state"] for s in json.loads(body)} == {ld_uid: "SENT", hd_uid: "SKIPPED"}
        status, body = node.http_get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok", body

        shown = _cli(node, "status")
        assert shown.returncode == 0, shown.stderr
        assert "health: ok" in shown.stdout and "SKIPPED 1" in shown.stdout and "low-dose" in shown.stdout
        shown = _cli(node, "status", "--associations")
        assert shown.returncode == 0, shown.stderr
        assert "rejected" in shown.stdout and "CT9" in shown.stdout and "released" in shown.stdout
    finally:
        assert node.stop() == 0
    log = node.log()
    assert f"series {hd_uid} state=SKIPPED: no routing rule matched" in log
    assert f"series {ld_uid} state=COMPLETE (rule low-dose)" in log
    # No PHI and no header text at INFO or above (DEBUG may quote the routing reasons for an admin who asks).
    visible = _logged_at_info_or_above(log)
    for value in (*PHI.values(), "Sentinel", "Chest routine", "Chest LOW DOSE"):
        assert value not in visible, [line for line in visible.splitlines() if value in line][:3]
    assert "SeriesDescription 'Chest routine'" in log  # the reason is still there, at DEBUG


def test_healthz_goes_unhealthy_when_the_model_file_is_gone(tmp_path, tiny_model):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model.parent, model_dir)
    node = NodeProcess(tmp_path, model_dir / tiny_model.name, []).start()
    try:
        assert wait_until(lambda: node.http_get("/healthz")[0] == 200, timeout=20), node.http_get("/healthz")
        for weights in model_dir.glob("*.safetensors"):
            weights.unlink()
        status, body = node.http_get("/healthz")
        report = json.loads(body)
        assert status == 503 and report["status"] == "unhealthy"
        assert report["checks"]["model"]["ok"] is False and "restart will fail" in report["checks"]["model"]["detail"]
        assert all(c["ok"] for name, c in report["checks"].items() if name != "model"), report
        assert echoscu(node.port, "DENOISE").returncode == 0  # still up: the admin is told, nothing stops
        shown = _cli(node, "status")
        assert "health: unhealthy" in shown.stdout and "NO" in shown.stdout
        assert shown.returncode == 4  # `status` exits 4 when the node answers unhealthy
    finally:
        node.stop()


def test_healthz_goes_unhealthy_below_the_disk_watermark(tmp_path, tiny_model):
    node = NodeProcess(tmp_path, tiny_model, [], node_extra="min_free_mb = 1e12").start()
    try:
        status, body = node.http_get("/healthz")
        report = json.loads(body)
        assert status == 503 and report["checks"]["disk"]["ok"] is False
        assert "min_free_mb=1e+12" in report["checks"]["disk"]["detail"]
    finally:
        node.stop()


def test_http_port_in_use_stops_the_node_with_the_key(tmp_path, tiny_model):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        node = NodeProcess(tmp_path, tiny_model, [])
        node.config.write_text(
            node.config.read_text().replace(f"port = {node.http_port}", f"port = {busy.getsockname()[1]}")
        )
        node.start(wait=False)
        assert node.proc is not None
        assert node.proc.wait(timeout=60) == 2
    assert "[http] cannot listen on" in node.log()
