"""The release pipeline: every path that makes a version (a round, version 1, an import, a benchmark)
goes through :func:`release`, so every version is judged, packaged, published and placed the same way.

judge (the caller: ``Gate.evaluate`` or ``Gate.baseline``, a pure function of the candidate) ->
package (``online.lifecycle.package``: int8 artifact, drift reference) -> publish (the registry, files
then index, checksummed) -> place (a :data:`Placement` policy: live at once, on a canary share, or in shadow first).

It is the one caller of ``ModelRegistry.publish`` outside tests (``tests/test_architecture.py`` keeps it
so), which is what makes "a version that serves has its reference and its checked artifact" true.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

from online.examples import Example
from online.lifecycle import canary, promotion
from online.lifecycle.package import Package, package
from online.lifecycle.registry import CanaryMoved, LiveMoved, Manifest, ModelRegistry
from online.reports import GateReport, VersionStats
from online.settings import Settings
from online.versioned import VersionModel

log = logging.getLogger("online.lifecycle.release")

Placement = Literal["auto", "promote", "canary", "shadow", "none"]
Outcome = Literal["promoted", "canary", "shadow", "superseded", "rejected", "published"]


@dataclass(frozen=True)
class JudgedVersion:
    """A judged model and what the pipeline needs to package it."""

    model: VersionModel
    report: GateReport
    parent: int | None
    trained_on: Sequence[Example]  # what it learned from: the drift reference's index
    calibration: Sequence[Example]  # in-domain texts it never trained on: the reference's null
    golden: Sequence[Example]  # the int8 artifact is checked on these
    metrics: dict[str, float]


@dataclass(frozen=True)
class Release:
    manifest: Manifest
    outcome: Outcome


Packager = Callable[[JudgedVersion, Settings], AbstractContextManager[Package]]


def _package_classifier(candidate: JudgedVersion, settings: Settings) -> AbstractContextManager[Package]:
    c = candidate
    return package(c.model, c.report, c.golden, c.trained_on, c.calibration, settings)  # type: ignore[arg-type]


_PACKAGERS: dict[str, Packager] = {"classifier": _package_classifier}


def register_packager(family: str, packager: Packager) -> None:
    """What a model family's versions serve with beside their weights (a second family registers its
    own; the pipeline itself does not change)."""
    _PACKAGERS[family] = packager


def placement_for(settings: Settings, parent: int | None) -> Placement:
    """The default policy: the first version goes live; a candidate goes on a share of live traffic
    first when ``ONLINE_CANARY_SHARE`` > 0 (a canary), else to shadow when ``ONLINE_SHADOW_SHARE`` > 0,
    else live at once (the same for a round and an import)."""
    if parent is None:
        return "promote"
    if settings.canary_share > 0 and settings.task == "classify":  # generations are not routed by share yet
        return "canary"
    return "shadow" if settings.shadow_share > 0 else "promote"


def release(
    registry: ModelRegistry,
    settings: Settings,
    candidate: JudgedVersion,
    stats: VersionStats | Callable[[], VersionStats],
    *,
    reason: str,
    placement: Placement = "auto",
    fence: Callable[[], None] | None = None,
) -> Release:
    """Package, publish and place a judged candidate. ``stats`` may be a callable, read once the package
    is built (a round's duration counts it); ``fence()`` runs right before each write (the trainer's
    leader lock). A candidate that failed the gate is published as ``rejected`` (inspectable, never
    served); one whose parent is no longer live is ``superseded`` (published, not placed)."""
    report = candidate.report
    with _PACKAGERS[candidate.model.spec().family](candidate, settings) as pkg:
        version_stats = stats() if callable(stats) else stats
        if fence:
            fence()
        manifest = registry.publish(
            candidate.model,
            parent=candidate.parent,
            metrics=candidate.metrics,
            round_stats=version_stats,
            gate=report,
            status="published" if report.passed else "rejected",
            extra_files=pkg.files,
            artifacts=pkg.artifacts,
        )
    if not report.passed:
        log.warning("version %d rejected by the gate: %s", manifest.version, ", ".join(report.failed()))
        return Release(manifest, "rejected")
    chosen = placement_for(settings, candidate.parent) if placement == "auto" else placement
    if chosen == "none":
        return Release(manifest, "published")
    if fence:
        fence()
    return Release(manifest, _place(registry, manifest, chosen, settings, reason))


def _place(registry: ModelRegistry, manifest: Manifest, placement: Placement, settings: Settings, reason: str) -> Outcome:
    if placement == "canary":
        try:
            canary.start(registry, manifest.version, settings, reason, expect_live=manifest.parent)
        except LiveMoved as exc:  # judged against a version no longer live: not comparable
            log.warning("version %d not put on a canary: %s", manifest.version, exc)
            return "superseded"
        except CanaryMoved as exc:  # another canary runs (an operator's): this one waits as published
            log.warning("version %d published, not put on a canary: %s", manifest.version, exc)
            return "published"
        return "canary"
    if placement == "shadow":
        if registry.live() != manifest.parent:  # judged against a version no longer live: not comparable
            log.warning("version %d not put in shadow: live is no longer its parent %s", manifest.version, manifest.parent)
            return "superseded"
        registry.set_shadow(manifest.version, settings.shadow_share)
        return "shadow"
    try:
        promotion.promote(registry, manifest.version, reason, expect_live=manifest.parent)
    except LiveMoved as exc:
        log.warning("%s", exc)
        return "superseded"
    return "promoted"
