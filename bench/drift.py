"""`online bench drift`: in-domain traffic, then a switch to out-of-scope texts; every drift signal.

The model is the local live version (or version 1 trained on the seed data). Its reference is built as
the trainer builds it (seed train data in the index, the frozen golden set, i.e. the seed domains' test
split, as calibration). In-domain traffic is the seed domains' *validation* split, which neither the
model nor the calibration has seen; out-of-scope traffic is CLINC150's ``oos_test``. Windows are drawn
at random from each pool; the switch happens in the middle of the first out-of-scope window.
"""

from __future__ import annotations

import random

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import bench_environment, latest_local_version
from online.data import Clinc150
from online.learning.version_one import seed_data, train_version_one
from online.lifecycle.gate import GoldenSet
from online.lifecycle.package import build_reference
from online.monitoring.drift import Thresholds, window_signals
from online.predictor import Predictor, torch_predictor
from online.reference import nn_distance
from online.settings import Settings
from online.wiring.stores import Stores


def _embed(predictor: Predictor, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    probs, emb = [], []
    for start in range(0, len(texts), 32):  # served batch size
        p, e = predictor.probabilities_and_embeddings(texts[start : start + 32])
        probs.append(p.numpy())
        emb.append(e.numpy())
    return np.concatenate(probs), np.concatenate(emb)


def run_bench_drift(settings: Settings, console: Console, *, windows: int, after: int) -> None:
    clinc = Clinc150.open(settings.data_dir)
    found = latest_local_version(settings)
    if found is None:
        console.print("no local model version: training version 1 on the seed data first")
        with bench_environment(settings) as env:
            registry = Stores.from_settings(env).registry
            model, _ = registry.load(train_version_one(env, registry).version)
    else:
        model = found[0]
    train, test = seed_data(settings)
    golden = GoldenSet(test, "bench") if settings.golden_path is None else GoldenSet.load(settings.golden_path)
    reference = build_reference(model, train, golden.examples, settings)
    predictor = torch_predictor(model, 0, settings)
    known = set(model.labels)
    in_domain = [t for t, lab in clinc.split("val") if lab in known]
    oos = [t for t, _ in clinc.split("oos_test")]
    in_probs, in_emb = _embed(predictor, in_domain)
    oos_probs, oos_emb = _embed(predictor, oos)
    index = reference.index()
    in_dist, oos_dist = nn_distance(index, in_emb), nn_distance(index, oos_emb)
    thresholds = Thresholds.from_settings(settings)
    w = settings.drift_window
    rng = random.Random(settings.seed)

    def window(pool_sizes: list[tuple[str, int]]) -> dict[str, dict]:
        rows_in = rng.sample(range(len(in_domain)), next((n for k, n in pool_sizes if k == "in"), 0))
        rows_oos = rng.sample(range(len(oos)), next((n for k, n in pool_sizes if k == "oos"), 0))
        emb = np.concatenate([in_emb[rows_in], oos_emb[rows_oos]])
        dist = np.concatenate([in_dist[rows_in], oos_dist[rows_oos]])
        probs = np.concatenate([in_probs[rows_in], oos_probs[rows_oos]])
        return window_signals(reference, emb, dist, probs.max(-1), probs.argmax(-1), thresholds)

    before = [window([("in", w)]) for _ in range(windows)]
    switch = [window([("in", w // 2), ("oos", w - w // 2)])] + [window([("oos", w)]) for _ in range(after - 1)]
    table = Table(
        title=f"online bench drift: {windows} in-domain windows of {w}, then out-of-scope (switch mid-window 1)"
    )
    for col in (
        "signal",
        "kind",
        "threshold",
        "false alarms / 100",
        "worst in-domain",
        "windows to alarm",
        "first OOS value",
    ):
        table.add_column(col, justify="left" if col in ("signal", "kind") else "right")
    for name in before[0]:
        worse_high = before[0][name]["higher_is_worse"]
        values = [b[name]["value"] for b in before]
        false_alarms = sum(b[name]["alert"] for b in before)
        to_alarm = next((i + 1 for i, s in enumerate(switch) if s[name]["alert"]), None)
        table.add_row(
            name,
            before[0][name]["kind"],
            f"{before[0][name]['threshold']:.3g}",
            f"{100 * false_alarms / windows:.1f}",
            f"{(max if worse_high else min)(values):.3g}",
            str(to_alarm) if to_alarm else f"none in {after}",
            f"{switch[0][name]['value']:.3g}",
        )
    console.print(table)
    console.print(
        f"reference: {len(reference.train)} training embeddings, calibration {len(golden.examples)} golden texts "
        f"(nn-distance q95 {reference.nn_q95:.3f}, q99 {reference.nn_q99:.3f}); in-domain pool {len(in_domain)} "
        f"val texts, out-of-scope pool {len(oos)} oos_test texts. Goal: 0 false alarms in 100, alarm within 2 windows."
    )
