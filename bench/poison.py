"""`online bench poison`: the CLINC150 stream with flipped labels from hostile sources.

Feedback for each round comes from eight honest sources and two hostile ones; a hostile event carries a
wrong label (any other label the stream has used so far). Runs side by side: the clean stream, then at
each poison share the stream with the quarantine off and on (``online.feedback.quarantine``, the code a round
runs). Reported: final accuracy on every seen domain, the gap to the clean run, and the share of honest
and of poisoned events held.
"""

from __future__ import annotations

import random
import statistics
import time

from rich.console import Console
from rich.table import Table

from bench.learn import _evaluate, _start_model, _subsample, _weighted
from online.data import Clinc150, Example
from online.feedback.quarantine import Candidate, ScreenConfig, decide, screen
from online.learning.fit import configure_threads
from online.learning.step import LearnConfig, learn, select_rehearsal
from online.model import default_base_model
from online.monitoring.reference import build_reference
from online.serving.predictor import Predictor
from online.settings import Settings

HONEST = [f"honest-{i}" for i in range(8)]
HOSTILE = ["hostile-0", "hostile-1"]


def _stream(train: dict[str, list[Example]], domains: list[str], share: float, seed: int, known: set[str]):
    """Per round: (text, label, source, poisoned) with ``share`` of events from hostile sources."""
    rng = random.Random(seed)
    labels = set(known)
    rounds = []
    for d in domains:
        labels |= {lab for _, lab in train[d]}
        pool = sorted(labels)
        events = []
        for text, label in train[d]:
            if rng.random() < share:
                wrong = rng.choice([lab for lab in pool if lab != label])
                events.append((text, wrong, rng.choice(HOSTILE), True))
            else:
                events.append((text, label, rng.choice(HONEST), False))
        rng.shuffle(events)
        rounds.append(events)
    return rounds


def run_bench_poison(
    settings: Settings,
    console: Console,
    *,
    shares: list[float],
    per_intent: int,
    memory_per_intent: int,
    epochs: int,
    rounds: int,
) -> None:
    configure_threads(settings.num_threads)
    clinc = Clinc150.open(settings.data_dir)
    domains = list(clinc.domains)
    n_start = settings.seed_domains
    stream_domains = domains[n_start:][:rounds]
    rng = random.Random(settings.seed)
    train = {d: _subsample(clinc.by_domain("train", [d]), per_intent, rng) for d in domains}
    tests = {d: clinc.by_domain("test", [d]) for d in domains}
    calibration = _subsample(clinc.by_domain("test", domains[:n_start]), 10, random.Random(1))
    start_train = [ex for d in domains[:n_start] for ex in train[d]]
    cfg = LearnConfig.from_settings(settings).but(epochs=epochs, rehearsal_min=0)
    start = _start_model(
        start_train, cfg, settings.base_model or default_base_model(), settings.state_dir / "bench", console
    )
    screen_cfg: ScreenConfig = ScreenConfig.from_settings(settings)
    console.print(
        f"{len(stream_domains)} rounds ({', '.join(stream_domains)}) after the {n_start} seed domains; {per_intent} "
        f"events per intent, 8 honest and 2 hostile sources; poison shares {shares}"
    )
    conditions = [("clean", 0.0, False)] + [
        (f"{int(100 * s)}% poison, {q}", s, q == "quarantine on")
        for s in shares
        for q in ("quarantine off", "quarantine on")
    ]
    results = []
    for name, share, quarantine in conditions:
        model = start
        memory = _subsample(start_train, memory_per_intent, random.Random(settings.seed))
        stats: dict[str, list[int]] = {}
        held_sources: set[str] = set()
        honest_total = honest_held = poison_total = poison_held = 0
        times = []
        for i, events in enumerate(_stream(train, stream_domains, share, settings.seed + 7, set(start.labels))):
            t0 = time.perf_counter()
            kept = events
            if quarantine:
                predictor = Predictor(
                    model, 0, device=settings.device, precision=settings.precision, max_seq_len=settings.max_seq_len
                )
                probs, emb = predictor.probabilities_and_embeddings([t for t, _, _, _ in events])
                reference = build_reference(model, memory, calibration, settings)
                items = [Candidate(t, lab, src) for t, lab, src, _ in events]
                judged = screen(items, probs.numpy(), emb.numpy(), model.labels, reference, screen_cfg)
                reasons, newly = decide(items, judged, stats, held_sources, screen_cfg)
                held_sources |= newly
                kept = [ev for ev, r in zip(events, reasons) if r is None]
                for ev, r in zip(events, reasons):
                    if r is not None:
                        poison_held += ev[3]
                        honest_held += not ev[3]
            honest_total += sum(not ev[3] for ev in events)
            poison_total += sum(ev[3] for ev in events)
            new = [(t, lab) for t, lab, _, _ in kept]
            rehearsal = select_rehearsal(model, memory, len(new), cfg, random.Random(settings.seed + i), new)
            model = learn(model, new, rehearsal, cfg).model
            times.append(time.perf_counter() - t0)
            memory += _subsample(new, memory_per_intent, random.Random(settings.seed + 100 + i))
        seen = domains[: n_start + len(stream_domains)]
        acc = _weighted(_evaluate(model, {d: tests[d] for d in seen}, settings), tests)
        results.append(
            (
                name,
                acc,
                honest_held / max(honest_total, 1),
                poison_held / max(poison_total, 1) if poison_total else None,
                statistics.mean(times),
                sorted(held_sources),
            )
        )
        console.print(f"  {name}: final accuracy {100 * acc:.2f}%")

    clean = results[0][1]
    table = Table(title="online bench poison: flipped labels from hostile sources, quarantine off and on")
    for col in (
        "condition",
        "final acc",
        "vs clean",
        "honest events held",
        "poisoned events held",
        "s/round",
        "sources quarantined",
    ):
        table.add_column(col, justify="left" if col in ("condition", "sources quarantined") else "right")
    for name, acc, honest, poisoned, sec, sources in results:
        table.add_row(
            name,
            f"{100 * acc:.2f}%",
            f"{100 * (acc - clean):+.2f}",
            f"{100 * honest:.2f}%",
            "-" if poisoned is None else f"{100 * poisoned:.1f}%",
            f"{sec:.1f}",
            ", ".join(sources) or "-",
        )
    console.print(table)
    console.print(
        "Goal: at 10% poison with the quarantine on, within 1 point of clean, under 2% of honest events held."
    )
