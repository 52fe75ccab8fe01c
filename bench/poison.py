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
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from bench.learn import _evaluate, _start_model, _subsample, _weighted
from bench.memory import served_accuracy
from online.data import Clinc150
from online.examples import Example
from online.feedback.labels import LabelRules, govern
from online.feedback.quarantine import Candidate, ScreenConfig, decide, screen
from online.learning.fit import configure_threads
from online.learning.step import LearnConfig, learn, select_rehearsal
from online.lifecycle.package import build_reference
from online.model import TextClassifier, default_base_model
from online.predictor import torch_predictor
from online.settings import Settings

HONEST = [f"honest-{i}" for i in range(8)]
HOSTILE = ["hostile-0", "hostile-1"]
Event = tuple[str, str, str, bool]  # text, label, source, hostile


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
    journeys: bool = True,
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
    if journeys:
        run_journeys(settings, console, start, start_train, clinc, train, tests, domains, calibration, cfg,
                     memory_per_intent)  # fmt: skip
    if not shares:
        return
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
        taught: list[Event] = []
        for i, events in enumerate(_stream(train, stream_domains, share, settings.seed + 7, set(start.labels))):
            taught += events
            t0 = time.perf_counter()
            kept = events
            if quarantine:
                predictor = torch_predictor(model, 0, settings)
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
        # Every replica's correction memory holds all of the stream's label events, screened by the same
        # quarantine (off: nothing screened) with the final version: what it serves on the test texts
        reference = build_reference(model, memory, calibration, settings)
        with_memory = served_accuracy(
            model, [(t, lab, src) for t, lab, src, _ in taught], [ex for d in seen for ex in tests[d]],
            settings, screen_cfg if quarantine else None, reference, frozenset(held_sources),
        )  # fmt: skip
        results.append(
            (
                name,
                acc,
                with_memory,
                honest_held / max(honest_total, 1),
                poison_held / max(poison_total, 1) if poison_total else None,
                statistics.mean(times),
                sorted(held_sources),
            )
        )
        console.print(f"  {name}: final accuracy {100 * acc:.2f}%, {100 * with_memory:.2f}% with the correction memory")

    clean, clean_memory = results[0][1], results[0][2]
    table = Table(title="online bench poison: flipped labels from hostile sources, quarantine off and on")
    for col in (
        "condition",
        "final acc",
        "vs clean",
        "with memory",
        "vs clean (memory)",
        "honest events held",
        "poisoned events held",
        "s/round",
        "sources quarantined",
    ):
        table.add_column(col, justify="left" if col in ("condition", "sources quarantined") else "right")
    for name, acc, mem_acc, honest, poisoned, sec, sources in results:
        table.add_row(
            name,
            f"{100 * acc:.2f}%",
            f"{100 * (acc - clean):+.2f}",
            f"{100 * mem_acc:.2f}%",
            f"{100 * (mem_acc - clean_memory):+.2f}",
            f"{100 * honest:.2f}%",
            "-" if poisoned is None else f"{100 * poisoned:.1f}%",
            f"{sec:.1f}",
            ", ".join(sources) or "-",
        )
    console.print(table)
    console.print(
        "Goal: at 10% poison with the quarantine on, within 1 point of clean (weights, and weights with the correction "
        "memory), under 2% of honest events held."
    )


# --- honest teaching, honest correction, label-space attacks -------------------------------------------


@dataclass
class Scenario:
    """One round of feedback from the start model: a background of honest feedback on known intents plus
    the scenario's own events; ``target`` is what the row's accuracy is measured on."""

    name: str
    kind: str  # "honest" or "attack"
    events: list[Event]
    target: list[Example]  # test texts and the label they should get
    invented: set[str] = field(default_factory=set)  # attack labels that must not go live


