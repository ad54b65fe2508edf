"""What /healthz and `denoise-node status` report: is each part the node needs to do its job working now?

Each check answers for something an admin can act on: the SCP socket, the scheduler's jobs, a catalog write,
the model file the node loaded (a restart needs it), and free space above the watermark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
