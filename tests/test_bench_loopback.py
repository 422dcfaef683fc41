"""bench/loopback.py: the percentile helper, and short smoke runs (no timing assertions)."""

from __future__ import annotations

import math

import pytest

from bench.loopback import BenchConfig, parse_args, percentile, run_benchmark


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([15, 20, 35, 40, 50], 5, 15),     # the classic nearest-rank example
    ([15, 20, 35, 40, 50], 30, 20),
    ([15, 20, 35, 40, 50], 40, 20),
    ([15, 20, 35, 40, 50], 50, 35),
    ([15, 20, 35, 40, 50], 100, 50),
    ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 25, 7),
    ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 50, 8),
    ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 75, 15),
    ([20, 16, 15, 13, 10, 8, 8, 7, 6, 3], 75, 15),  # order of the input does not matter
    ([42.0], 0, 42.0),
    ([42.0], 99, 42.0),
    ([1, 2], 0, 1),
    (list(range(1, 1001)), 99, 990),
    (list(range(1, 1001)), 99.9, 999),
])
def test_percentile_nearest_rank(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == expected


def test_percentile_refuses_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)


def test_arguments() -> None:
    config, as_json = parse_args(["--messages", "10", "--size", "16", "--mode", "sequential",
                                  "--both-ways", "--json"])
    assert (config.messages, config.size, config.mode, config.both_ways, as_json) == (
        10, 16, "sequential", True, True)
    with pytest.raises(SystemExit):
        parse_args(["--size", "15"])


@pytest.mark.parametrize("config", [
    BenchConfig(messages=50, size=64, mode="pipelined", relay="inprocess", timeout=20),
    BenchConfig(messages=50, size=256, mode="sequential", both_ways=True, relay="subprocess",
                timeout=20),
], ids=["pipelined-inprocess", "sequential-both-ways-subprocess"])
async def test_smoke_run_delivers_everything(config: BenchConfig) -> None:
    result = await run_benchmark(config)
    assert result.errors == 0, result.error_samples
    assert result.delivered == result.sent == 50
    assert result.duplicates == 0
    assert result.out_of_order == 0
    assert result.seconds > 0 and result.messages_per_second > 0
    assert all(not math.isnan(value) for value in result.latency_ms.values())
    assert result.latency_ms["p50"] <= result.latency_ms["p95"] <= result.latency_ms["p99"]
    if config.relay == "subprocess":
        assert result.server_cpu_us_per_message is not None
    else:
        assert result.server_cpu_us_per_message is None
