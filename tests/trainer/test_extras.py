"""A node-only host (no `train` extra) gets one line and exit code 2 from the trainer's commands, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from denoise_trainer.extras import TRAIN_EXTRA_MODULES, missing_extra_hint

_WITHOUT_EXTRA = """
import sys
for name in {modules!r}:
    sys.modules[name] = None  # as if the train extra were not installed
sys.argv = ["denoise-node", *{args!r}]
from dicom_denoise_node.cli import run
run()
"""


def _run_without_extra(*args: str) -> subprocess.CompletedProcess[str]:
    code = _WITHOUT_EXTRA.format(modules=sorted(TRAIN_EXTRA_MODULES), args=list(args))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--preset", "tiny", "--catalog", "sqlite:////nonexistent/none.sqlite", "--run-dir", "/nonexistent"),
        ("evaluate", "--model", "x.json", "--catalog", "sqlite:////nonexistent/none.sqlite"),
    ],
)
def test_a_trainer_command_without_its_extra_says_so_in_one_line(args):
    result = _run_without_extra(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"denoise-node {args[0]} needs the trainer's extra" in lines[0]
    assert "pip install 'dicom-denoise-node[train]'" in lines[0]


def test_an_unrelated_missing_module_is_not_dressed_up_as_a_missing_extra():
    assert missing_extra_hint(ModuleNotFoundError("no", name="numpy"), "train") is None
    assert missing_extra_hint(ModuleNotFoundError("no", name="tensorboard.summary"), "train") is not None
