"""Runs a physicist can trust (issue 29), in the loop: the time cap, last.pt every ``checkpoint_every`` steps, the
lesion-contrast warning, the thread count, and the signal handlers (a second signal aborts)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import denoise_trainer.train.stopping as stopping
import denoise_trainer.train.threads as threads
from denoise_trainer.train.checkpoint import load_checkpoint
from denoise_trainer.train.loop import train
from denoise_trainer.train.recipe import build_config
from tests.trainer.golden_runs import tiny_data
from tests.trainer.test_train import tiny_slices

ROOT = Path(__file__).parents[2]


def test_max_minutes_stops_after_a_step_with_a_checkpoint(tmp_path):
    cfg = build_config("tiny", overrides={"run_dir": tmp_path, "device": "cpu", "epochs": 50, "max_minutes": 1e-9})
    result = train(cfg, tiny_slices(n=2))
    assert result.stopped == "max_minutes" and result.steps == 1
    assert result.checkpoint == tmp_path / "checkpoints" / "step-0000001.pt"
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 1


def test_the_time_cap_counts_from_the_first_step(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(stopping.time, "monotonic", lambda: now[0])
    stops = stopping.StopRequests(max_minutes=2)
    now[0] += 600  # loading data and setting up: not training time
    assert stops.reason() == ""
    stops.start_clock()
    now[0] += 119
    assert stops.reason() == ""
    now[0] += 1
    assert stops.reason() == "max_minutes"


def test_last_pt_is_refreshed_every_checkpoint_every_steps(tmp_path):
    overrides = {"run_dir": tmp_path, "device": "cpu", "epochs": 1, "iters_per_epoch": 10, "checkpoint_every": 3}
    seen: dict[int, int | None] = {}

    def on_step(step: int, epoch: int, losses: dict[str, float]) -> None:
        last = tmp_path / "checkpoints" / "last.pt"
        seen[step] = load_checkpoint(last)["step"] if last.exists() else None

    train(build_config("tiny", overrides=overrides), tiny_slices(n=2), on_step=on_step)
    assert seen == {1: None, 2: None, 3: None, 4: 3, 5: 3, 6: 3, 7: 6, 8: 6, 9: 6, 10: 9}
    assert not list((tmp_path / "checkpoints").glob("step-*.pt"))  # last.pt alone: the disk does not fill


def _lesion_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture, **overrides: object) -> list[str]:
    cfg = build_config("tiny", overrides={"run_dir": tmp_path, "device": "cpu", "epochs": 1, **overrides})
    with caplog.at_level(logging.WARNING, logger="denoise_trainer.train.loop"):
        result = train(cfg, tiny_data(size=128))  # 128 px: room for the inserted validation lesions
    assert all("val_lesion_kept" in row for row in result.validation)
    return [r.getMessage() for r in caplog.records if "flattening faint lesions" in r.getMessage()]


def test_a_validation_lesion_contrast_below_0_9_is_warned_about(tmp_path, caplog):
    # A fresh ResNet generator keeps little of an inserted lesion; a residual CNN whose last layer starts at zero is
    # the identity, and keeps all of it.
    warned = _lesion_warnings(tmp_path / "resnet", caplog)
    assert warned and warned[0].startswith("step 1: the validation lesions keep 0.")
    caplog.clear()
    identity = dict(generator="residual_cnn", filters=8, layers=3, dilations=[1, 2, 1], head_init_std=0.0)
    assert _lesion_warnings(tmp_path / "identity", caplog, **identity) == []


def test_threads_default_to_a_few_and_yield_to_the_users_choice(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    assert threads.choose_threads(None) == (2, "min(2 CPUs, 4)")
    monkeypatch.setattr(threads, "available_cpus", lambda: 32)
    assert threads.choose_threads(None) == (4, "min(32 CPUs, 4)")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(None) == (3, "OMP_NUM_THREADS")
    assert threads.choose_threads(1) == (1, "--threads")


def test_handlers_are_put_back_and_a_second_signal_aborts_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with stopping.StopRequests(0) as stops:
        assert signal.getsignal(signal.SIGTERM) == stops._handle
    assert signal.getsignal(signal.SIGTERM) == before
    code = (
        "import os, signal\n"
        "from denoise_trainer.train.stopping import StopRequests\n"
        "with StopRequests(0) as stops:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('first:', stops.reason(), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('survived the second', flush=True)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.stdout == "first: SIGTERM\n" and run.returncode == -signal.SIGTERM


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_at_the_step_one_rank_was_told_to(tmp_path):
    """Rank 1 alone has a signal: rank 0 must stop with it (else it waits in its next all-reduce for ever). Rank 0
    validates (the slices have REF) and every rank takes part in writing best.pt, as in every checkpoint."""
    script = tmp_path / "ddp.py"
    script.write_text(
        f"""
import json, os
import torch.distributed as dist
import denoise_trainer.train.stopping as stopping
from denoise_trainer.train.loop import train
from denoise_trainer.train.recipe import build_config
from tests.trainer.golden_runs import tiny_data
if os.environ["RANK"] == "1":
    stopping.StopRequests.reason = lambda self: "SIGTERM"
cfg = build_config("tiny", overrides={{"run_dir": {str(tmp_path / "run")!r}, "device": "cpu", "epochs": 50}})
res = train(cfg, tiny_data())
gathered = [None, None]
dist.all_gather_object(gathered, [res.steps, res.stopped])
if dist.get_rank() == 0:
    with open({str(tmp_path / "out.json")!r}, "w") as fh:
        json.dump(gathered, fh)
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # as test_train.py's DDP test: leave without gloo's teardown
"""
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "out.json").read_text()) == [[1, "SIGTERM"], [1, "SIGTERM"]]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["step"] == 1


def test_the_last_step_is_validated_and_competes_for_best_pt(tmp_path):
    # val_every 100 never falls due in 3 steps: only step 1 and the stop (max_steps) are scored.
    overrides = {"run_dir": tmp_path, "device": "cpu", "val_every": 100, "max_steps": 3, "epochs": 2}
    result = train(build_config("tiny", overrides=overrides), tiny_data(size=64))
    assert [row["step"] for row in result.validation] == [1, 3]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    steps = {row["step"]: row["val_error_hu"] for row in result.validation}
    assert best["step"] == min(steps, key=steps.get)
