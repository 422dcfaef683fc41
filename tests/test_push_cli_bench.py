"""``cryptopass-bench offline --push`` as a user runs it: every device is woken once, and the
result carries the wake latencies and the push rate (the figures themselves are measured, not
asserted)."""

from __future__ import annotations

from tests.bench_support import run_bench


async def test_offline_push_wakes_every_device_once() -> None:
    result = await run_bench("offline", "--push", "--messages", "12", "--window", "4")
    assert result["scenario"] == "offline-push"
    assert (result["devices"], result["woken"]) == (12, 12)
    assert result["extra_wakes"] == 0 and result["refused_pushes"] == 0
    latency = result["wake_latency_ms"]
    assert isinstance(latency, dict) and set(latency) == {"p50", "p95", "p99"}
    assert isinstance(result["pushes_per_second"], float) and result["pushes_per_second"] > 0


async def test_offline_push_refuses_encrypted() -> None:
    import trio

    from tests.bench_support import BENCH

    completed = await trio.run_process([BENCH, "offline", "--push", "--encrypted"],
                                       capture_stdout=True, capture_stderr=True, check=False)
    assert completed.returncode == 2
    assert b"--push measures wake-ups" in completed.stderr
