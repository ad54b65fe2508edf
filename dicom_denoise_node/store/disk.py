"""Free space under the spool, shared by the stages that write to it.

Receiving refuses new data below ``[node] min_free_mb`` (receive/admission.py) and processing pauses there, since it
writes derived files (denoise/worker.py): one measure, so the two never disagree about the same disk.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class DiskSpace:
    """The free space under one directory against a watermark (``free_bytes`` is replaceable for tests)."""

    def __init__(self, directory: Path, min_free_mb: float, free_bytes: Callable[[Path], int] | None = None) -> None:
        self.directory = Path(directory)
        self.min_free_mb = min_free_mb
        self.free_bytes = free_bytes or (lambda p: shutil.disk_usage(p).free)

    def free_mb(self) -> float:
        return self.free_bytes(self.directory) / MIB

    def ok(self) -> bool:
        """Whether the directory has at least ``min_free_mb`` free."""
        return self.free_mb() >= self.min_free_mb

    def refusal(self) -> str | None:
        """Why the disk is too full for new data, or None."""
        if self.ok():
            return None
        return f"free space {self.free_mb():.0f} MiB under {self.directory} is below min_free_mb={self.min_free_mb:g}"
