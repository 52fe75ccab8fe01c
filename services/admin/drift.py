"""The read side of monitoring, one implementation for `/v1/drift`, the dashboard and `online status`.

Everything here reads Redis (window snapshots of every replica, live accuracy per version, feedback
volume, the registry); nothing needs a model or a running API, so the CLI shows the same figures as the
API without building any part of it.
"""

from __future__ import annotations

import time

from online.contract import (
    DriftAlert,
    DriftReport,
    LabelDistribution,
    Signal,
    VersionAccuracy,
    VersionVerdict,
    WindowSnapshot,
)
from online.lifecycle.auto_rollback import judge
from online.monitoring.live_accuracy import VersionAccuracy as Judged
from online.serving.drift_window import DriftWindow
from online.wiring.stores import Stores


def drift_report(stores: Stores, window: DriftWindow | None = None, history: int = 0) -> DriftReport:
    """Everything /v1/drift shows: input and prediction signals per replica, feedback signals, alerts,
    and optionally the window history for plots. ``window``: the asking replica's own, if any.

    Fields a source does not have stay unset (a version without a judged parent has no ``vs_parent``),
    so the API leaves them out of its answer (``response_model_exclude_unset``)."""
    s = stores.settings
    registry = stores.registry
    live = registry.live()
    accs = {a.version: a for a in stores.live_accuracy.all()}
    parents = {m.version: m.parent for m in registry.list()}
    per_version = []
    for v, a in sorted(accs.items()):
        parent = parents.get(v)
        entry = VersionAccuracy(
            version=v, parent=parent, n=a.n, correct=a.correct, accuracy=a.accuracy, live=v == live,
            per_minute=stores.live_accuracy.per_minute(v)[-180:],
        )  # fmt: skip
        if parent is not None and parent in accs:
            verdict = judge(accs[parent], a, s)
            entry.vs_parent = VersionVerdict(
                p_value=verdict.p_value, drop=verdict.drop, worse=verdict.fire, reason=verdict.reason
            )
        per_version.append(entry)
    feedback_signals = _feedback_signals(stores, live, accs, per_version)
    snapshots = [WindowSnapshot.model_validate(snap) for snap in stores.drift.snapshots()]
    snapshots = [snap for snap in snapshots if snap.version == live] or snapshots
    alerts = [
        DriftAlert(signal=name, replica=snap.replica, value=sig.value, threshold=sig.threshold, at=snap.at)
        for snap in snapshots
        for name, sig in snap.signals.items()
        if sig.alert
    ]
    alerts += [
        DriftAlert(signal=name, replica=None, value=sig.value, threshold=sig.threshold, at=time.time())
        for name, sig in feedback_signals.items()
        if sig.alert
    ]
    latest = (window.latest if window else None) or {}
    report = DriftReport(
        live_version=live,
        replica=window.replica if window else None,
        window_size=s.drift_window,
        reference=window is not None and window.reference is not None,
        signals={name: Signal.model_validate(sig) for name, sig in latest.get("signals", {}).items()},
        replicas=snapshots,
        feedback=feedback_signals,
        live_accuracy=per_version,
        feedback_volume=stores.volume.per_minute(60),
        alerts=alerts,
        label_distribution=LabelDistribution.model_validate(window.label_distribution() if window else {}),
    )
    if history:
        report.history = [WindowSnapshot.model_validate(snap) for snap in stores.drift.history(history)]
    return report


def _feedback_signals(
    stores: Stores, live: int | None, accs: dict[int, Judged], per_version: list[VersionAccuracy]
) -> dict[str, Signal]:
    s = stores.settings
    signals: dict[str, Signal] = {}
    if live is not None and live in accs and accs[live].n >= s.drift_live_accuracy_min_n:
        acc = accs[live].accuracy
        worse = next((e.vs_parent.worse for e in per_version if e.version == live and e.vs_parent), False)
        signals["live_accuracy"] = Signal(
            value=acc,
            threshold=s.drift_min_live_accuracy,
            alert=acc < s.drift_min_live_accuracy or worse,
            kind="feedback",
            n=accs[live].n,
            worse_than_parent=worse,
        )
    return signals
