"""A user's labelled file: every format reads the same rows; every bad file gets one error naming the
file, the row and the column, before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from online.labelled_file import Columns, DataError, read_labelled, stratified_split

ROWS = [("where is my parcel", "shipping"), ("parcel still not here", "shipping"),
        ("refund my order", "billing"), ("我要退款", "退款"), ("退款什么时候到账", "退款")]  # fmt: skip


def _csv(path, rows, header=("text", "label"), encoding="utf-8"):
    import csv

    with open(path, "w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _jsonl(path, rows, keys=("text", "label")):
    path.write_text("".join(json.dumps(dict(zip(keys, r)), ensure_ascii=False) + "\n" for r in rows))
    return path


def test_csv_tsv_jsonl_and_parquet_read_the_same_rows(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    _csv(tmp_path / "a.csv", ROWS)
    (tmp_path / "a.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in ROWS))
    _jsonl(tmp_path / "a.jsonl", ROWS)
    pq.write_table(pa.table({"text": [t for t, _ in ROWS], "label": [lab for _, lab in ROWS]}), tmp_path / "a.parquet")
    for name in ("a.csv", "a.tsv", "a.jsonl", "a.parquet"):
        assert read_labelled(tmp_path / name) == ROWS, name


def test_other_column_names(tmp_path):
    path = _csv(tmp_path / "tickets.csv", [(lab, f"  {t}  ") for t, lab in ROWS], header=("intent", "utterance"))
    assert read_labelled(path, Columns(text="utterance", label="intent")) == ROWS  # whitespace stripped


@pytest.mark.parametrize(
    "name, write, expected",
    [
        ("missing-column.csv", lambda p: _csv(p, ROWS, header=("body", "label")),
         ["no column 'text'", "columns: body, label", "--text-column"]),
        ("empty-text.csv", lambda p: _csv(p, ROWS[:2] + [("  ", "shipping")]), ["line 4", "column 'text'", "empty"]),
        ("empty-label.jsonl", lambda p: _jsonl(p, ROWS[:2] + [("hello", "")]), ["line 3", "column 'label'", "empty"]),
        ("one-example.csv", lambda p: _csv(p, ROWS), ["line 4", "column 'label'", "'billing' has 1 example"]),
        ("cp1252.csv", lambda p: _csv(p, ROWS[:2] + [("café au lait", "shipping")] * 2, encoding="cp1252"),
         ["line 4", "not UTF-8"]),
        ("bad-json.jsonl", lambda p: p.write_text('{"text": "a", "label": "b"}\n{"text": "c", label\n'),
         ["line 2", "not a JSON object"]),
        ("key-missing.jsonl", lambda p: _jsonl(p, [("a", "b")], keys=("text", "intent")), ["line 1", "no column 'label'"]),
        ("bad-label.csv", lambda p: _csv(p, ROWS[:2] + [("what?", "why?")] * 2), ["line 4", "'why?' cannot be sent"]),
        ("data.xlsx", lambda p: p.write_text("x"), ["unknown format '.xlsx'"]),
    ],
)  # fmt: skip
def test_a_bad_file_gets_one_error_naming_row_and_column(tmp_path, name, write, expected):
    path = tmp_path / name
    write(path)
    with pytest.raises(DataError) as err:
        read_labelled(path, min_per_label=2)
    message = str(err.value)
    assert str(path) in message and all(e in message for e in expected), message


def test_a_missing_custom_column_names_its_own_flag_and_labels_match_the_event_contract(tmp_path):
    path = _csv(tmp_path / "t.csv", ROWS, header=("text", "label"))
    with pytest.raises(DataError, match="no column 'utterance'.*--text-column"):
        read_labelled(path, Columns(text="utterance", label="label"))
    from online.events import EVENT_ADAPTER

    for label in ("हिन्दी", "退款", "café-2"):  # what the API accepts, a file accepts (and back)
        EVENT_ADAPTER.validate_python({"kind": "label", "text": "t", "label": label, "source": "s"})
        assert read_labelled(_csv(tmp_path / "l.csv", [("a", label), ("b", label)]))[0][1] == label


def test_online_up_refuses_a_bad_file_before_starting_anything(tmp_path):
    bad = _csv(tmp_path / "tickets.csv", ROWS)  # 'billing' has one example
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONLINE_")}
    env["ONLINE_STATE_DIR"] = str(tmp_path / "state")
    result = subprocess.run([sys.executable, "-m", "services", "up", "--data", str(bad)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "'billing' has 1 example" in result.stderr and "line 4" in result.stderr
    assert not (tmp_path / "state" / "redis").exists()  # nothing was started


def test_stratified_split_holds_out_part_of_every_label_and_never_its_last_text():
    rows = [(f"t{i}", "big") for i in range(50)] + [("a", "small"), ("b", "small")]
    train, test = stratified_split(rows, 0.2, seed=0)
    assert Counter(lab for _, lab in test) == {"big": 10, "small": 1}
    assert Counter(lab for _, lab in train) == {"big": 40, "small": 1}
    assert sorted(train + test) == sorted(rows)
    assert stratified_split(rows, 0.2, seed=0) == (train, test)  # reproducible
