"""Progress reporting for long work: rich progress bars on a terminal, silence elsewhere.

Progress is counted in public units only: files of the source listing, optimizer iterations, synthetic rows (a DP
output). Never in rows read, bytes read or anything else measured on the sensitive data: a progress line is printed
on the operator's terminal and in scheduler logs, outside the DP release. A stage whose work has no public unit (a
catalog table has no file listing) shows a spinner and the elapsed time, no count.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text


class Ticker:
    """Advances one stage, in public units. ``ticker(n)`` marks n more units done; ``ticker.set_total(total, unit)``
    says how many there are (e.g. ``set_total(len(source.files), "files")``, known from the listing). This base
    class only records; reporters subclass it to draw. Engines receive one as ``advance``."""

    def __init__(self) -> None:
        self.completed = 0
        self.total: int | None = None
        self.unit = ""

    def set_total(self, total: int, unit: str = "") -> None:
        self.total, self.unit = int(total), unit

    def __call__(self, n: int = 1) -> None:
        self.completed += int(n)


Advance = Ticker


class Reporter:
    """Silent reporter; the base of the rich one. ``stage`` yields a :class:`Ticker` for the stage."""

    def __init__(self) -> None:
        self.current_stage: str | None = None
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[name]`` (durations only, never counts). Durations of the
        trusted pass are for the operator's console (``--verbose``); only post-processing durations go into a
        release statement (timing is not protected: see the README's threat model)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def report_timings(self) -> None:
        """Print the timing breakdown (verbose reporters only)."""

    @contextlib.contextmanager
    def stage(self, description: str, total: float | None = None) -> Iterator[Ticker]:
        self.current_stage = description
        ticker = Ticker()
        if total is not None:
            ticker.set_total(int(total))
        yield ticker

    def say(self, message: str) -> None:
        pass


def _counted(task: Task) -> bool:
    return task.total is not None and task.fields.get("counted", True)


class _Bar(BarColumn):
    """A bar only when the total is known (no pulsing bar: its frame depends on the time)."""

    def render(self, task: Task):
        return super().render(task) if _counted(task) else Text("")


class _Count(ProgressColumn):
    """``done/total unit`` when the total is known, nothing otherwise."""

    def render(self, task: Task) -> Text:
        if not _counted(task):
            return Text("")
        unit = task.fields.get("unit", "")
        return Text(f"{task.completed:,.0f}/{task.total:,.0f}" + (f" {unit}" if unit else ""))


class _RichTicker(Ticker):
    def __init__(self, bar: Progress, task: object):
        super().__init__()
        self._bar, self._task = bar, task

    def set_total(self, total: int, unit: str = "") -> None:
        super().set_total(total, unit)
        self._bar.update(self._task, total=self.total, unit=unit)

    def __call__(self, n: int = 1) -> None:
        super().__call__(n)
        self._bar.advance(self._task, n)


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None, verbose: bool = False):
        super().__init__()
        self.console = console or Console(stderr=True)
        self.verbose = verbose

    def report_timings(self) -> None:
        if self.verbose and self.timings:
            parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.timings.items())
            self.console.print(f"time per stage: {parts}")

    @contextlib.contextmanager
    def stage(self, description: str, total: float | None = None) -> Iterator[Ticker]:
        self.current_stage = description
        columns = [SpinnerColumn(finished_text="•"), TextColumn("{task.description}"), _Bar(), _Count(),
                   TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(description, total=total, unit="")
            ticker = _RichTicker(bar, task)
            if total is not None:
                ticker.total = int(total)
            yield ticker
            if ticker.total is None:  # no public count: mark the stage finished, with no number
                bar.update(task, total=0, completed=0, counted=False)

    def say(self, message: str) -> None:
        self.console.print(message)
