"""``cryptopass-bench calls``: a short smoke run against a spawned relay and echo server
(real QUIC datagrams; the figures are checked for shape and consistency, never for speed)."""

from __future__ import annotations

from typing import Any, cast

from tests.bench_support import run_bench


async def test_calls_smoke_forwards_every_datagram_and_ramps() -> None:
    result = cast(dict[str, Any], await run_bench(
        "calls", "--calls", "2", "--seconds", "0.4", "--ramp-max", "4",
        "--ramp-seconds", "0.2", "--timeout", "60"))
    relay, echo = result["relay"], result["echo"]
    # 2 calls x 2 directions x 50/s x 0.4 s, every one sent through the relay
    assert relay["datagrams_sent"] == 80 and echo["datagrams_sent"] == 80
    assert 0 < relay["datagrams_received"] <= 80
    assert result["loss"] == relay["loss"] == round(1 - relay["datagrams_received"] / 80, 4)
    for latencies in (result["relay_latency_ms"], result["echo_latency_ms"]):
        assert set(latencies) == {"p50", "p95", "p99"}
    assert set(result["added_latency_ms"]) == {"p50", "p99"}
    assert [step["calls"] for step in result["ramp"]][:2] == [2, 4]
    assert isinstance(relay["relay_cpu_share"], float)
    assert result["calls_carried_below_1pct_loss"] in (None, 2, 3, 4)
    assert result["ramp_stopped_by"] in ("loss", "load_generator", "ramp_max")
    assert result["calls_per_relay_cpu_estimate"] is None or (
        result["calls_per_relay_cpu_estimate"] > 0)
