"""Wall seconds per stage of a compression run (load, capture, statistics, compress, share, forward,
save), summed over blocks and written into the report: where the time goes, measured, before
anyone optimizes it. On CUDA the clock synchronizes at each boundary, so GPU work is charged to the
stage that queued it (a per-layer `seconds` alone can absorb the previous stage's queued work)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cuda = False  # set once the run's device is known

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def _sync(self) -> None:
        if self.cuda and torch.cuda.is_available():
            torch.cuda.synchronize()

    def rounded(self) -> dict[str, float]:
        return {stage: round(s, 3) for stage, s in self.seconds.items()}
