"""The documentation matches the code: the configuration reference is generated from `Settings` and
current, and the README stays a first screen with links, not a reference manual."""

from __future__ import annotations

import re
from pathlib import Path

from online import config_doc
from online.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_generated_from_settings_and_current():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == config_doc.markdown(), "stale: python -m online.config_doc > docs/configuration.md"
    for name, field in Settings.model_fields.items():
        row = re.search(rf"^\| `ONLINE_{name.upper()}` \| `([^`]*)` \| (.*) \|$", page, re.M)
        assert row, f"ONLINE_{name.upper()} missing"
        assert row.group(2) == (field.description or "").replace("|", "\\|")
    assert "| `ONLINE_TRAIN_EPOCHS` | `2` |" in page and "| `ONLINE_ADMIN_TOKEN` | `unset` |" in page


def test_the_readme_links_every_doc_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 30_000, "the README is a first screen, usage and guarantees: details go to docs/"
    for doc in ("docs/how-it-works.md", "docs/configuration.md", "docs/benchmarks.md"):
        assert f"]({doc})" in readme
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
