"""What a benchmark reports, for people (rich tables) and for machines (``--json PATH``: one row per line
of its tables), so figures can be compared across runs and machines.

A benchmark that records typed rows (:meth:`BenchConsole.row`: numbers as numbers, named fields) writes
those; any other writes the cells of the tables it prints, a number wherever a cell reads as one.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def _cell(text: str) -> Any:
    """ "522" -> 522, "1.42x" -> 1.42, "95.7%" -> 95.7; anything else stays text."""
    plain = text.strip().removesuffix("x").removesuffix("%").replace(",", "")
    if _NUMBER.match(plain):
        return float(plain) if "." in plain else int(plain)
    return text


def table_rows(table: Table) -> list[dict[str, Any]]:
    """The cells of a rich table as one dict per row, keyed by column header."""
    columns = [(str(c.header), [str(v) for v in c.cells]) for c in table.columns]
    n = max((len(cells) for _, cells in columns), default=0)
    title = str(table.title or "")
    return [
        {"table": title} | {h: _cell(cells[i]) if i < len(cells) else None for h, cells in columns} for i in range(n)
    ]


class BenchConsole(Console):
    """A wide console (tables stay readable in a file or a pipe) that keeps what the benchmark reports."""

    def __init__(self, bench: str) -> None:
        super().__init__(width=max(Console().width, 160))
        self.bench = bench
        self.rows: list[dict[str, Any]] = []  # typed rows
        self.table_rows: list[dict[str, Any]] = []  # every printed table, cell by cell

    def row(self, **fields: Any) -> None:
        """A typed result row (numbers as numbers); a benchmark that gives these has its tables left out."""
        self.rows.append(fields)

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for obj in objects:
            if isinstance(obj, Table):
                self.table_rows.extend(table_rows(obj))
        super().print(*objects, **kwargs)

    def write(self, path: Path) -> None:
        record = {
            "bench": self.bench,
            "command": " ".join(["online", *sys.argv[1:]]),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
            "rows": self.rows or self.table_rows,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        super().print(f"rows written to {path}")
