"""The README documents every setting (its configuration table is the user's reference)."""

from __future__ import annotations

from pathlib import Path

from online.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme():
    missing = [f"ONLINE_{name.upper()}" for name in Settings.model_fields if f"`ONLINE_{name.upper()}`" not in README]
    assert missing == []
