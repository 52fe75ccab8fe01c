"""A second model family slots into the lifecycle by registering a loader and a packager: the registry,
the release pipeline and promotion are used as they are (the seam the generative model lands on)."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest

from online.lifecycle import promotion
from online.lifecycle.package import Package
from online.lifecycle.release import JudgedVersion, register_packager, release
from online.reports import GateReport, ImportStats
from online.versioned import ModelSpec, load_model, register_family
from online.wiring.stores import Stores


class Echo:
    """A toy family: its "weights" are one string."""

    family = "echo"

    def __init__(self, text: str, base_model: str = "toy") -> None:
        self.text = text
        self.base_model = base_model
        self.labels: list[str] = []

    def spec(self) -> ModelSpec:
        return ModelSpec(family=self.family, base_model=self.base_model)

    def save(self, weights: Path) -> str:
        weights.write_text(self.text)
        return hashlib.sha256(weights.read_bytes()).hexdigest()

    @classmethod
    def load(cls, weights: Path, spec: ModelSpec) -> "Echo":
        return cls(weights.read_text(), spec.base_model)


@contextlib.contextmanager
def _package_echo(candidate: JudgedVersion, settings) -> Package:
    yield Package(files={"card.txt": f"echo of {len(candidate.model.text)} chars".encode()})


def _report(passed: bool) -> GateReport:
    return GateReport(passed=passed, checks=[], golden_sha256="-", golden_accuracy=0.0, golden_per_label={})


def test_a_second_family_is_released_loaded_and_promoted(settings):
    register_family("echo", Echo.load)
    register_packager("echo", _package_echo)
    registry = Stores.from_settings(settings).registry
    stats = ImportStats(source="test", labels=0)

    first = release(
        registry, settings, JudgedVersion(Echo("v1"), _report(True), None, [], [], [], {}), stats, reason="t"
    )
    assert first.outcome == "promoted" and registry.live() == first.manifest.version
    assert first.manifest.family == "echo" and (registry.path(first.manifest.version) / "card.txt").is_file()

    parent = first.manifest.version
    refused = release(
        registry, settings, JudgedVersion(Echo("bad"), _report(False), parent, [], [], [], {}), stats, reason="t"
    )
    assert refused.outcome == "rejected" and registry.live() == parent

    second = release(
        registry, settings, JudgedVersion(Echo("v2"), _report(True), parent, [], [], [], {}), stats, reason="t"
    )
    model, manifest = registry.load(second.manifest.version)
    assert isinstance(model, Echo) and model.text == "v2" and manifest.gate.passed
    promotion.rollback(registry)
    assert registry.live() == parent


def test_an_unknown_family_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        load_model(tmp_path / "w", ModelSpec(family="nope", base_model="x"))
