"""Progress bars of the long evaluation steps: rich bars on stderr with the elapsed time and an ETA."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

T = TypeVar("T")


def _progress(disable: bool) -> Progress:
    # stderr: stdout keeps only the result table, so `llava-fa eval ... > table.txt` stays clean.
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=disable, transient=False)


@contextmanager
def progress_counter(total: int, desc: str, unit: str, enabled: bool = True) -> Iterator:
    """A bar of `total` steps; yields `advance(n)`. Nothing is drawn when not `enabled`."""
    with _progress(not enabled) as bar:
        task = bar.add_task(desc, total=total, unit=unit)
        yield lambda n=1: bar.advance(task, n)


def tracked(items: Iterable[T], total: int, desc: str, unit: str, enabled: bool = True) -> Iterator[T]:
    """The items, one bar step each."""
    with progress_counter(total, desc, unit, enabled) as advance:
        for item in items:
            yield item
            advance()
