"""`make demo`'s driver, run as the user runs it (`denoise-node demo`), on a smaller study, with the bundled model.

Real processes: the node, Orthanc as the PACS and dcmtk storescu as the scanner. After each run no process that
the demo started may survive (found by its demo folder on the command line) and its ports must be free.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from denoise_harness import port_open
from denoise_trainer.evaluate.montage import montage_size
from dicom_denoise_node.model.registry import ModelError, resolve_model_path
from tests.peers import require, wait_until

pytestmark = pytest.mark.e2e

SLICES = 3
SIZE = 512


def _demo_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dicom_denoise_node", "demo", "--out", str(out),
        "--slices", str(SLICES), "--size", str(SIZE), "--device", "cpu", "--no-hold", *extra,
    ]  # fmt: skip


def _survivors(out: Path) -> list[str]:
    """Command lines of live processes that mention the demo folder (node, Orthanc, storescu)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if str(out) in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def _ports(out: Path) -> list[int]:
    ports = []
    node = (out / "node.toml").read_text()
    ports += [int(line.split("=")[1]) for line in node.splitlines() if line.strip().startswith("port")]
    orthanc = out / "pacs" / "orthanc.json"
    if orthanc.exists():
        cfg = json.loads(orthanc.read_text())
        ports += [int(cfg["HttpPort"]), int(cfg["DicomPort"])]
    return ports


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for program in ("Orthanc", "storescu"):
        require(program)
    return tmp_path_factory.mktemp("demo")


def _bundled_model_or_skip() -> None:
    try:
        resolve_model_path("")
    except ModelError as exc:
        pytest.skip(f"the demo's PSNR check needs the bundled model: {exc} (see docs/model-card.md)")


def test_demo_end_to_end(demo_dir: Path) -> None:
    _bundled_model_or_skip()
    env = {**os.environ, "TCP_NODELAY": "1"}
    result = subprocess.run(_demo_cmd(demo_dir), capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((demo_dir / "results.json").read_text())
    # The derived series arrived at the PACS in full, through the real peers.
    assert report["slices"] == SLICES
    assert report["pacs"] == "Orthanc" and report["scu"] == "dcmtk storescu"
    assert report["derived_series_uid"] and report["derived_series_uid"] != report["series_uid"]
    # The bundled model improves on its input against the regular-dose image, as the printed table shows.
    metrics = report["metrics"]
    assert metrics["denoised"]["psnr_vs_hd"] > metrics["LD"]["psnr_vs_hd"], metrics
    assert "denoised (node)" in result.stdout and "PSNR vs HD" in result.stdout
    # The montage: 2 windows × 4 columns of SIZE² tiles.
    with Image.open(demo_dir / "montage.png") as png:
        png.verify()
    with Image.open(demo_dir / "montage.png") as png:
        assert png.format == "PNG"
        assert png.size == montage_size((SIZE, SIZE), 4, 2)
    # Nothing left running, every port free.
    assert _survivors(demo_dir) == []
    assert [p for p in _ports(demo_dir) if port_open(p)] == []


def test_demo_reruns_and_ctrl_c_leaves_nothing_running(demo_dir: Path, tiny_model: Path) -> None:
    """A second run in the same folder needs no clean-up; Ctrl-C while the node works stops every child."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    shutil.rmtree(demo_dir / "node", ignore_errors=True)  # so that a new catalog file means the new node runs
    proc = subprocess.Popen(
        _demo_cmd(demo_dir, "--model", str(tiny_model)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        # Wait until the node runs (it writes its catalog), then interrupt the demo as Ctrl-C does.
        started = wait_until(lambda: (demo_dir / "node" / "catalog.sqlite").exists() or proc.poll() is not None, 300)
        assert started and proc.poll() is None, "the demo did not reach the point where the node runs"
        # ... and has stored a first instance: Ctrl-C lands while it works (an event, not a timer).
        receiving = wait_until(lambda: any((demo_dir / "node" / "incoming").rglob("*.dcm")), 300)
        assert receiving and proc.poll() is None, "the demo's node never received an instance"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output
    assert _survivors(demo_dir) == []
    assert [p for p in _ports(demo_dir) if port_open(p)] == []


def test_demo_without_debian_peers_uses_pynetdicom_and_a_folder(demo_dir: Path, tiny_model: Path) -> None:
    """Where apt could not install dcmtk/Orthanc: pynetdicom sends, the in-process receiver stores.
    (The untrained test model: this checks the plumbing, not the image quality.)"""
    cmd = _demo_cmd(demo_dir, "--pacs", "folder", "--scu", "pynetdicom", "--model", str(tiny_model))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((demo_dir / "results.json").read_text())
    assert report["pacs"].startswith("folder") and report["scu"] == "pynetdicom"
    assert report["slices"] == SLICES
    assert len(list((demo_dir / "pacs" / "received").glob("*.dcm"))) == SLICES + 1  # the images and their report
    assert report["report"].startswith("quality report (SR) in the PACS: ")
    assert "quality report (SR) in the PACS" in result.stdout
    assert _survivors(demo_dir) == []


def test_demo_names_the_failed_step_when_a_port_is_busy(demo_dir: Path, tiny_model: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = _demo_cmd(demo_dir, "--pacs", "folder", "--node-port", str(port), "--model", str(tiny_model))
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "demo step 'start node' failed" in result.stderr and f"port {port}" in result.stderr
    assert _survivors(demo_dir) == []


def test_demo_without_a_model_stops_first_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        _demo_cmd(out, "--model", str(tmp_path / "missing.json")), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert "demo step 'check model' failed" in result.stderr and "does not exist" in result.stderr
    assert not (out / "study").exists()  # nothing synthesised, nothing started
    assert _survivors(out) == []
