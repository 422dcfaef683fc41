"""Progress bars for file transfers on the command line (``cryptopass send-file``,
``receive --download-dir``), drawn with rich on stderr so that they never mix with the JSON
lines on stdout, and only when stderr is a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from client.attachments import TransferProgress

__all__ = ["PROGRESS_MIN_BYTES", "transfer_bars"]

PROGRESS_MIN_BYTES = 1024 * 1024
"""Transfers smaller than this (bytes) draw no bar: they end before one would be read."""


@contextmanager
def transfer_bars(*, terminal: bool) -> Iterator[TransferProgress | None]:
    """A `TransferProgress` that draws one bar per large file on stderr, or None when stderr
    is not a terminal (``terminal`` False): scripts get the JSON lines alone."""
    if not terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bars:
        tasks: dict[str, TaskID] = {}

        def advance(name: str, done: int, total: int) -> None:
            if total < PROGRESS_MIN_BYTES:
                return
            task = tasks.get(name)
            if task is None:
                task = tasks[name] = bars.add_task(name, total=total)
            bars.update(task, completed=done)

        yield advance
