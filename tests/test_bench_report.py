"""`--json PATH` on the benchmarks: typed rows when a benchmark gives them, else its tables cell by cell."""

from __future__ import annotations

import json

from rich.table import Table

from bench.report import BenchConsole


def _table() -> Table:
    table = Table("phase", "req/s", "p99 / steady", "share", title="swap")
    table.add_row("steady", "522", "1.00x", "95.7%")
    table.add_row("in windows", "1,204", "1.42x", "n/a")
    return table


def test_printed_tables_become_rows_with_numbers_as_numbers(tmp_path):
    console = BenchConsole("swap")
    console.print(_table())
    console.write(tmp_path / "out.json")
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["bench"] == "swap" and record["machine"]["cpus"] >= 1
    assert record["rows"] == [
        {"table": "swap", "phase": "steady", "req/s": 522, "p99 / steady": 1.0, "share": 95.7},
        {"table": "swap", "phase": "in windows", "req/s": 1204, "p99 / steady": 1.42, "share": "n/a"},
    ]


def test_typed_rows_replace_the_printed_tables(tmp_path):
    console = BenchConsole("serve")
    console.row(table="load", server="api", engine="onnx-int8", concurrency=32, req_per_s=612.5)
    console.print(_table())
    console.write(tmp_path / "nested" / "serve.json")
    rows = json.loads((tmp_path / "nested" / "serve.json").read_text())["rows"]
    assert rows == [{"table": "load", "server": "api", "engine": "onnx-int8", "concurrency": 32, "req_per_s": 612.5}]
