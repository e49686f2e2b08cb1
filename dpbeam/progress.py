"""Progress reporting for long work: rich progress bars on a terminal, silence elsewhere."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

Advance = Callable[[int], None]


class Reporter:
    """Silent reporter; the base of the rich one. ``stage`` yields a function that advances the stage by n units."""

    @contextlib.contextmanager
    def stage(self, description: str, total: float | None = None) -> Iterator[Advance]:
        yield lambda n=1: None

    def say(self, message: str) -> None:
        pass


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)

    @contextlib.contextmanager
    def stage(self, description: str, total: float | None = None) -> Iterator[Advance]:
        if total is None:  # unknown length: a spinner, a running count and the time
            columns = [SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f}"),
                       TimeElapsedColumn()]
        else:
            columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
            if total is None:
                bar.update(task, total=bar.tasks[0].completed)

    def say(self, message: str) -> None:
        self.console.print(message)
