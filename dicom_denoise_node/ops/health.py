"""What /healthz and `denoise-node status` report: is each part the node needs to do its job working now?

Each check answers for something an admin can act on: the SCP socket, the scheduler's jobs, a catalog write,
the model file the node loaded (a restart needs it), and free space above the watermark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Health:
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "unhealthy",
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in self.checks.items()},
        }


def run_checks(checks: dict[str, Callable[[], Check]]) -> Health:
    """Run every check; one that raises is a failed check with the exception as its detail."""
    results = {}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as exc:
            results[name] = Check(False, f"{type(exc).__name__}: {exc}")
    unhealthy = [f"{n}: {c.detail}" for n, c in results.items() if not c.ok]
    if unhealthy:
        log.debug("health: %s", "; ".join(unhealthy))
    return Health(results)


class Heartbeat:
    """The completion job beats every poll; a scheduler that stopped running its jobs stops beating."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._last: float | None = None

    def beat(self) -> None:
        self._last = time.monotonic()

    def check(self, running: bool) -> Check:
        if not running:
            return Check(False, "scheduler not running")
        if self._last is None:
            return Check(True, "scheduler started; first job run pending")
        age = time.monotonic() - self._last
        if age > self.max_age_s:
            return Check(False, f"jobs last ran {age:.0f} s ago (limit {self.max_age_s:.0f} s)")
        return Check(True, f"jobs ran {age:.1f} s ago")


def node_checks(
    listening: Callable[[], tuple[bool, str]] | None,
    heartbeat: Heartbeat,
    scheduler_running: Callable[[], bool],
    write_probe: Callable[[], None],
    model: Callable[[], tuple[str, str, Path, str] | None] | None,
    free_mb: Callable[[], float],
    min_free_mb: float,
    data_dir: Path,
) -> Health:
    """The node's checks behind /healthz (and `status`): SCP, scheduler, catalog, model file, disk. A node of one
    role leaves out what it does not run (a receiver has no model, a worker no SCP): ``listening``/``model`` None."""

    def scp() -> Check:
        assert listening is not None
        ok, detail = listening()
        return Check(ok, detail)

    def catalog() -> Check:
        write_probe()
        return Check(True, "writable")

    def model_file() -> Check:
        assert model is not None
        loaded = model()
        if loaded is None:
            return Check(False, "no model loaded")
        name, version, weights, device = loaded
        if not weights.exists():
            return Check(False, f"{name} {version} loaded, but {weights} is gone: a restart will fail")
        return Check(True, f"{name} {version} on {device}")

    def disk() -> Check:
        free = free_mb()
        return Check(free >= min_free_mb, f"{free:.0f} MiB free under {data_dir} (min_free_mb={min_free_mb:g})")

    checks: dict[str, Callable[[], Check]] = {
        "scp": scp,
        "scheduler": lambda: heartbeat.check(scheduler_running()),
        "catalog": catalog,
        "model": model_file,
        "disk": disk,
    }
    if listening is None:
        del checks["scp"]
    if model is None:
        del checks["model"]
    return run_checks(checks)
