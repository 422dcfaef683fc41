"""``cryptopass-bench live --group N`` as a user runs it (a relay subprocess it starts): every
group and pairwise message arrives and opens, and the report holds the figures the closing
note compares (no timing is asserted)."""

from __future__ import annotations

import os

import trio

from tests.bench_support import BENCH, RUN_SECONDS, run_bench

FIGURES = ("sender_cpu_us_per_message", "bytes_uploaded_per_message",
           "relay_cpu_us_per_message", "relay_bytes_stored_per_message")


async def test_live_group_reports_a_group_message_against_pairwise() -> None:
    result = await run_bench("live", "--group", "4", "--messages", "2", "--size", "2000")
    assert result["delivered"] == {"group": 6, "pairwise": 6, "unreadable": 0}
    group, pairwise = result["group"], result["pairwise"]
    assert isinstance(group, dict) and isinstance(pairwise, dict)
    assert set(group) == set(pairwise) == set(FIGURES)
    # Sizes are not timings: a 2,000-byte text goes up once in a group message, three times
    # pairwise, and the relay stores what it was given.
    assert group["bytes_uploaded_per_message"] < pairwise["bytes_uploaded_per_message"]
    assert group["relay_bytes_stored_per_message"] == group["bytes_uploaded_per_message"]
    assert pairwise["relay_bytes_stored_per_message"] == pairwise["bytes_uploaded_per_message"]


async def test_live_group_refuses_a_run_over_the_relays_send_budget() -> None:
    with trio.fail_after(RUN_SECONDS):
        completed = await trio.run_process(
            [BENCH, "live", "--group", "50", "--messages", "50"], capture_stdout=True,
            capture_stderr=True, check=False, env={**os.environ, "COLUMNS": "400"})
    assert completed.returncode != 0
    assert b"--messages 10 or fewer" in completed.stderr
