"""How ``cryptopass-bench`` shows a result on a terminal: nested tables, never a Python repr.

A result is the JSON-ready dict a scenario returns (``--json`` prints it as is). On a terminal
each key is a row; a nested dict becomes a table of its own inside the cell (the relay's run
inside ``transport``, the latency percentiles, the ratios), a list of dicts a table with one
column per key, a list of plain values one value per line, and a missing value a dash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["MAX_DEPTH", "print_result", "render_result", "shown"]

MAX_DEPTH = 4
"""Tables nested deeper than this print the rest as compact JSON-like text (a result this
deep would not fit a terminal as tables anyway)."""

_EMPTY = "-"


def shown(value: object) -> str:
    """One scalar as a reader wants it: thousands separated, floats without noise, None a dash."""
    if value is None:
        return _EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10 or magnitude == 0:
            return f"{value:,.1f}".rstrip("0").rstrip(".")
        return f"{value:.3g}"
    return str(value)


def _compact(value: object) -> str:
    """A value too deep for a table, on one line."""
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {_compact(item)}" for key, item in value.items()) or _EMPTY
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return "; ".join(_compact(item) for item in value) or _EMPTY
    return shown(value)


def _cell(value: object, depth: int) -> RenderableType:
    if depth >= MAX_DEPTH:
        return Text(_compact(value))
    if isinstance(value, Mapping):
        return _mapping_table(value, depth + 1, title=None) if value else Text(_EMPTY)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return _sequence_cell(value, depth + 1)
    return Text(shown(value))


def _mapping_table(mapping: Mapping[str, Any], depth: int, *, title: str | None) -> Table:
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in mapping.items():
        table.add_row(str(key), _cell(value, depth))
    return table


def _sequence_cell(items: Sequence[Any], depth: int) -> RenderableType:
    if not items:
        return Text(_EMPTY)
    if all(isinstance(item, Mapping) for item in items):
        columns: list[str] = []
        for item in items:
            columns.extend(str(key) for key in item if str(key) not in columns)
        table = Table(show_header=True, box=None, pad_edge=False, header_style="dim")
        for column in columns:
            table.add_column(column, overflow="fold")
        for item in items:
            table.add_row(*(_cell(item.get(column), depth) for column in columns))
        return table
    return Text("\n".join(_compact(item) for item in items))


def render_result(title: str, result: Mapping[str, Any]) -> Table:
    """The whole result as one table titled ``title``."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in result.items():
        table.add_row(str(key), _cell(value, 0))
    return table


def print_result(title: str, result: Mapping[str, Any], console: Console | None = None) -> None:
    """Print ``render_result`` to ``console`` (standard output by default)."""
    (console or Console()).print(render_result(title, result))
