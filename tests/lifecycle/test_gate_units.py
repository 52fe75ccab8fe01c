"""Unit tests of the gate's parts that need no model: the golden set file (freeze, load, sha256),
per-label counts, and a report's failed checks."""

from __future__ import annotations

import hashlib
import json

import pytest

from online.lifecycle.gate import GoldenSet, _per_label, _taken_by_new, _taken_detail
from online.lifecycle.store import GOLDEN_FILE
from online.reports import Check, GateReport
from online.settings import Settings

EXAMPLES = [
    ("hi there", "greet"),
    ("hello", "greet"),
    ("hey", "greet"),
    ("bye", "farewell"),
    ("what time is it", "time"),
    ("good morning", "greet"),
    ("see you", "farewell"),
    ("later", "farewell"),
]


def rows(path) -> list[tuple[str, str]]:
    return [(r["text"], r["label"]) for r in map(json.loads, path.read_text().splitlines())]


# --- GoldenSet.freeze / load ------------------------------------------------------------------------


def test_freeze_caps_per_label_keeping_the_first(tmp_path):
    path = tmp_path / "golden.jsonl"
    g = GoldenSet.freeze(path, EXAMPLES, per_label=2)
    expected = [
        ("hi there", "greet"),
        ("hello", "greet"),
        ("bye", "farewell"),
        ("see you", "farewell"),
        ("what time is it", "time"),
    ]
    assert sorted(g.examples) == sorted(expected)
    assert sorted(rows(path)) == sorted(expected)


def test_freeze_then_load_round_trip(tmp_path):
    path = tmp_path / "golden.jsonl"
    frozen = GoldenSet.freeze(path, EXAMPLES, per_label=100)
    loaded = GoldenSet.load(path)
    assert loaded.examples == frozen.examples
    assert sorted(loaded.examples) == sorted(EXAMPLES)
    assert loaded.sha256 == frozen.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_stable_across_freezes_and_sensitive_to_content(tmp_path):
    a = GoldenSet.freeze(tmp_path / "a" / "golden.jsonl", EXAMPLES, per_label=3)
    b = GoldenSet.freeze(tmp_path / "b" / "golden.jsonl", EXAMPLES, per_label=3)
    c = GoldenSet.freeze(tmp_path / "c" / "golden.jsonl", EXAMPLES, per_label=2)
    d = GoldenSet.freeze(tmp_path / "d" / "golden.jsonl", [*EXAMPLES[:-1], ("later!", "farewell")], per_label=3)
    assert a.sha256 == b.sha256
    assert len(a.sha256) == 64
    assert c.sha256 != a.sha256
    assert d.sha256 != a.sha256


def test_freeze_never_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "golden.jsonl"
    first = GoldenSet.freeze(path, EXAMPLES, per_label=1)
    before = path.read_bytes()
    again = GoldenSet.freeze(path, [("something else", "other")], per_label=5)
    assert path.read_bytes() == before
    assert again.examples == first.examples
    assert again.sha256 == first.sha256


def test_freeze_creates_parent_dirs_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "deep" / "store" / "golden.jsonl"
    GoldenSet.freeze(path, EXAMPLES, per_label=1)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["golden.jsonl"]


def test_freeze_keeps_unicode_and_quotes(tmp_path):
    tricky = [('he said "hi"\tthere', "greet"), ("¿qué hora es? 時間", "time")]
    g = GoldenSet.freeze(tmp_path / "golden.jsonl", tricky, per_label=5)
    assert sorted(GoldenSet.load(tmp_path / "golden.jsonl").examples) == sorted(tricky) == sorted(g.examples)


def test_load_skips_blank_lines_and_coerces_to_str(tmp_path):
    path = tmp_path / "golden.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n   \n{"text": 12, "label": 3, "extra": true}\n')
    g = GoldenSet.load(path)
    assert g.examples == [("a", "x"), ("12", "3")]
    assert g.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ('{"text": "a", "label": "x"}\nnot json\n', 2),
        ('{"text": "a"}\n', 1),
        ('{"text": "a", "label": "x"}\n\n["a", "x"]\n', 3),
        ('"just a string"\n', 1),
    ],
)
def test_load_rejects_bad_lines_naming_the_line(tmp_path, content, line):
    path = tmp_path / "golden.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"golden\.jsonl:{line}:"):
        GoldenSet.load(path)


def test_load_rejects_empty_set(tmp_path):
    path = tmp_path / "golden.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        GoldenSet.load(path)


