"""The CLI as a user runs it: --help everywhere, echo against a real peer, denoise on files, the systemd unit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.peers import StoreSCP, dciodvfy, require, write_ct_series

ROOT = Path(__file__).parents[2]
COMMANDS = ["serve", "migrate", "echo", "status", "retry", "reprocess", "purge", "check", "denoise", "rules test"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}  # help text wide enough that rich neither wraps nor truncates it
    return subprocess.run(
        [sys.executable, "-m", "dicom_denoise_node", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = cli(*command.split(), "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout
    if "--config" in result.stdout:  # the markdown help once ate "<SECTION>__<KEY>" ("DENOISE_NODE___.")
        assert "DENOISE_NODE_<SECTION>__<KEY>" in result.stdout


def test_echo_a_real_peer(tmp_path):
    with StoreSCP(tmp_path / "pacs") as pacs:
        ok = cli("echo", "--host", "127.0.0.1", "--port", str(pacs.port), "--aet", pacs.ae_title)
    assert ok.returncode == 0 and "OK" in ok.stdout
    down = cli("echo", "--host", "127.0.0.1", "--port", str(pacs.port), "--aet", "PACS")
    assert down.returncode == 1


def test_denoise_files_without_network(tmp_path, tiny_model):
    src = write_ct_series(tmp_path / "in", 3, rows=70, columns=90)
    (tmp_path / "in" / "README.txt").write_text("not dicom")
    result = cli("denoise", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model))
    assert result.returncode == 0, result.stderr
    written = [dcmread(p, stop_before_pixels=True) for p in sorted((tmp_path / "out").rglob("*.dcm"))]
    reports = [
        p for p, ds in zip(sorted((tmp_path / "out").rglob("*.dcm")), written, strict=True) if ds.Modality == "SR"
    ]
    out = [p for p, ds in zip(sorted((tmp_path / "out").rglob("*.dcm")), written, strict=True) if ds.Modality == "CT"]
    assert len(out) == 3 and len(reports) == 1  # the derived images and their quality report
    refs = {dcmread(p).SourceImageSequence[0].ReferencedSOPInstanceUID for p in out}
    assert refs == {str(dcmread(p).SOPInstanceUID) for p in src}
    first = dcmread(out[0])
    assert first.pixel_array.shape == (70, 90)
    if shutil.which("dciodvfy"):
        assert dciodvfy(out[0])[0] == []
    assert np.isfinite(first.pixel_array).all()


def test_serve_with_an_unknown_role_is_a_clear_error(tmp_path):
    (tmp_path / "n.toml").write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    result = cli("serve", "-c", str(tmp_path / "n.toml"), "--role", "both")
    assert result.returncode == 2
    assert "--role both: expected all, receive or worker" in result.stderr


def test_denoise_without_model_is_a_clear_error(tmp_path):
    write_ct_series(tmp_path / "in", 1)
    result = cli("denoise", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tmp_path / "nope.json"))
    assert result.returncode == 3
    assert "does not exist" in result.stderr


def test_systemd_unit_is_hardened_and_verifies(tmp_path):
    unit = (ROOT / "systemd" / "denoise-node.service").read_text()
    for directive in (
        "User=denoise",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/denoise-node",
        "PrivateTmp=yes",
        "RestartPreventExitStatus=2 3 6",
        "SystemCallFilter=@system-service",
        "MemoryMax=",
        "OOMPolicy=continue",
        "--config /etc/denoise-node/denoise-node.toml",
    ):
        assert directive in unit, directive
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart exists: point it at this checkout's console script.
    exe = Path(sys.executable).with_name("denoise-node")
    copy = tmp_path / "denoise-node.service"
    copy.write_text(unit.replace("/opt/denoise-node/venv/bin/denoise-node", str(exe)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "denoise-node.service" in line]
    assert result.returncode == 0 and problems == [], result.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", str(copy)], capture_output=True, text=True, timeout=60
    )
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure is not None and float(exposure.group(1)) <= 2.1, security.stdout[-2000:]


def test_dciodvfy_is_a_real_check(tmp_path):
    """The validator the suite trusts does report errors on a broken CT file."""
    require("dciodvfy")
    (f,) = write_ct_series(tmp_path, 1)
    ds = dcmread(f)
    del ds.ImagePositionPatient
    del ds.Rows
    ds.save_as(f)
    errors, _ = dciodvfy(f)
    assert errors
