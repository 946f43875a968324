"""The progress bar of a bank write: samples done, samples/s and time left."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["shard_progress"]


class _SamplesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} samples/s" if speed else "- samples/s", style="progress.data.speed")


@contextmanager
def shard_progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over ``total`` samples (samples/s, ETA); yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), _SamplesPerSecond(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("generating", total=total)
        yield lambda n: bar.advance(task, n)
