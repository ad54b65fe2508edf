"""The HTTP face (ops/http_status.py) served in-process on loopback from a real SQLite catalog, asked with httpx:
credentials refused and accepted (token, basic auth, /healthz open), the page's autoescaping, patient data only when
the admin turns it on, the JSON routes, and a node exposed beyond loopback without credentials refused at start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from dicom_denoise_node.config import ConfigError, HttpSettings, Settings, load_settings
from dicom_denoise_node.ops.health import Check, Health
from dicom_denoise_node.ops.http_status import StatusServer
from dicom_denoise_node.ops.status_page import StatusPage
from dicom_denoise_node.store.catalog import Catalog, InstanceMeta, QualityRecord, SeriesState, utcnow
from tests.peers import write_ct_series

PATIENT = {"PatientName": "Sentinel^Phinella", "PatientID": "PHI-ID-4711"}
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    """A catalog with one FAILED series whose reason holds markup, and one quality report, its instance a real file
    whose header has the patient's name."""
    (path,) = write_ct_series(tmp_path / "in", 1)
    ds = dcmread(path)
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    uid = str(ds.SeriesInstanceUID)
    cat.intake.record_instance(
        InstanceMeta(
            PATIENT["PatientID"],
            str(ds.StudyInstanceUID),
            uid,
            str(ds.SOPInstanceUID),
            str(ds.SOPClassUID),
            "1.2.840.10008.1.2.1",
            "CT",
            f"Chest {SCRIPT}",
            1,
            str(path),
            path.stat().st_size,
        )  # fmt: skip
    )
    cat.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = cat.queue.claim_for_processing()
    assert claim is not None
    cat.quality.record(claim.series_id, QualityRecord("2.25.7", "1.0.0@s=0.5", 1, 1, 31.0, 8.5, "mark", "shift 20 HU"))
    cat.queue.fail(claim.series_id, "send", f"A-ASSOCIATE rejected {SCRIPT}", SeriesState.PROCESSING, claim.owner)
    yield cat
    cat.close()


def _serve(catalog: Catalog, **http: object) -> StatusServer:
    settings = Settings(http=HttpSettings(port=0, **http))  # type: ignore[arg-type]

    def health() -> Health:
        return Health({"catalog": Check(True, "writable")})

    page = StatusPage(catalog, health, settings, "node-1")
    server = StatusServer(
        settings.http, health, lambda: b"up 1\n", catalog.views.series_overview, lambda n: [{"n": n}], page.render
    )
    server.start()
    return server


def _url(server: StatusServer, path: str) -> str:
    host, port = server.address
    return f"http://{host}:{port}{path}"


def test_the_page_shows_the_failure_escaped_and_no_patient_data(catalog):
    server = _serve(catalog)
    try:
        response = httpx.get(_url(server, "/"))
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no script
        page = response.text
        assert "A-ASSOCIATE rejected &lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "Chest &lt;script&gt;" in page and "<script>" not in page
        assert "2.25.7" in page and "shift 20 HU" in page and "31.0 → 8.5" in page  # the quality report
        for value in (*PATIENT.values(), "Sentinel", "Phinella"):
            assert value not in page
        assert httpx.get(_url(server, "/associations?limit=3")).json() == [{"n": 3}]
        series = httpx.get(_url(server, "/series")).json()
        assert series[0]["state"] == "FAILED"
        missing = httpx.get(_url(server, "/nope"))
        assert missing.status_code == 404 and "/healthz" in missing.text
    finally:
        server.stop()


def test_patient_data_only_when_the_admin_turns_it_on(catalog):
    server = _serve(catalog, show_patient_data=True)
    try:
        page = httpx.get(_url(server, "/")).text
        assert "PHI-ID-4711" in page and "Sentinel^Phinella" in page
    finally:
        server.stop()


def test_with_credentials_configured_a_request_without_them_is_refused(catalog):
    server = _serve(catalog, token="s3cret-token", basic_auth="admin:pass word")
    try:
        for path in ("/", "/series", "/metrics", "/associations", "/nope"):
            refused = httpx.get(_url(server, path))
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == 'Basic realm="denoise-node"'
            assert "FAILED" not in refused.text and "1.2." not in refused.text
        for wrong in ({"Authorization": "Bearer s3cret-tokeN"}, {"Authorization": "Basic !!!"}):
            assert httpx.get(_url(server, "/"), headers=wrong).status_code == 401
        assert httpx.get(_url(server, "/"), auth=("admin", "wrong")).status_code == 401
        bearer = httpx.get(_url(server, "/series"), headers={"Authorization": "Bearer s3cret-token"})
        assert bearer.status_code == 200 and bearer.json()[0]["state"] == "FAILED"
        basic = httpx.get(_url(server, "/"), auth=("admin", "pass word"))
        assert basic.status_code == 200 and "A-ASSOCIATE rejected" in basic.text
        assert httpx.get(_url(server, "/healthz")).status_code == 200  # open: load balancers, `status`
    finally:
        server.stop()


def test_exposed_beyond_loopback_without_credentials_the_node_does_not_start(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n\n[http]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert "http.token or http.basic_auth" in str(refused.value) and str(config) in str(refused.value)
    served = subprocess.run(
        [sys.executable, "-m", "dicom_denoise_node", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard: the refusal comes at config load, before anything starts
    )
    assert served.returncode == 2, served.stderr
    assert "http.token or http.basic_auth" in served.stderr and str(config) in served.stderr
    assert not (tmp_path / "data").exists(), "refused before anything was created"
    config.write_text(config.read_text() + 'token = "t"\n')
    assert load_settings(config).http.host == "0.0.0.0"
    assert load_settings(None).http.host == "127.0.0.1"  # loopback by default
