"""The read side of monitoring, one implementation for `/v1/drift`, the dashboard and `online status`.

Everything here reads Redis (window snapshots of every replica, live accuracy per version, feedback
volume, the registry); nothing needs a model or a running API, so the CLI shows the same figures as the
API without building any part of it.
"""

from __future__ import annotations

import time

from online.lifecycle.auto_rollback import judge
from online.serving.drift_window import DriftWindow
from online.wiring.stores import Stores


def drift_report(stores: Stores, window: DriftWindow | None = None, history: int = 0) -> dict:
    """Everything /v1/drift shows: input and prediction signals per replica, feedback signals, alerts,
    and optionally the window history for plots. ``window``: the asking replica's own, if any."""
    s = stores.settings
    registry = stores.registry
    live = registry.live()
    accs = {a.version: a for a in stores.live_accuracy.all()}
    versions = {m.version: m for m in registry.list()}
    per_version = []
    for v, a in sorted(accs.items()):
        parent = versions[v].parent if v in versions else None
        entry = {
            "version": v,
            "parent": parent,
            "n": a.n,
            "correct": a.correct,
            "accuracy": a.accuracy,
            "live": v == live,
            "per_minute": stores.live_accuracy.per_minute(v)[-180:],
        }
        if parent is not None and parent in accs:
            verdict = judge(accs[parent], a, s)
            entry["vs_parent"] = {
                "p_value": verdict.p_value,
                "drop": verdict.drop,
                "worse": verdict.fire,
                "reason": verdict.reason,
            }
        per_version.append(entry)
    feedback_signals = _feedback_signals(stores, live, accs, per_version)
    snapshots = stores.drift.snapshots()
    snapshots = [snap for snap in snapshots if snap.get("version") == live] or snapshots
    alerts = []
    for snap in snapshots:
        for name, sig in snap["signals"].items():
            if sig["alert"]:
                alerts.append(
                    {"signal": name, "replica": snap["replica"], "value": sig["value"],
                     "threshold": sig["threshold"], "at": snap["at"]}
                )  # fmt: skip
    for name, sig in feedback_signals.items():
        if sig["alert"]:
            alerts.append(
                {"signal": name, "replica": None, "value": sig["value"], "threshold": sig["threshold"],
                 "at": time.time()}
            )  # fmt: skip
    out = {
        "live_version": live,
        "replica": window.replica if window else None,
        "window_size": s.drift_window,
        "reference": window is not None and window.reference is not None,
        "signals": ((window.latest if window else None) or {}).get("signals", {}),
        "replicas": snapshots,
        "feedback": feedback_signals,
        "live_accuracy": per_version,
        "feedback_volume": stores.volume.per_minute(60),
        "alerts": alerts,
        "label_distribution": window.label_distribution() if window else {},
    }
    if history:
        out["history"] = stores.drift.history(history)
    return out


def _feedback_signals(stores: Stores, live: int | None, accs: dict, per_version: list[dict]) -> dict:
    s = stores.settings
    signals: dict[str, dict] = {}
    if live is not None and live in accs and accs[live].n >= s.drift_live_accuracy_min_n:
        acc = accs[live].accuracy
        worse = next((e.get("vs_parent", {}).get("worse", False) for e in per_version if e["version"] == live), False)
        signals["live_accuracy"] = {
            "value": acc,
            "threshold": s.drift_min_live_accuracy,
            "alert": acc < s.drift_min_live_accuracy or worse,
            "kind": "feedback",
            "n": accs[live].n,
            "worse_than_parent": worse,
        }
    return signals
