"""CLINC150 access (Larson et al., 2019, CC BY 3.0): the seed data, benchmarks and integration tests.

The data is never copied into the repository; its directory comes from ``Settings.data_dir``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from online.examples import Example


class DataNotFound(FileNotFoundError):
    """The CLINC150 directory is missing; the message says which setting to fix."""


@dataclass(frozen=True)
class Clinc150:
    """The CLINC150 intents split into its 10 domains (order of ``domains.json``)."""

    root: Path

    @classmethod
    def open(cls, root: Path) -> "Clinc150":
        root = Path(root)
        for name in ("data_full.json", "domains.json"):
            if not (root / name).is_file():
                raise DataNotFound(
                    f"{root / name} not found: set ONLINE_DATA_DIR to the CLINC150 directory "
                    "(data_full.json, domains.json)"
                )
        return cls(root)

    @cached_property
    def _full(self) -> dict[str, list[list[str]]]:
        return json.loads((self.root / "data_full.json").read_text())

    @cached_property
    def domains(self) -> dict[str, list[str]]:
        return json.loads((self.root / "domains.json").read_text())

    def split(self, name: str) -> list[Example]:
        """One split of data_full.json: train, val, test, oos_train, oos_val, oos_test."""
        return [(text, label) for text, label in self._full[name]]

    def by_domain(self, split: str, domains: list[str]) -> list[Example]:
        wanted = {i for d in domains for i in self.domains[d]}
        return [ex for ex in self.split(split) if ex[1] in wanted]

    def seed(self, n_domains: int, split: str = "train") -> list[Example]:
        """The first ``n_domains`` domains: what version 1 knows; the rest can arrive as feedback."""
        return self.by_domain(split, list(self.domains)[:n_domains])
