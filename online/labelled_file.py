"""A user's labelled file (CSV, TSV, JSONL or Parquet with a text and a label column) read as examples.

Every problem is found before any training starts and reported once, naming the file, the line (or
Parquet row) and the column, because a user's first contact with the product is often a file exported
from somewhere else: a renamed column, an empty cell, a label seen once, a spreadsheet saved as cp1252.
Rows stream from disk into one list of ``(text, label)``; the file is never held twice.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from online.events import label_ok
from online.examples import Example
from online.settings import Settings

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


class DataError(ValueError):
    """A labelled file the product cannot learn from; the message names the file, row and column."""


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    label: str = "label"

    @classmethod
    def of(cls, settings: Settings) -> "Columns":
        return cls(settings.text_column, settings.label_column)


def read_labelled(path: Path, columns: Columns = Columns(), min_per_label: int = 1) -> list[Example]:
    """All ``(text, label)`` rows of ``path``; texts and labels stripped of surrounding whitespace.

    ``min_per_label`` > 1 refuses a label with fewer examples (naming the row of its first one)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown format {path.suffix!r} (use {', '.join(sorted(FORMATS))})")
    rows = _parquet_rows(path, columns) if fmt == "parquet" else _text_rows(path, fmt, columns)
    examples: list[Example] = []
    first_row: dict[str, str] = {}
    for where, text, label in rows:
        text = _cell(path, where, columns.text, text)
        label = _cell(path, where, columns.label, label)
        if not label_ok(label):
            raise DataError(
                f"{path}, {where}, column {columns.label!r}: label {label[:40]!r} cannot be sent as feedback "
                "(a letter or digit of any script first, then letters, digits, _ . : / - or space; at most 100)"
            )
        first_row.setdefault(label, where)
        examples.append((text, label))
    if not examples:
        raise DataError(f"{path}: no rows")
    if min_per_label > 1:
        counts = Counter(label for _, label in examples)
        for label, n in counts.items():
            if n < min_per_label:
                raise DataError(
                    f"{path}, {first_row[label]}, column {columns.label!r}: label {label!r} has {n} example"
                    f"{'s' if n != 1 else ''}; at least {min_per_label} are needed (one to learn from, one to "
                    "test on): add examples or remove the label"
                )
    return examples


def _cell(path: Path, where: str, column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):  # missing, or a NaN from Parquet
        raise DataError(f"{path}, {where}, column {column!r}: empty")
    text = str(value).strip()
    if not text:
        raise DataError(f"{path}, {where}, column {column!r}: empty")
    return text


def _text_rows(path: Path, fmt: str, columns: Columns) -> Iterator[tuple[str, object, object]]:
    line = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            if fmt == "jsonl":
                for line, raw in enumerate(fh, 1):
                    if raw.strip():
                        row = _json_row(path, line, raw)
                        yield f"line {line}", *_columns(path, f"line {line}", row, columns)
                return
            reader = csv.DictReader(fh, delimiter="\t" if fmt == "tsv" else ",")
            header = reader.fieldnames or []
            for name, flag in ((columns.text, "--text-column"), (columns.label, "--label-column")):
                if name not in header:
                    raise DataError(_missing_column(path, name, flag, header))
            csv.field_size_limit(16 * 1024 * 1024)  # long tickets: the default 128 KiB field limit
            for row in reader:
                line = reader.line_num
                yield f"line {line}", row.get(columns.text), row.get(columns.label)
    except UnicodeDecodeError:
        raise DataError(
            f"{path}, line {_first_undecodable_line(path)}: not UTF-8 text; save the file as UTF-8"
        ) from None
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: not valid {fmt.upper()} ({exc})") from None


def _first_undecodable_line(path: Path) -> int:
    """Text files decode in blocks, so the error's position is not a line: find the line (error path only)."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 0


def _json_row(path: Path, line: int, raw: str) -> dict:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {line}: not a JSON object ({exc.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}, line {line}: not a JSON object")
    return row


def _columns(path: Path, where: str, row: dict, columns: Columns) -> tuple[object, object]:
    for name, flag in ((columns.text, "--text-column"), (columns.label, "--label-column")):
        if name not in row:
            raise DataError(f"{path}, {where}: " + _missing_column(path, name, flag, list(row), prefix=False))
    return row[columns.text], row[columns.label]


def _missing_column(path: Path, name: str, flag: str, have: Sequence[str], prefix: bool = True) -> str:
    what = f"no column {name!r} (columns: {', '.join(map(str, have)) or 'none'}); name yours with {flag}"
    return f"{path}: {what}" if prefix else what


def _parquet_rows(path: Path, columns: Columns) -> Iterator[tuple[str, object, object]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'online[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError family for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    have = pf.schema_arrow.names
    for name, flag in ((columns.text, "--text-column"), (columns.label, "--label-column")):
        if name not in have:
            raise DataError(_missing_column(path, name, flag, have))
    row = 0
    for batch in pf.iter_batches(columns=[columns.text, columns.label], batch_size=8192):
        texts, labels = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        for text, label in zip(texts, labels):
            row += 1
            yield f"row {row}", text, label


def check_known_labels(path: Path, examples: Sequence[Example], known: set[str], columns: Columns) -> None:
    """A test file may only use labels the training file has (a label never taught cannot be judged)."""
    unknown = sorted({lab for _, lab in examples} - known)
    if unknown:
        raise DataError(
            f"{path}, column {columns.label!r}: labels not in the training file: {', '.join(unknown[:10])}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        )


def stratified_split(examples: Sequence[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, test): ``share`` of each label held out (at least one text, never its last one)."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex[1]].append(ex)
    rng = random.Random(seed)
    train: list[Example] = []
    test: list[Example] = []
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        k = min(max(1, round(len(items) * share)), len(items) - 1)
        test.extend(items[:k])
        train.extend(items[k:])
    return train, test


def train_and_test(
    train_path: Path, test_path: Path | None, columns: Columns, test_share: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, test) of a user's task: the test file (its labels all in the training file), else a
    stratified ``test_share`` of the training file (then every label needs 2 examples)."""
    train = read_labelled(train_path, columns, min_per_label=1 if test_path else 2)
    if test_path is None:
        return stratified_split(train, test_share, seed)
    test = read_labelled(test_path, columns)
    check_known_labels(test_path, test, {lab for _, lab in train}, columns)
    return train, test
