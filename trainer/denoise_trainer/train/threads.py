"""How many CPU threads torch uses in a training run (``train --threads``).

Why not torch's default: it takes every core, and on a machine busy with something else (the node, another run) its
threads wait for each other at every operation; on a busy 2-core machine that ran 6.5 × slower (issue 29). A few
threads are nearly as fast on an idle machine and degrade gracefully on a busy one, and a busy machine should be
given fewer still.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

DEFAULT_MAX_THREADS = 4


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(requested: int | None) -> tuple[int, str]:
    """(threads, why): ``requested``; else OMP_NUM_THREADS when set (the user's choice for every library); else
    min(CPUs, 4)."""
    if requested:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cpus = available_cpus()
    return min(cpus, DEFAULT_MAX_THREADS), f"min({cpus} CPUs, {DEFAULT_MAX_THREADS})"


def set_threads(requested: int | None) -> tuple[int, str]:
    """Put the chosen thread count in force for this process and log it; returns (threads, why)."""
    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    log.info("torch uses %d CPU threads (%s)", threads, why)
    return threads, why
