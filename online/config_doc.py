"""The configuration reference (``docs/configuration.md``), generated from :class:`online.settings.Settings`
so the documentation cannot drift from the code: ``python -m online.config_doc > docs/configuration.md``
(``tests/test_docs.py`` fails when the file is stale).

Sections follow the ``# --- name ---`` comments of ``online/settings.py``; each row is a field's variable,
its default and its description.
"""

from __future__ import annotations

import inspect
import json
import re
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from online.settings import Settings

_SECTION = re.compile(r"^\s*# --- (.+?) -*\s*$")
_FIELD = re.compile(r"^\s{4}(\w+):")


def _sections() -> list[tuple[str, list[str]]]:
    """(section title, field names) in the order of the source."""
    out: list[tuple[str, list[str]]] = [("general", [])]
    for line in inspect.getsource(Settings).splitlines():
        if m := _SECTION.match(line):
            out.append((m.group(1), []))
        elif (m := _FIELD.match(line)) and m.group(1) in Settings.model_fields:
            out[-1][1].append(m.group(1))
    return [(title, names) for title, names in out if names]


def _default(value: Any) -> str:
    if value is None or isinstance(value, SecretStr):
        return "unset"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The whole reference page."""
    lines = [
        "# Configuration",
        "",
        "Generated from `online/settings.py` by `python -m online.config_doc > docs/configuration.md`; do not",
        "edit by hand. Every setting is an environment variable (or a line of `.env`) read once at start and",
        "passed down. Lists and maps are JSON (`ONLINE_CORS_ORIGINS='[\"https://ops.example\"]'`).",
    ]
    for title, names in _sections():
        lines += ["", f"## {title[0].upper()}{title[1:]}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name in names:
            field = Settings.model_fields[name]
            default = field.default if field.default_factory is None else field.default_factory()
            lines.append(
                f"| `ONLINE_{name.upper()}` | `{_cell(_default(default))}` | {_cell(field.description or '')} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
