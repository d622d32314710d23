"""File writes that overlap compression: a worker thread writes a finished layer's files while the
main thread goes on with the next layer (the shards and the work dir's resume files took 9-11 s of a
7B run on an H200, all on the critical path). Writes run in submission order, at most `depth` wait
at a time (each holds a layer's compressed tensors in memory), and the first failure (a full disk)
is raised in the main thread at the next `submit` or at `drain`. Every write stays atomic on its own."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class BackgroundWrites:
    def __init__(self, depth: int = 1):
        self.depth = depth
        self._pool: ThreadPoolExecutor | None = None  # started on the first write
        self._pending: list[Future] = []

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        """Queue `write(*args)`; its arguments must not change afterwards (pass CPU copies)."""
        while len(self._pending) >= self.depth:
            self._pending.pop(0).result()  # raises the write's own error
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llava-fa-writes")
        self._pending.append(self._pool.submit(write, *args))

    def drain(self) -> None:
        """Wait for every queued write (raising the first failure)."""
        while self._pending:
            self._pending.pop(0).result()
