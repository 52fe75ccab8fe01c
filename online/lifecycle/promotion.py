"""Every move of the live alias goes through here: rounds, version 1, shadow periods, automatic and
manual rollbacks, manual promotions from the CLI or the admin API.

One place means one set of rules: a version's weights are checked against its manifest before it can
go live (a corrupted file is refused, whoever asks), a promotion based on a version that is no longer
live is refused (:class:`LiveMoved`), and every change lands in the registry's history with its action
and reason, announced to every replica.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from online.lifecycle.registry import IntegrityError, LiveChange, LiveMoved, Manifest, ModelRegistry
from online.lifecycle.shadow import ShadowLedger, verdict
from online.settings import Settings

log = logging.getLogger("online.lifecycle.promotion")

Action = Literal["promote", "rollback", "auto_rollback"]


def promote(
    registry: ModelRegistry,
    version: int,
    reason: str,
    *,
    expect_live: int | None = None,
    action: Action = "promote",
) -> LiveChange:
    """Make ``version`` live after :func:`check` (raises KeyError, ValueError, ``IntegrityError`` or
    :class:`LiveMoved`)."""
    check(registry, version)
    return registry.promote(version, action=action, reason=reason, expect_live=expect_live)


def check(registry: ModelRegistry, version: int) -> Manifest:
    """What a promotion checks: the weights (raises ``IntegrityError``), then every serving artifact. An
    artifact that fails its checksum does not stop it (the weights serve, by torch): it is logged here,
    before replicas find out one by one. Each file is hashed once per process (a later check is a stat)."""
    manifest = registry.verify(version)
    for name in manifest.artifacts:
        try:
            registry.artifact(version, name, manifest)
        except IntegrityError as exc:
            log.warning("%s: replicas will refuse it and serve version %s with torch", exc, version)
    return manifest


def rollback(
    registry: ModelRegistry, to: int | None = None, reason: str = "", action: Action = "rollback"
) -> LiveChange:
    """Point live back at ``to`` (default: the live version's parent), checked like any promotion."""
    live = registry.live()
    if live is None:
        raise ValueError("nothing is live: there is nothing to roll back")
    target = to if to is not None else registry.get(live).parent
    if target is None:
        raise ValueError(f"version {live} has no parent to roll back to: name a version")
    if target == live:
        raise ValueError(f"version {target} is already live")
    return promote(registry, target, reason or f"rollback from {live}", expect_live=live, action=action)


@dataclass(frozen=True)
class ShadowOutcome:
    version: int
    promoted: bool
    reason: str


def settle_shadow(registry: ModelRegistry, ledger: ShadowLedger, settings: Settings) -> ShadowOutcome | None:
    """End the running shadow period once its evidence suffices: promote it or drop it."""
    slot = registry.shadow()
    if not slot:
        return None
    version = slot.version
    decision, why = verdict(ledger.stats(version), settings)
    if decision is None:
        return None
    if decision:
        try:
            promote(registry, version, f"shadow period passed: {why}", expect_live=registry.get(version).parent)
            return ShadowOutcome(version, True, why)
        except (LiveMoved, ValueError, KeyError, IntegrityError) as exc:
            why = f"{why}; not promoted: {exc}"
    registry.clear_shadow()
    return ShadowOutcome(version, False, why)