# --- GoldenSet.for_settings -------------------------------------------------------------------------


def test_for_settings_freezes_into_the_model_store(tmp_path):
    s = Settings(_env_file=None, model_store=tmp_path / "models", golden_path=None, golden_per_label=1)
    g = GoldenSet.for_settings(s, EXAMPLES)
    path = tmp_path / "models" / GOLDEN_FILE
    assert path.is_file()
    assert sorted(g.examples) == [("bye", "farewell"), ("hi there", "greet"), ("what time is it", "time")]
    # Later calls read the frozen file, whatever seed data they are given.
    again = GoldenSet.for_settings(s.model_copy(update={"golden_per_label": 30}), [("x", "y")])
    assert again.sha256 == g.sha256 and again.examples == g.examples


def test_for_settings_prefers_the_operators_file(tmp_path):
    own = tmp_path / "mine.jsonl"
    own.write_text('{"text": "mine", "label": "m"}\n')
    s = Settings(_env_file=None, model_store=tmp_path / "models", golden_path=own)
    g = GoldenSet.for_settings(s, EXAMPLES)
    assert g.examples == [("mine", "m")]
    assert not (tmp_path / "models" / GOLDEN_FILE).exists()


def test_for_settings_without_file_or_seed_data_fails(tmp_path):
    s = Settings(_env_file=None, model_store=tmp_path / "models", golden_path=None)
    with pytest.raises(FileNotFoundError):
        GoldenSet.for_settings(s, None)


# --- _per_label -------------------------------------------------------------------------------------


def test_per_label_counts_right_and_total_by_true_label():
    golden = [("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("e", "z")]
    predicted = ["x", "y", "x", "y", "x"]
    assert _per_label(predicted, golden) == {"x": [2, 3], "y": [1, 1], "z": [0, 1]}


def test_per_label_ignores_predicted_labels_absent_from_golden():
    out = _per_label(["never_seen", "never_seen"], [("a", "x"), ("b", "x")])
    assert out == {"x": [0, 2]}
    assert isinstance(out, dict) and "never_seen" not in out


def test_per_label_empty():
    assert _per_label([], []) == {}


# --- GateReport -------------------------------------------------------------------------------------


def report(*checks: Check) -> GateReport:
    return GateReport(
        passed=all(c.passed for c in checks),
        checks=list(checks),
        golden_sha256="0" * 64,
        golden_accuracy=0.9,
        golden_per_label={"x": [9, 10]},
    )


def test_failed_lists_failed_checks_in_order():
    r = report(
        Check(name="finite_outputs", passed=True, value=1.0, threshold=1.0),
        Check(name="golden_accuracy", passed=False, value=0.8, threshold=0.89),
        Check(name="holdout", passed=True, value=None, threshold=None),
        Check(name="latency", passed=False, value=2.0, threshold=1.5),
    )
    assert r.failed() == ["golden_accuracy", "latency"]
    assert r.passed is False


def test_failed_empty_when_all_pass():
    r = report(Check(name="finite_outputs", passed=True, value=1.0, threshold=1.0))
    assert r.failed() == []
    assert r.passed is True


def test_report_round_trips_through_json():
    r = report(Check(name="label_regression", passed=False, value=0.3, threshold=0.2, detail="largest drop: x"))
    back = GateReport.model_validate_json(r.model_dump_json())
    assert back == r
    assert back.failed() == ["label_regression"]
    assert back.holdout_accuracy is None and back.batch_latency_ms is None


def test_taken_by_new_counts_golden_texts_answered_with_a_new_label_most_first():
    golden = [("a", "greet"), ("b", "greet"), ("c", "time"), ("d", "wave"), ("e", "farewell"), ("f", "greet")]
    predicted = ["wave", "wave", "wave", "wave", "farewell", "greet"]
    # "d" is a golden text of the new label itself: answered right, taken from nobody
    taken = _taken_by_new(predicted, golden, {"wave"})
    assert taken == {"wave": {"greet": 2, "time": 1}} and list(taken["wave"]) == ["greet", "time"]
    assert _taken_by_new(predicted, golden, set()) == {}


def test_taken_detail_names_the_largest_sources_and_how_many_more():
    taken = {"wave": {"greet": 5, "time": 2, "farewell": 1, "thanks": 1}, "zzz": {"time": 1}}
    assert _taken_detail(taken, shown=2) == (
        "; 10 answered with a new label (wave: greet 5, time 2, +2 more; zzz: time 1)"
    )
    assert _taken_detail({}) == ""
