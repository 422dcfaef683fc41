"""cryptopass-bench store-cost, crypto, messenger and memory: short runs of each, checking
what they report (no timing assertions)."""

from __future__ import annotations

from tests.bench_support import run_bench


async def test_store_cost_acknowledges_every_envelope_and_groups_commits() -> None:
    result = await run_bench("store-cost", "--runs", "2", "--messages", "40", "--batch", "1",
                             "--batch", "10")
    batches = result["batches"]
    assert isinstance(batches, dict) and set(batches) == {"1", "10"}
    for figures in batches.values():
        sends, acknowledgements = figures["send_cpu_us"], figures["ack_cpu_us"]
        assert isinstance(sends, list) and isinstance(acknowledgements, list)
        assert len(sends) == len(acknowledgements) == 2
        per_message = figures["median_cpu_us_per_message"]
        assert isinstance(per_message, float) and per_message > 0
    # One write in flight commits alone (40 sends + 40 acknowledgements per run); 10 in
    # flight share commits: far fewer than the 80 writes per run.
    assert batches["1"]["commits_per_run"] == 80
    assert batches["10"]["commits_per_run"] < 40


async def test_crypto_reports_every_run_and_the_medians() -> None:
    result = await run_bench("crypto", "--runs", "2", "--handshakes", "2", "--pairs", "20")
    assert result["handshakes_per_second"] and result["pairs_per_second"]
    for name in ("handshakes_per_second", "pairs_per_second"):
        runs, median = result[name], result[f"median_{name}"]
        assert isinstance(runs, list) and len(runs) == 2
        assert isinstance(median, float) and median > 0


async def test_messenger_measures_encrypted_and_plaintext_runs() -> None:
    result = await run_bench("messenger", "--runs", "1", "--messages", "5", "--timeout", "60")
    for kind in ("encrypted", "plaintext"):
        runs, median = result[f"{kind}_per_second"], result[f"median_{kind}_per_second"]
        assert isinstance(runs, list) and len(runs) == 1
        assert isinstance(median, float) and median > 0


async def test_memory_holds_every_device_and_takes_a_connection_apart() -> None:
    result = await run_bench("memory", "--devices", "3")
    assert result["connected"] == result["links"] == 3
    assert isinstance(result["rss_kib_per_connection"], float)
    anatomy = result["anatomy"]
    assert isinstance(anatomy, dict)
    assert anatomy["sample"] == 2  # every connection but the reference one
    assert anatomy["bytes_per_connection"] > 0
    assert any(part.startswith("quic.") for part in anatomy["by_part"])
    native = result["native_bytes_per_object"]
    assert isinstance(native, dict)
    assert set(native) == {"aead_aes128gcm", "header_protection_aes128", "key_schedule_sha256"}
