"""`denoise-node train` as a physicist runs it (issue 29), on tiny slices instead of a catalog's: the contract's
`--init bundled --max-minutes N --pairing paired` with no config file, progress lines when stdout is no terminal,
the closing message naming best.pt, the thread choice, and SIGTERM/SIGINT: a checkpoint that resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from denoise_trainer.train.checkpoint import load_checkpoint
from dicom_denoise_node.cli import app
from dicom_denoise_node.model.registry import BUNDLED_DIR
from tests.trainer.golden_runs import checkpoint_digest
from tests.trainer.tiny_train_cli import fake_catalog

ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["--preset", "tiny", "--device", "cpu", "--epochs", "100"]  # 200 steps: far more than a test waits for


@pytest.fixture()
def threads_kept():
    """The command sets this process's torch threads: put them back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_contract_init_bundled_max_minutes_without_a_config(tmp_path, monkeypatch, threads_kept):
    fake_catalog(monkeypatch.setattr)
    run = tmp_path / "site"
    args = ["train", "--catalog", "sqlite:///site.sqlite", "--run-dir", str(run), "--init", "bundled"]
    result = CliRunner().invoke(app, [*args, "--max-minutes", "0.001", "--pairing", "paired"])
    assert result.exit_code == 0, result.output
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["config"]["init_from"] == str(BUNDLED_DIR / "paired-ld2hd-synthetic.json")
    assert (last["config"]["filters"], last["config"]["layers"]) == (48, 10)  # the paired model's network
    assert "--max-minutes reached" in result.output and "to continue: the same command with --resume" in result.output
    assert "step 1/" in result.output  # CliRunner's stdout is no terminal: plain progress lines
    best = run / "checkpoints" / "best.pt"
    assert best.exists() and f"export it with: denoise-node model export {best} " in result.output
    log = (run / "train.log").read_text()
    assert "torch uses" in log and "CPU threads" in log and "torch threads:" in result.output


def test_help_says_what_threads_a_busy_machine_wants():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.replace("│", " ").split())
    assert "--threads" in text and "On a machine busy with other work give fewer" in text


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job (`cmd &`)


def _command(*args: str, background: bool = False) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.trainer.tiny_train_cli", *TINY, *args]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(command, cwd=ROOT, env=ENV, preexec_fn=_ignore_sigint if background else None, **pipes)


def _finish(child: subprocess.Popen[str]) -> str:
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stdout[-2000:] + stderr[-2000:]
    return stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_with_a_checkpoint_that_resumes_exactly(tmp_path, signum):
    run = tmp_path / "stopped"
    child = _command("--run-dir", str(run), background=signum == signal.SIGINT)  # SIGINT: even a background job
    assert child.stdout is not None
    for line in child.stdout:  # the first progress line: training has begun
        if line.startswith("step 1/"):
            break
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 128 + signum, stdout[-2000:] + stderr[-2000:]
    assert f"stopped by {signum.name}" in stdout and f"{signum.name} received: stopping after step" in stderr
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    at_stop = f"epoch-{step // 2:03d}.pt" if step % 2 == 0 else f"step-{step:07d}.pt"  # 2 steps an epoch
    assert 1 <= step < 200 and (run / "checkpoints" / at_stop).exists()
    if signum == signal.SIGINT:
        return  # one exact resume is enough: the two signals stop the same way
    target = str(step + 3)
    _finish(_command("--run-dir", str(run), "--resume", str(run / "checkpoints" / "last.pt"), "--max-steps", target))
    _finish(_command("--run-dir", str(tmp_path / "straight"), "--max-steps", target))
    resumed, straight = run / "checkpoints" / "last.pt", tmp_path / "straight" / "checkpoints" / "last.pt"
    assert load_checkpoint(resumed)["step"] == step + 3
    assert checkpoint_digest(resumed) == checkpoint_digest(straight)
