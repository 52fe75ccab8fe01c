"""`online bench review`: labels bought for the review queue's picks against random picks.

Version 1's knowledge (the seed domains) meets unlabelled traffic from all ten domains (CLINC150's train
texts). At each label budget, one round is trained (``online.learning.step.learn``, the default round
settings, rehearsal from a bounded memory of the seed data) on the labels of (a) the review queue's
picks: uncertain (small margin) or unfamiliar (far from the training data) predictions, chosen diverse
(``online.feedback.review_queue.diverse_pick``), and (b) random picks. Accuracy on the test texts of all ten domains.
"""

from __future__ import annotations

import random

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.learn import _evaluate, _start_model, _subsample, _weighted
from online.data import Clinc150
from online.feedback.review_queue import diverse_pick, margins, uncertainty
from online.learning.fit import configure_threads
from online.learning.step import LearnConfig, learn, select_rehearsal
from online.lifecycle.package import build_reference
from online.model import default_base_model
from online.predictor import torch_predictor
from online.reference import nn_distance
from online.settings import Settings


def run_bench_review(settings: Settings, console: Console, *, budgets: list[int], per_intent: int, epochs: int) -> None:
    configure_threads(settings.num_threads)
    clinc = Clinc150.open(settings.data_dir)
    domains = list(clinc.domains)
    n_start = settings.seed_domains
    rng = random.Random(settings.seed)
    train = {d: _subsample(clinc.by_domain("train", [d]), per_intent, rng) for d in domains}
    tests = {d: clinc.by_domain("test", [d]) for d in domains}
    start_train = [ex for d in domains[:n_start] for ex in train[d]]
    cfg = LearnConfig.from_settings(settings).but(epochs=epochs)
    start = _start_model(
        start_train, cfg, settings.base_model or default_base_model(), settings.state_dir / "bench", console
    )
    memory = _subsample(start_train, 20, random.Random(settings.seed))
    calibration = _subsample(clinc.by_domain("test", domains[:n_start]), 10, random.Random(1))
    reference = build_reference(start, start_train, calibration, settings)
    traffic = [ex for d in domains for ex in clinc.by_domain("train", [d])]  # unlabelled: labels are bought
    predictor = torch_predictor(start, 0, settings)
    probs, emb = [], []
    for i in range(0, len(traffic), 64):
        p, e = predictor.probabilities_and_embeddings([t for t, _ in traffic[i : i + 64]])
        probs.append(p.numpy())
        emb.append(e.numpy())
    probs, emb = np.concatenate(probs), np.concatenate(emb)
    far = nn_distance(reference.index(), emb) > reference.nn_q99
    m = margins(probs)
    queued = np.flatnonzero((m < settings.review_max_margin) | far)
    scores = uncertainty(m, far)
    console.print(
        f"traffic: {len(traffic)} unlabelled texts of all 10 domains; the review queue holds {len(queued)} "
        f"({100 * len(queued) / len(traffic):.0f}%): margin < {settings.review_max_margin} or far from training data"
    )
    seen_tests = {d: tests[d] for d in domains}
    rows = []
    for budget in budgets:
        picks = {}
        order = diverse_pick(emb[queued], scores[queued], budget)
        chosen = [int(queued[i]) for i in order]
        if len(chosen) < budget:  # the queue ran dry: the most uncertain of the rest
            taken = set(chosen)
            rest = [i for i in np.argsort(-scores) if i not in taken]
            chosen += [int(i) for i in rest[: budget - len(chosen)]]
        picks["review"] = [traffic[i] for i in chosen]
        picks["random"] = random.Random(budget).sample(traffic, budget)
        accs = {}
        for name, bought in picks.items():
            rehearsal = select_rehearsal(start, memory, len(bought), cfg, random.Random(settings.seed), bought)
            model = learn(start, bought, rehearsal, cfg).model
            accs[name] = _weighted(_evaluate(model, seen_tests, settings), tests)
        new_share = sum(lab not in set(start.labels) for _, lab in picks["review"]) / budget
        rows.append((budget, accs["random"], accs["review"], new_share))
        console.print(
            f"  {budget} labels: random {100 * accs['random']:.2f}%, review queue {100 * accs['review']:.2f}%"
        )

    table = Table(title="online bench review: accuracy on all 10 domains after buying labels")
    for col in (
        "labels bought",
        "random picks",
        "review-queue picks",
        "review - random",
        "review picks of unknown intents",
    ):
        table.add_column(col, justify="right")
    for budget, rnd, rev, new_share in rows:
        table.add_row(
            str(budget),
            f"{100 * rnd:.2f}%",
            f"{100 * rev:.2f}%",
            f"{100 * (rev - rnd):+.2f}",
            f"{100 * new_share:.0f}%",
        )
    console.print(table)
    for budget, rnd, _, _ in rows:
        matched = next((b for b, _, rev, _ in rows if rev >= rnd), None)
        if matched is not None:
            console.print(
                f"random at {budget} labels ({100 * rnd:.2f}%) is matched by the review queue at {matched} labels "
                f"({matched / budget:.2f}x the labels)"
            )
    console.print("Goal: the review queue reaches random's accuracy with at most half the labels.")
