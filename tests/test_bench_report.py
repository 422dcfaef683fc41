"""cryptopass-bench on a terminal: nested results print as nested tables, never as a repr."""

from __future__ import annotations

import io

from rich.console import Console

from bench.report import print_result, shown

TRANSPORT_RESULT = {
    "scenario": "transport", "devices": 20, "echoed": 12_345, "seconds": 1.5,
    "latency_ms": {"p50": 0.512, "p95": 1.25, "p99": 3.5},
    "errors": 0, "error_samples": [],
    "relay": {"scenario": "live", "delivered": 12_345,
              "latency_ms": {"p50": 4.25, "p95": 8.0, "p99": 11.5},
              "server_cpu_us_per_message": 141.3},
    "relay_over_ceiling": {"server_cpu_us_per_message": 5.61, "latency_p50": None},
    "runs": [{"batch": 1, "cpu_us": 58.2}, {"batch": 64, "cpu_us": 19.7, "note": "fsync"}],
}


def _printed(result: dict[str, object], width: int = 120) -> str:
    buffer = io.StringIO()
    print_result("transport", result,
                 Console(file=buffer, width=width, color_system=None, legacy_windows=False))
    return buffer.getvalue()


def test_nested_results_print_as_tables_not_python_reprs() -> None:
    text = _printed(TRANSPORT_RESULT)
    for repr_mark in ("{'", "'}", "[{", "None", "True", "False"):
        assert repr_mark not in text, (repr_mark, text)
    lines = text.splitlines()
    # Each nested key has a row of its own: the relay's run, its percentiles, the ratios.
    for key in ("delivered", "server_cpu_us_per_message", "latency_p50", "p95"):
        assert any(key in line for line in lines), key
    assert any("delivered" in line and "12,345" in line for line in lines)
    assert any("latency_p50" in line and "-" in line for line in lines)  # unknown ratio: a dash
    # A list of rows is a table with a header of its keys, one line per row.
    header = next(line for line in lines if "batch" in line and "cpu_us" in line)
    assert "note" in header
    assert any("64" in line and "19.7" in line and "fsync" in line for line in lines)


def test_a_narrow_terminal_folds_cells_and_loses_no_value() -> None:
    text = _printed(TRANSPORT_RESULT, width=60)
    assert all(len(line) <= 60 for line in text.splitlines())
    for value in ("12,345", "141", "5.61", "0.512"):
        assert value in text, value


def test_scalars_read_as_people_write_them() -> None:
    assert shown(None) == "-"
    assert shown(True) == "yes"
    assert shown(1_234_567) == "1,234,567"
    assert shown(14_290.4) == "14,290"
    assert shown(141.30) == "141.3"
    assert shown(12.0) == "12"
    assert shown(0.0) == "0"
    assert shown(0.51234) == "0.512"
    assert shown("sqlite") == "sqlite"
