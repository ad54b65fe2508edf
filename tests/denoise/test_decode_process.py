"""③ Decoding in a child process: the same HU as in-process, and a child that crashes, hangs or fails costs one
series, never the node (denoise/decode_process.py)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_denoise_node.denoise.decode import file_hu
from dicom_denoise_node.denoise.decode_process import DecoderFailed, DecoderProcess
from tests.peers import j2k_noise_slice, wait_until, write_ct_series


@pytest.fixture
def decoder():
    d = DecoderProcess(timeout_s=60)
    try:
        yield d
    finally:
        d.close()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_the_child_decodes_exactly_what_this_process_would(decoder, tmp_path):
    files = write_ct_series(tmp_path / "plain", 2, rows=32, columns=32) + [j2k_noise_slice(tmp_path / "j2k", 64)]
    for f in files:
        np.testing.assert_array_equal(decoder.hu(f), file_hu(f))
    assert decoder.restarts == 0


def test_an_undecodable_file_is_a_value_error_and_the_child_stays(decoder, tmp_path):
    (f,) = write_ct_series(tmp_path / "bad", 1, rows=32, columns=32)
    ds = dcmread(f)
    ds.PixelData = ds.PixelData[:100]  # truncated native pixel data
    ds.save_as(f)
    decoder.hu(write_ct_series(tmp_path / "ok", 1)[0])
    pid = decoder.pid
    with pytest.raises(ValueError, match="cannot decode"):
        decoder.hu(f)
    assert decoder.pid == pid and decoder.restarts == 0


def test_a_child_that_dies_while_decoding_fails_that_file_and_the_next_one_gets_a_fresh_child(decoder, tmp_path):
    """SIGSEGV in the middle of a decode (a codec crashing on crafted bytes): DecoderFailed with the exit code,
    this process unharmed, and the next file decoded by a new child."""
    slow = j2k_noise_slice(tmp_path / "slow", 2048)
    small = write_ct_series(tmp_path / "small", 1, rows=32, columns=32)[0]
    decoder.hu(small)  # the child is up
    pid = decoder.pid
    assert pid is not None
    idle = _cpu_ticks(pid)
    outcome: list[BaseException | np.ndarray] = []

    def decode() -> None:
        try:
            outcome.append(decoder.hu(slow))
        except BaseException as exc:  # noqa: BLE001 - kept for the assertion below
            outcome.append(exc)

    caller = threading.Thread(target=decode)
    caller.start()
    assert wait_until(lambda: _cpu_ticks(pid) > idle + 2, timeout=30, interval=0.001), "the child never decoded"
    os.kill(pid, signal.SIGSEGV)
    caller.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], DecoderFailed), outcome
    assert f"exit code {-signal.SIGSEGV}" in str(outcome[0]) and slow.name in str(outcome[0])
    np.testing.assert_array_equal(decoder.hu(small), file_hu(small))
    assert decoder.pid != pid and decoder.restarts == 1


def test_a_decode_over_the_time_limit_kills_the_child(tmp_path):
    slow = j2k_noise_slice(tmp_path / "slow", 2048)
    decoder = DecoderProcess(timeout_s=0.02)
    try:
        decoder.hu(write_ct_series(tmp_path / "small", 1)[0])  # start-up is not counted
        pid = decoder.pid
        with pytest.raises(DecoderFailed, match="decode_timeout_s=0.02"):
            decoder.hu(slow)
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        decoder.close()