def _scenarios(
    clinc: Clinc150, train: dict, tests: dict, domains: list[str], n_start: int, seed: int
) -> tuple[list[Event], list[Scenario]]:
    rng = random.Random(seed)
    known = domains[:n_start]
    background = [
        (t, lab, HONEST[i % len(HONEST)], False)
        for i, (t, lab) in enumerate(_subsample([ex for d in known for ex in train[d]], 3, rng))
    ]
    unseen = [i for d in domains[n_start:] for i in clinc.domains[d]]
    full_train = clinc.split("train")
    by_intent = {
        i: [t for t, lab in full_train if lab == i] for i in unseen + [i for d in known for i in clinc.domains[d]]
    }
    test_of = {lab: [(t, lab) for t, lab2 in clinc.split("test") if lab2 == lab] for lab in by_intent}

    def teach(intent: str, sources: list[str], per_source: int) -> list[Event]:
        texts = by_intent[intent][: per_source * len(sources)]
        return [(t, intent, sources[k // per_source], False) for k, t in enumerate(texts)]

    out = []
    for n_sources, per_source, intent in (
        (1, 5, unseen[0]),
        (1, 50, unseen[1]),
        (2, 20, unseen[2]),
        (3, 10, unseen[3]),
    ):
        sources = [f"teacher-{k}" for k in range(n_sources)]
        out.append(Scenario(f"teach: {n_sources} source(s) x {per_source} examples", "honest",
                            background + teach(intent, sources, per_source), test_of[intent]))  # fmt: skip
    a, b = clinc.domains[known[0]][0], clinc.domains[known[0]][1]
    correction = [(t, b, "ops", False) for t in by_intent[a][:40]]
    out.append(Scenario(f"correction: {a} -> {b} (1 source, 40)", "honest", background + correction,
                        [(t, b) for t, _ in test_of[a]]))  # fmt: skip
    pool = [ex for d in known for ex in train[d]]
    invented = [(t, f"invented-{k}", "mallory", True) for k, (t, _) in enumerate(rng.sample(pool, min(300, len(pool))))]
    out.append(Scenario("attack: 1 source invents 300 labels", "attack", background + invented,
                        [ex for d in known for ex in tests[d]], {lab for _, lab, _, _ in invented}))  # fmt: skip
    victim = clinc.domains[known[1]][0]
    hijack = [(t, "my_new_intent", "mallory", True) for t in by_intent[victim][:30]]
    out.append(Scenario(f"attack: new label on 30 texts of {victim}", "attack", background + hijack,
                        test_of[victim], {"my_new_intent"}))  # fmt: skip
    return background, out


def run_journeys(settings: Settings, console: Console, start: TextClassifier, start_train: list[Example],
                 clinc: Clinc150, train: dict, tests: dict, domains: list[str], calibration: list[Example],
                 cfg: LearnConfig, memory_per_intent: int) -> None:  # fmt: skip
    """Each scenario as one round from the start model, quarantine off and on; a clean round (the
    background only) is the reference of the attack rows."""
    n_start = settings.seed_domains
    background, scenarios = _scenarios(clinc, train, tests, domains, n_start, settings.seed + 11)
    screen_cfg = ScreenConfig.from_settings(settings)
    rules = LabelRules.from_settings(settings)
    memory = _subsample(start_train, memory_per_intent, random.Random(settings.seed))
    reference = build_reference(start, memory, calibration, settings)
    predictor = torch_predictor(start, 0, settings)

    def one_round(events: list[Event], quarantine: bool) -> tuple[TextClassifier, list[bool]]:
        held = [False] * len(events)
        if quarantine:
            probs, emb = predictor.probabilities_and_embeddings([t for t, _, _, _ in events])
            items = [Candidate(t, lab, src) for t, lab, src, _ in events]
            judged = screen(items, probs.numpy(), emb.numpy(), start.labels, reference, screen_cfg)
            reasons, _ = decide(items, judged, {}, set(), screen_cfg)
            teachers: dict[str, set[str]] = {}
            for it in items:
                teachers.setdefault(it.label, set()).add(it.source)
            reasons, _ = govern(
                [it.label for it in items], [it.source for it in items], [j.takeover for j in judged], reasons,
                set(start.labels), set(), lambda source: set(), rules, Counter(it.label for it in items), teachers,
            )  # fmt: skip
            held = [r is not None for r in reasons]
        new = [(t, lab) for (t, lab, _, _), h in zip(events, held) if not h]
        rehearsal = select_rehearsal(start, memory, len(new), cfg, random.Random(settings.seed), new)
        return learn(start, new, rehearsal, cfg).model, held

    def accuracy(model: TextClassifier, items: list[Example]) -> float:
        p = torch_predictor(model, 0, settings)
        preds = p.predict([t for t, _ in items], 1)
        return sum(x.label == lab for x, (_, lab) in zip(preds, items)) / len(items)

    clean_model, _ = one_round(background, False)
    rows = []
    for sc in scenarios:
        row = {"name": sc.name, "kind": sc.kind}
        for quarantine in (False, True):
            model, held = one_round(sc.events, quarantine)
            mine = [h for h, ev in zip(held, sc.events) if ev[2] not in HONEST]  # the scenario's own events
            key = "on" if quarantine else "off"
            row[key] = accuracy(model, sc.target)
            row[f"held_{key}"] = sum(mine) / max(len(mine), 1)
            row[f"bg_held_{key}"] = sum(h for h, ev in zip(held, sc.events) if ev[2] in HONEST)
            row[f"live_{key}"] = len(sc.invented & set(model.labels))
        if sc.kind == "attack":
            row["clean"] = accuracy(clean_model, sc.target)
        rows.append(row)
        console.print(
            f"  {sc.name}: off {100 * row['off']:.1f}%, on {100 * row['on']:.1f}%, held {100 * row['held_on']:.0f}%"
        )
    table = Table(
        title="online bench poison: honest teaching, honest correction and label-space attacks (one round each)"
    )
    for col in ("scenario", "its events held (on)", "background held (on)", "target acc off", "target acc on",
                "on - off", "vs clean (on)", "invented labels live off / on"):  # fmt: skip
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in rows:
        table.add_row(
            r["name"], f"{100 * r['held_on']:.0f}%", str(r["bg_held_on"]), f"{100 * r['off']:.1f}%",
            f"{100 * r['on']:.1f}%", f"{100 * (r['on'] - r['off']):+.1f}",
            f"{100 * (r['on'] - r['clean']):+.1f}" if "clean" in r else "-",
            f"{r['live_off']} / {r['live_on']}" if r["kind"] == "attack" else "-",
        )  # fmt: skip
    console.print(table)
    console.print(
        "Goals with the quarantine on: honest rows hold 0% and learn within 2 points of off; attack rows put no "
        "invented label live and keep the attacked intent within 1 point of clean. Target: the taught intent's "
        "test texts; for the correction, the moved intent's test texts under their new label; for the invented "
        "labels, every known intent's test texts; for the takeover, the attacked intent's test texts."
    )
