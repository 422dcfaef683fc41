"""Smoke run of bench.store_cost (no timing assertions)."""

from __future__ import annotations

import trio

from bench.store_cost import measure


async def test_store_cost_acknowledges_every_envelope_and_groups_commits() -> None:
    with trio.fail_after(60):
        result = await measure(runs=2, messages=100, batch=10)
    assert len(result["send_cpu_us"]) == len(result["ack_cpu_us"]) == 2
    assert result["median_cpu_us_per_message"] > 0
    # 10 writes in flight share commits: far fewer commits than the 200 writes per run.
    assert result["commits_per_run"] < 100
