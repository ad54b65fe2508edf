"""One node per data directory: the lock is taken first, names its holder, and goes with the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dicom_denoise_node.store.lock import DataDirLock, DataDirLocked


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    first = DataDirLock(tmp_path / "data")
    first.acquire()
    second = DataDirLock(tmp_path / "data")
    with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()  # free again once released
    second.release()


def test_the_lock_goes_with_its_process_even_killed(tmp_path):
    code = (
        "import os, sys; from dicom_denoise_node.store.lock import DataDirLock; "
        f"DataDirLock({str(tmp_path)!r}).acquire(); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    lock = DataDirLock(tmp_path)
    lock.acquire()  # no stale lock after kill -9
    lock.release()
