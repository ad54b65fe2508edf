"""Stopping a run early and cleanly: a wall-clock cap (``max_minutes``) and SIGTERM/SIGINT, honoured between steps.

Why between steps: a checkpoint taken mid-step would hold half-updated optimisers and could not resume exactly, and a
step is short, so the loop finishes it, writes its checkpoint (and last.pt) and returns. A second signal aborts at
once (the signal's default action); the checkpoints on disk stay whole, being written to a temporary file and renamed.
The handlers are installed even where the shell started the run with SIGINT ignored (a background job), so
``kill -INT`` stops a background run as Ctrl-C stops a foreground one. Under torchrun the ranks agree on the stop, so
every rank stops at the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_MINUTES = "max_minutes"
# Every reason a run may stop for besides its end, by precedence when ranks disagree (the highest wins).
REASONS = ("", MAX_MINUTES, "SIGINT", "SIGTERM")


class StopRequests:
    """The reasons to stop that arrive from outside the loop: the time cap and the two signals (a context manager
    that installs the handlers and puts the previous ones back)."""

    def __init__(self, max_minutes: float) -> None:
        self.max_seconds = max_minutes * 60.0
        self.signal_name = ""
        self._started: float | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # Python lets only the main thread set handlers
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name:  # the second: abort now, as if no handler were installed
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal_name = signal.Signals(signum).name

    def start_clock(self) -> None:
        """The time cap counts from here: the first step (data loading and set-up are not training time)."""
        self._started = time.monotonic()

    def reason(self) -> str:
        """Why the run should stop after this step: a signal's name, ``max_minutes``, or "" to go on."""
        if self.signal_name:
            return self.signal_name
        if self.max_seconds > 0 and self._started is not None and time.monotonic() - self._started >= self.max_seconds:
            return MAX_MINUTES
        return ""


def agreed_reason(reason: str, world: int, device: torch.device) -> str:
    """The reason every rank stops for (the most pressing one any rank has): ranks must stop at the same step."""
    if world == 1:
        return reason
    code = torch.tensor([REASONS.index(reason)], device=device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return REASONS[int(code.item())]
