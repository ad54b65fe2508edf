"""Same seed, same result: fixed-seed tiny runs of each objective and feed give the checkpoints recorded before the
trainer was reorganised (issue 27), and the bundled models give the recorded pixels on a fixed slice.

The digests in golden_digests.json were recorded from the code before the restructuring (commit a7d8159, three
engines) with ``python -m tests.trainer.golden_runs`` under the environment below. The one training loop reproduces
every CycleGAN checkpoint and the paired run's epoch and last checkpoints bit for bit. Five entries were re-recorded
with it, each compared field by field with the old engine's checkpoint first (weights, averages, discriminators,
optimisers and validation state equal):

- paired ``best.pt``: ``last_losses`` is now this step's losses (the paired engine saved the step before's, the
  CycleGAN engine always this step's), and an empty ``scaler`` entry;
- the device feed's three checkpoints: they now also hold the optimisers, schedules, pools and generator state (the
  old fast engine could not resume) and the iteration; weights and losses are the old engine's.

Re-record only for a change that is meant to change training or inference, and say so in the commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# One thread, and the AVX2 kernels of ATen and oneDNN: the same arithmetic on every x86-64 machine of CI's kind.
PINNED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_tiny_runs_and_bundled_models_reproduce_the_recorded_digests() -> None:
    env = {**os.environ, **PINNED}
    run = subprocess.run(
        [sys.executable, "-m", "tests.trainer.golden_runs"],
        cwd=HERE.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)
    want = json.loads((HERE / "golden_digests.json").read_text())
    assert got == want
