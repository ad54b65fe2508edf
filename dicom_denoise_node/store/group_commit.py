"""Group commit: concurrent callers that each need "my row is committed" share one transaction and one fsync.

Every C-STORE must be durable before Success, so each receiving thread waits for its catalog commit. With several
scanners sending at once, those commits queue behind SQLite's single writer, each paying its own fsync. Here the
first caller to take the commit lock becomes the leader: it commits every request queued so far (its own
included) in one batch and wakes their owners; callers that arrived meanwhile find their request done, or lead
the next batch. No thread of its own, nothing to start or stop, and a lone caller pays one uncontended lock.

The batch function returns one result per item (None or the exception for that item), so that one bad request
fails only its own caller (the catalog retries a failed batch one item at a time to find it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_BATCH = 64


@dataclass
class _Request(Generic[T]):
    item: T
    done: bool = False
    error: BaseException | None = None


@dataclass
class GroupCommitStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.items += size
            self.largest = max(self.largest, size)


class GroupCommit(Generic[T]):
    """Run ``commit_batch`` over the requests of concurrent :meth:`submit` callers, batched."""

    def __init__(
        self, commit_batch: Callable[[Sequence[T]], Sequence[BaseException | None]], max_batch: int = MAX_BATCH
    ) -> None:
        self._commit_batch = commit_batch
        self._max_batch = max_batch
        self._commit_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Request[T]] = []
        self.stats = GroupCommitStats()

    def submit(self, item: T) -> None:
        """Return once ``item`` is committed; raise its exception if its commit failed."""
        request = _Request(item)
        with self._queue_lock:
            self._queue.append(request)
        while True:
            with self._commit_lock:
                if request.done:
                    break
                with self._queue_lock:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                self._run(batch)
        if request.error is not None:
            raise request.error

    @contextmanager
    def commit_in_progress(self) -> Iterator[None]:
        """Hold the commit lock as a running commit does, so that callers queue behind it (tests show batching)."""
        with self._commit_lock:
            yield

    def queued(self) -> int:
        """Requests waiting for the next batch."""
        with self._queue_lock:
            return len(self._queue)

    def _run(self, batch: list[_Request[T]]) -> None:
        try:
            results = list(self._commit_batch([r.item for r in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"commit_batch returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - the waiting callers must not be left hanging
            results = [exc] * len(batch)
        for request, error in zip(batch, results, strict=True):
            request.error = error
            request.done = True
        self.stats.add(len(batch))
