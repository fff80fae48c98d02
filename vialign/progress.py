"""Progress with ETA for long work, shared by every stage: rich bars on a terminal; in a log (stderr not a
terminal) one line per task and interval (`VIALIGN_PROGRESS_INTERVAL` seconds, default 30) with the count,
rate and ETA, never carriage-return bar frames."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
INTERVAL_ENV = "VIALIGN_PROGRESS_INTERVAL"

Report = Callable[[str, int, "int | None"], None]


def on_terminal() -> bool:
    return console.is_terminal


def line_interval() -> float:
    return float(os.environ.get(INTERVAL_ENV, "30"))


def duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class TaskCount:
    start: float
    printed_at: float
    done: int = 0
    total: int | None = None


@dataclass
class ProgressLines:
    """`report(task, advance, total)` for logs: a line when a task starts, every `interval` seconds while it
    runs, and when it completes."""

    interval: float = field(default_factory=line_interval)
    write: Callable[[str], None] = field(
        default=lambda line: console.print(line, markup=False, highlight=False)
    )
    clock: Callable[[], float] = time.monotonic
    tasks: dict[str, TaskCount] = field(default_factory=dict)
    last_event: float | None = None

    def __call__(self, task: str, advance: int, total: int | None) -> None:
        now = self.clock()
        count = self.tasks.get(task)
        if count is None:
            # a task's work began when the reporter last heard of any (or now, for its first task)
            start = now if self.last_event is None else self.last_event
            count = self.tasks[task] = TaskCount(start=start, printed_at=now - self.interval)
        self.last_event = now
        count.done += advance
        count.total = total if total is not None else count.total
        finished = count.total is not None and count.done >= count.total
        if finished or now - count.printed_at >= self.interval:
            count.printed_at = now
            self.write(self.line(task, count, now))

    @staticmethod
    def line(task: str, count: TaskCount, now: float) -> str:
        elapsed = now - count.start
        rate = count.done / elapsed if elapsed > 0 else 0.0
        done = f"{count.done}/{count.total}" if count.total is not None else str(count.done)
        text = f"{task}: {done}, {rate:.2f}/s, elapsed {duration(elapsed)}"
        if count.total is not None and count.done < count.total:
            text += f", eta {duration((count.total - count.done) / rate) if rate > 0 else '?'}"
        return text


@contextmanager
def progress_reporter(enabled: bool = True) -> Iterator[Report]:
    """Yield `report(task, advance, total)`; each new task name gets its own bar (or lines, in a log)."""
    if not enabled:
        yield lambda task, advance, total: None
        return
    if not on_terminal():
        yield ProgressLines()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, TaskID] = {}

        def report(task: str, advance: int, total: int | None) -> None:
            if task not in tasks:
                tasks[task] = progress.add_task(task, total=total)
            progress.advance(tasks[task], advance)

        yield report


def library_bars_off_terminal() -> None:
    """transformers' and the Hub's tqdm bars ("Loading weights", downloads) write a frame per update; in a
    log they are thousands of carriage returns, so they are off there (read when those libraries load)."""
    if on_terminal():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # loaded already (a library user, a test): the variable was read
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
