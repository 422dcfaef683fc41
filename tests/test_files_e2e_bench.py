"""``cryptopass-bench files`` as a user runs it: a real relay and a bare QUIC server, both
directions measured beside each other (no timing assertions: the figures only exist)."""

from __future__ import annotations

from tests.bench_support import run_bench


async def test_the_files_bench_reports_both_directions_beside_bare_quic() -> None:
    result = await run_bench("files", "--size", "1", "--runs", "1")
    assert result["intact"] is True
    assert result["size_bytes"] == 1024 * 1024
    for field in ("upload_mb_per_second", "download_mb_per_second",
                  "bare_upload_mb_per_second", "bare_download_mb_per_second",
                  "upload_over_bare", "download_over_bare"):
        value = result[field]
        assert isinstance(value, float) and value > 0, (field, value)
