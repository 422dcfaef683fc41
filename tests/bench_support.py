"""Running ``cryptopass-bench`` as a user does, in a subprocess, for the bench's tests."""

from __future__ import annotations

import json

import trio

from bench.spawn import BIN

__all__ = ["BENCH", "RUN_SECONDS", "run_bench"]

BENCH = str(BIN / "cryptopass-bench")
RUN_SECONDS = 200
"""Ceiling for one bench run (a scenario's own --timeout ends a stuck run sooner)."""


async def run_bench(*arguments: str) -> dict[str, object]:
    """``cryptopass-bench ARGUMENTS --json``: its result, once it exited 0 with no errors."""
    with trio.fail_after(RUN_SECONDS):
        completed = await trio.run_process([BENCH, *arguments, "--json"], capture_stdout=True,
                                           capture_stderr=True, check=False)
    assert completed.returncode == 0, completed.stderr.decode()[-2000:]
    result: dict[str, object] = json.loads(completed.stdout)
    assert not result.get("errors"), result.get("error_samples")
    return result
