"""Every benchmark runs at a tiny size, so that none of them rots (the figures themselves are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import require


def _bench(module: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{module}.json"
    env = {**os.environ, "TCP_NODELAY": "1"}
    cmd = [sys.executable, "-m", f"bench.{module}", *args, "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(out.read_text())


def test_inference_bench(tmp_path):
    result = _bench("inference", tmp_path, "--slices", "1", "--size", "64", "--filters", "8", "--tile", "32",
                    "--overlap", "8", "--device", "cpu")  # fmt: skip
    assert result["rows"][0]["monai_slices_per_s"] > 0  # MONAI comes with the bench extra that make test installs


@pytest.mark.e2e
def test_receive_bench(tmp_path):
    require("storescp")
    result = _bench("receive", tmp_path, "--files", "4", "--size", "32", "--repeat", "1", "--senders", "2")
    assert result["images_per_s"]["node"] > 0 and result["images_per_s"]["storescp"] > 0


@pytest.mark.e2e
def test_receivers_bench(tmp_path, postgres_server):  # the fixture: a missing PostgreSQL fails under CI=true
    require("storescp")
    result = _bench("receivers", tmp_path, "--files", "8", "--size", "32", "--receivers", "1", "2",
                    "--senders-per-receiver", "1")  # fmt: skip
    assert [r["receivers"] for r in result["rows"]] == [1, 2] and all(r["images_per_s"] > 0 for r in result["rows"])


@pytest.mark.e2e
def test_e2e_bench(tmp_path):
    require("storescp")
    result = _bench("e2e", tmp_path, "--slices", "2", "--size", "64", "--filters", "4", "--quiet-period", "0.5")
    assert result["seconds"]["inference"] > 0 and result["seconds"]["total"] > 0


def test_self_ensemble_bench(tmp_path):
    result = _bench("self_ensemble", tmp_path, "--slices", "1", "--size", "64", "--tile", "64", "--overlap", "8")
    assert [r["self_ensemble"] for r in result["rows"]] == [1, 2, 4, 8] and result["rows"][0]["vs_floor"] == 1.0


def test_train_bench(tmp_path):
    result = _bench("train", tmp_path, "--preset", "tiny", "--steps", "1", "--device", "cpu", "--run-dir",
                    str(tmp_path / "run"))  # fmt: skip
    assert result


def test_send_bench(tmp_path):
    require("storescp")
    result = _bench("send", tmp_path, "--files", "2", "--size", "64", "--repeat", "1")
    assert result["seconds"]["node"] > 0


def test_fast_paths_bench(tmp_path):
    result = _bench("fast_paths", tmp_path, "--filters", "4", "--tile", "32", "--batch", "1", "--rounds", "1")
    assert result["max_difference"] < 1e-4


def test_bundled_bench(tmp_path):
    result = _bench("bundled", tmp_path, "--slices", "1", "--size", "64", "--device", "cpu")
    assert {r["model"].split()[0] for r in result["rows"]} >= {"cyclegan-ld2hd-synthetic", "paired-ld2hd-synthetic"}
    assert all(r["seconds_per_slice"] > 0 and r["floor_seconds"] > 0 for r in result["rows"])
