"""cryptopass-bench exchange and cluster: the percentile helper, how a load is shared out,
the option sets refused before anything starts, and short runs on a relay the bench starts
and on one it did not (real relay subprocesses, real QUIC; no timing assertions). The
cluster runs on PostgreSQL are in test_cluster.py and test_workers_cluster.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.exchange import ExchangeLoad
from bench.spawn import spawn_relay
from bench.stats import percentile
from tests.bench_support import run_bench

MESSAGES = 50
runner = CliRunner()


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


def test_the_messages_are_shared_out_between_the_flows() -> None:
    # A_i is at position 2i, B_i at 2i + 1.
    assert ExchangeLoad(messages=10).flows() == [(0, 1, 10)]
    assert ExchangeLoad(messages=11, both_ways=True).flows() == [(0, 1, 6), (1, 0, 5)]
    assert ExchangeLoad(messages=7, pairs=2, both_ways=True).flows() == [
        (0, 1, 2), (1, 0, 2), (2, 3, 2), (3, 2, 1)]
    with pytest.raises(ValueError, match="2 messages at least"):
        ExchangeLoad(messages=1, both_ways=True).check()
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ExchangeLoad(size=15).check()


def _plain(output: str) -> str:
    """Typer's error box without its frame and line breaks."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize(("arguments", "message"), [
    (["exchange", "--size", "15"], "--size"),
    (["exchange", "--messages", "1", "--both-ways"], "2 messages at least"),
    (["exchange", "--messages", "3", "--pairs", "4"], "4 messages at least"),
    (["exchange", "--mode", "burst"], "--mode"),
    (["exchange", "--store", "sqlite:///x.db"], "need --relay"),
    (["cluster", "--nodes", "2", "--store", "sqlite"], "need --store postgresql"),
    (["cluster", "--nodes", "1", "--workers", "2", "--store", "sqlite"],
     "need --store postgresql"),
    (["cluster", "--nodes", "2", "--workers", "2"], "--workers runs on one node"),
    (["cluster", "--nodes", "3"], "--nodes"),
])
def test_option_sets_that_cannot_run_are_refused_before_anything_starts(
        arguments: list[str], message: str) -> None:
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert message in _plain(result.output)


def _check_complete(result: dict[str, object]) -> None:
    assert result["errors"] == 0, result["error_samples"]
    assert result["delivered"] == result["sent"] == result["messages"] == MESSAGES
    assert result["duplicates"] == 0
    assert result["out_of_order"] == 0
    seconds, rate = result["seconds"], result["messages_per_second"]
    assert isinstance(seconds, float) and isinstance(rate, float)
    assert seconds > 0 and rate > 0
    latency = result["latency_ms"]
    assert isinstance(latency, dict)
    assert latency["p50"] <= latency["p95"] <= latency["p99"]


async def test_sequential_both_ways_on_a_relay_the_bench_starts_delivers_everything() -> None:
    result = await run_bench("exchange", "--messages", str(MESSAGES), "--size", "16",
                             "--mode", "sequential", "--both-ways", "--timeout", "20")
    assert (result["size"], result["mode"], result["both_ways"]) == (16, "sequential", True)
    _check_complete(result)
    assert isinstance(result["server_cpu_us_per_message"], float)  # the bench's own relay


async def test_pipelined_on_a_running_relay_delivers_everything(tmp_path: Path) -> None:
    async with spawn_relay(tmp_path / "relay") as relay:
        result = await run_bench(
            "exchange", "--messages", str(MESSAGES), "--size", "64", "--timeout", "20",
            "--relay", f"127.0.0.1:{relay.port}", "--ca", str(relay.cert),
            "--data-dir", str(relay.data_dir))
    assert (result["size"], result["mode"], result["both_ways"]) == (64, "pipelined", False)
    _check_complete(result)
    assert result["server_cpu_us_per_message"] is None  # a relay the bench did not start
