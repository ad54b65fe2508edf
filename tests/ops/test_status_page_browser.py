"""The status page in a real browser: Debian's chromium, headless, driven by Selenium through Debian's chromedriver
(both named by path, so Selenium Manager never looks for or downloads a browser). The page comes from a running
node and shows a FAILED series with its reason, and no patient name or ID."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from denoise_harness.node import NodeProcess
from dicom_denoise_node.store.catalog import SeriesState
from tests import peers
from tests.peers import LOOPBACK, PeerMissing, free_port, storescu, write_ct_series

pytestmark = pytest.mark.e2e
PATIENT = {"PatientName": "Sentinel^Phinella", "PatientID": "PHI-ID-4711"}


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    """Headless chromium (Debian packages chromium and chromium-driver; missing: skipped, or failed under CI=true)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        peers.missing(PeerMissing("chromium or chromedriver is not installed (Debian chromium, chromium-driver)"))
    monkeypatch.setenv("SE_OFFLINE", "true")  # should Selenium Manager run after all, it must not download
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                     f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_the_status_page_shows_a_failed_series_and_its_reason_and_no_patient_data(tmp_path, tiny_model, browser):
    nobody = free_port()  # the PACS: nothing listens there, so the series fails at send ([send] max_attempts = 1)
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": nobody}], max_attempts=1).start(timeout=180)
    try:
        files = write_ct_series(tmp_path / "in", 2, rows=32, columns=32)
        for path in files:
            ds = dcmread(path)
            for keyword, value in PATIENT.items():
                setattr(ds, keyword, value)
            ds.save_as(path)
        assert storescu(files, node.port, "DENOISE").returncode == 0
        uid = str(dcmread(files[0]).SeriesInstanceUID)
        assert node.wait_state(uid, SeriesState.FAILED, timeout=120), node.log_tail(40)
        cat = node.catalog()
        try:
            reason = str(cat.views.series_progress(uid)["last_error"])  # type: ignore[index]
        finally:
            cat.close()

        browser.get(f"http://{LOOPBACK}:{node.http_port}/")
        assert browser.title.startswith("DENOISE")
        failure = browser.find_element(By.CSS_SELECTOR, f'#failures tr[data-series="{uid}"]')
        cells = [td.text for td in failure.find_elements(By.TAG_NAME, "td")]
        assert cells[0] == uid and cells[1] == "send" and cells[2] == reason.strip(), (cells, reason)
        assert browser.find_element(By.CSS_SELECTOR, '#states td[data-state="FAILED"]').text == "1"
        report = browser.find_element(By.CSS_SELECTOR, f'#reports tr[data-series="{uid}"]')
        assert "2" in [td.text for td in report.find_elements(By.TAG_NAME, "td")]  # its two slices
        source = browser.page_source
        for value in (*PATIENT.values(), "Sentinel", "Phinella"):
            assert value not in source
    finally:
        assert node.stop() == 0
