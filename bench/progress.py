"""Progress bars on standard error while a scenario runs (stdout stays for results)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["REFRESH_SECONDS", "progress_of"]

REFRESH_SECONDS = 0.25
"""How often the bar reads its counter."""


@asynccontextmanager
async def progress_of(description: str, total: int,
                      read: Callable[[], int]) -> AsyncIterator[None]:
    """Show a bar for ``read()`` out of ``total`` while the block runs."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield  # nothing to draw on a pipe or a file
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        async def refresh() -> None:
            while True:
                progress.update(task, completed=read())
                await trio.sleep(REFRESH_SECONDS)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
