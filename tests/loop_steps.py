"""The longest single step of the trio event loop, for tests of attacks that used to stall it.

A stall is one task running a long time without yielding: every other connection waits that
long. The tests check the mechanism (no step grows with the attack) rather than wall-clock
times of whole requests: a bound such as ``LONGEST_STEP_S`` is far above a normal step (tens or
hundreds of microseconds) and far below the stalls of seconds it guards against.

Each step is measured twice. ``longest_s`` is wall time (``time.perf_counter``): everything a
step made the loop wait, blocking calls included. ``longest_cpu_s`` is the loop thread's CPU time
(``time.thread_time``): what the step itself computed, without the time the operating system
gave other processes meanwhile, which on a busy shared machine stretches the wall time of any
step by tens of milliseconds. The stalls found so far were computation (a table scan, password
hashing on the loop), so a test on a shared machine bounds ``longest_cpu_s``.

While measuring, the objects that exist already are frozen out of the garbage collector
(``gc.freeze``): late in a whole test session they are every earlier test's leftovers, and one
full collection over them inside a step once cost 155 ms of CPU under ``python -O`` in CI. That
heap is the test session's, not the relay's; what the attack allocates is still collected.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["LONGEST_STEP_S", "LoopSteps", "measure_loop_steps"]

LONGEST_STEP_S = 0.1
"""A generous bound on one step during an attack (100 ms)."""


class LoopSteps(trio.abc.Instrument):
    """Records the longest task step (and the task) while installed."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        """Wall-clock seconds of the longest step seen."""
        self.longest_task = ""
        """Name of the task that took it."""
        self.longest_cpu_s = 0.0
        """CPU seconds of the loop thread in the step that computed longest."""
        self.longest_cpu_task = ""
        """Name of the task that took it."""
        self.steps = 0
        """Steps seen."""
        self._started: tuple[float, float] | None = None
        """(wall, CPU) when the running step started; None for the step that installed the
        instrument."""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = (time.perf_counter(), time.thread_time())  # one task steps at a time

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is None:
            return
        took = time.perf_counter() - self._started[0]
        computed = time.thread_time() - self._started[1]
        self._started = None
        self.steps += 1
        if took > self.longest_s:
            self.longest_s, self.longest_task = took, task.name
        if computed > self.longest_cpu_s:
            self.longest_cpu_s, self.longest_cpu_task = computed, task.name


@contextmanager
def measure_loop_steps() -> Iterator[LoopSteps]:
    """Install a ``LoopSteps`` on the running loop for the block (it must run in trio)."""
    steps = LoopSteps()
    gc.collect()
    gc.freeze()
    trio.lowlevel.add_instrument(steps)
    try:
        yield steps
    finally:
        trio.lowlevel.remove_instrument(steps)
        gc.unfreeze()
