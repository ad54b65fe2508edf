"""Same seed, same result: fixed-seed tiny runs of each objective and feed give the checkpoints recorded before the
trainer was reorganised (issue 27), and the bundled models give the recorded pixels on a fixed slice.

The digests in golden_digests.json were recorded from the code before the restructuring (commit 92aa610) with
``python -m tests.trainer.golden_runs`` under the environment below. Re-record them only for a change that is meant
to change training or inference, and say so in the commit.
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
