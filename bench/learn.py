"""`online bench learn`: the CLINC150 domain-incremental stream (or a user's labels split into groups:
``--data``), every method side by side.

The starting point is version 1's knowledge (the seed domains, as `online up` trains it) or only the
first domain. Each later domain's train examples then arrive as one round of feedback, in the order of
``domains.json``. After every round each method is scored on the test examples of every domain seen so
far. Bounds: joint training on everything seen (upper) and naive sequential fine-tuning (lower).

Memory is bounded as in the reference figures: ``memory_per_intent`` remembered examples per intent
(a random subset, what a class-balanced reservoir holds); rehearsal strategies select from it.
Every method runs :func:`online.learning.step.learn`, the code the trainer runs in production.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from online.data import Clinc150, Example
from online.labelled_file import Columns, train_and_test
from online.learning.fit import configure_threads, fit
from online.learning.step import LearnConfig, learn, select_rehearsal
from online.learning.version_one import seed_epochs
from online.model import WEIGHTS_FILE, TextClassifier, default_base_model, detect_pooling
from online.serving.predictor import Predictor
from online.settings import Settings

FULL_MEMORY = "balanced+distill, whole buffer"  # rehearsing from everything seen, as the Redis buffer does


def methods(base: LearnConfig) -> dict[str, LearnConfig]:
    """Everything compared; ``joint`` (the upper bound) is handled apart. ``base`` is the product's
    round as configured; :data:`FULL_MEMORY` lifts the memory bound, as the Redis buffer (50,000
    samples by default) holds every example of this stream."""
    replay = base.but(strategy="balanced", distill_weight=0.0, rehearsal_min=0)
    return {
        "naive": base.but(rehearsal_ratio=0.0, distill_weight=0.0),
        "replay-reservoir": replay.but(strategy="reservoir"),
        "replay-balanced": replay.but(strategy="balanced"),
        "replay-diverse": replay.but(strategy="diverse"),
        "balanced+distill": base.but(strategy="balanced", distill_weight=1.0, rehearsal_min=0),
        "interfered+distill": base.but(strategy="interfered", distill_weight=1.0, rehearsal_min=0),
        "lora+distill": base.but(mode="lora", strategy="balanced", distill_weight=1.0, rehearsal_min=0),
        "head-only": replay.but(mode="head"),
        FULL_MEMORY: base.but(strategy="balanced", distill_weight=1.0, rehearsal_min=0),
    }


@dataclass
class Run:
    name: str
    acc: list[float] = field(default_factory=list)  # accuracy on all seen domains after each round
    per_domain: list[dict[str, float]] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)

    @property
    def forgetting(self) -> float:
        """Mean over domains seen before the last round of (best - final) accuracy."""
        if len(self.per_domain) < 2:
            return float("nan")
        final = self.per_domain[-1]
        earlier = [d for d in final if d in self.per_domain[-2]]
        return statistics.mean(max(r[d] for r in self.per_domain if d in r) - final[d] for d in earlier)


def _subsample(examples: list[Example], per_intent: int, rng: random.Random) -> list[Example]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex[1]].append(ex)
    return [ex for lab in sorted(groups) for ex in rng.sample(groups[lab], min(per_intent, len(groups[lab])))]


def _evaluate(model: TextClassifier, tests: dict[str, list[Example]], settings: Settings) -> dict[str, float]:
    predictor = Predictor(
        model, 0, device=settings.device, precision=settings.precision, max_seq_len=settings.max_seq_len
    )
    out = {}
    for domain, examples in tests.items():
        preds = predictor.predict([t for t, _ in examples], 1)
        out[domain] = sum(p.label == lab for p, (_, lab) in zip(preds, examples)) / len(examples)
    return out


def _train_from_base(examples: list[Example], cfg: LearnConfig, base_model: str) -> TextClassifier:
    model = TextClassifier.from_base(base_model, sorted({lab for _, lab in examples}))
    fit(
        model,
        examples,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        head_lr=cfg.head_lr,
        max_seq_len=cfg.max_seq_len,
        seed=cfg.seed,
    )
    return model


def _start_model(
    examples: list[Example], cfg: LearnConfig, base_model: str, cache: Path, console: Console
) -> TextClassifier:
    """The shared starting point, trained once and cached (its inputs name the file)."""
    labels = sorted({lab for _, lab in examples})
    digest = hashlib.sha256(json.dumps([base_model, sorted(examples)]).encode()).hexdigest()[:10]
    key = f"n{len(examples)}-l{len(labels)}-e{cfg.epochs}-s{cfg.seed}-{digest}"
    path = cache / f"learn-start-{key}" / WEIGHTS_FILE
    if path.is_file():
        return TextClassifier.load(path, labels, base_model, detect_pooling(base_model))
    console.print(f"training the starting model on {len(examples)} examples (cached in {path.parent})")
    model = _train_from_base(examples, cfg, base_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def run_bench_learn(
    settings: Settings,
    console: Console,
    *,
    names: list[str] | None,
    start: str,
    per_intent: int,
    memory_per_intent: int,
    epochs: int,
    joint: str,
    rounds: int | None,
    out: Path | None,
    data: Path | None = None,
    test: Path | None = None,
    groups: int = 5,
) -> dict:
    configure_threads(settings.num_threads)
    rng = random.Random(settings.seed)
    if data is not None:
        stream_of = _file_stream(settings, data, test, groups, per_intent, rng)
    else:
        stream_of = _clinc_stream(settings, start, per_intent, rng)
    domains, train, tests, n_start, start_label, title = stream_of
    stream = domains[n_start:][: rounds if rounds else None]
    base_model = settings.base_model or default_base_model()
    base = LearnConfig.from_settings(settings).but(epochs=epochs)
    all_methods = methods(base)
    chosen = names or [*all_methods, "joint"]
    unknown = set(chosen) - set(all_methods) - {"joint"}
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {[*all_methods, 'joint']}")

    start_train = [ex for d in domains[:n_start] for ex in train[d]]
    console.print(
        f"start: {n_start} {start_label} ({len(start_train)} examples), then {len(stream)} rounds "
        f"({', '.join(stream)}); {per_intent} train examples per intent, memory {memory_per_intent} per intent, "
        f"{epochs} epochs a round"
    )

    # A user's small file: the start (and joint) models get version 1's epochs, as `online up --data` trains
    def from_scratch(n: int) -> LearnConfig:
        return base.but(epochs=seed_epochs(settings, n)) if data is not None else base

    start_model = _start_model(
        start_train, from_scratch(len(start_train)), base_model, settings.state_dir / "bench", console
    )
    start_scores = _evaluate(start_model, {d: tests[d] for d in domains[:n_start]}, settings)
    runs: dict[str, Run] = {}

    for name in chosen:
        if name == "joint":
            continue
        cfg = all_methods[name]
        run = runs.setdefault(name, Run(name))
        model = start_model
        keep = 10**9 if name == FULL_MEMORY else memory_per_intent
        memory = _subsample(start_train, keep, random.Random(settings.seed))
        for i, domain in enumerate(stream):
            new = train[domain]
            t0 = time.perf_counter()
            rehearsal = select_rehearsal(model, memory, len(new), cfg, random.Random(settings.seed + i), new)
            result = learn(model, new, rehearsal, cfg)
            run.round_s.append(time.perf_counter() - t0)
            run.samples.append(result.examples)
            model = result.model
            memory += _subsample(new, keep, random.Random(settings.seed + 100 + i))
            seen = domains[: n_start + i + 1]
            scores = _evaluate(model, {d: tests[d] for d in seen}, settings)
            run.per_domain.append(scores)
            run.acc.append(_weighted(scores, tests))
            console.print(
                f"  {name:<18} round {i + 1}/{len(stream)} ({domain}): acc on seen {run.acc[-1]:.4f}, "
                f"{result.examples} samples, {run.round_s[-1]:.1f} s"
            )

    if "joint" in chosen and joint != "off":
        run = runs.setdefault("joint", Run("joint"))
        for i in range(len(stream)):
            if joint == "final" and i < len(stream) - 1:
                continue
            seen = domains[: n_start + i + 1]
            examples = [ex for d in seen for ex in train[d]]
            t0 = time.perf_counter()
            model = _train_from_base(examples, from_scratch(len(examples)), base_model)
            run.round_s.append(time.perf_counter() - t0)
            run.samples.append(len(examples))
            scores = _evaluate(model, {d: tests[d] for d in seen}, settings)
            run.per_domain.append(scores)
            run.acc.append(_weighted(scores, tests))
            console.print(
                f"  {'joint':<18} after round {i + 1}: acc on seen {run.acc[-1]:.4f}, {run.round_s[-1]:.1f} s"
            )

    table = Table(title=f"online bench learn: {title}, {len(stream)} rounds after the {start_label}")
    for col in ("method", "final acc", "avg acc", "forgetting", "s/round", "ms/sample", "vs joint"):
        table.add_column(col, justify="left" if col == "method" else "right")
    joint_final = runs["joint"].acc[-1] if "joint" in runs and runs["joint"].acc else None
    for run in runs.values():
        rounds_done = len(run.acc)
        avg = statistics.mean(run.acc) if run.name != "joint" or joint == "every" else float("nan")
        ms = 1000 * sum(run.round_s) / max(sum(run.samples) * (1 if run.name == "head-only" else epochs), 1)
        table.add_row(
            run.name,
            f"{100 * run.acc[-1]:.2f}%" if rounds_done else "-",
            "-" if avg != avg else f"{100 * avg:.2f}%",
            "-" if run.name == "joint" and joint != "every" else f"{100 * run.forgetting:.2f}",
            f"{statistics.mean(run.round_s):.1f}",
            f"{ms:.1f}",
            f"{100 * (run.acc[-1] - joint_final):+.2f}" if joint_final is not None and rounds_done else "-",
        )
    console.print(table)
    console.print(
        f"start model on its {start_label}: {100 * _weighted(start_scores, tests):.2f}%. forgetting = mean over "
        "earlier domains of (best - final) accuracy, points. ms/sample: round time / (samples x epochs)."
    )
    report = {
        "start": start,
        "per_intent": per_intent,
        "memory_per_intent": memory_per_intent,
        "epochs": epochs,
        "stream": stream,
        "start_accuracy": start_scores,
        "runs": {name: {**asdict(run), "forgetting": run.forgetting} for name, run in runs.items()},
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        console.print(f"results written to {out}")
    return report


Stream = tuple[list[str], dict[str, list[Example]], dict[str, list[Example]], int, str, str]


def _clinc_stream(settings: Settings, start: str, per_intent: int, rng: random.Random) -> Stream:
    """CLINC150's domains in the order of ``domains.json``; the start is the seed domains or the first."""
    clinc = Clinc150.open(settings.data_dir)
    domains = list(clinc.domains)
    train = {d: _subsample(clinc.by_domain("train", [d]), per_intent, rng) for d in domains}
    tests = {d: clinc.by_domain("test", [d]) for d in domains}
    n_start = settings.seed_domains if start == "seed" else 1
    label = "seed domains" if start == "seed" else "first domain"
    return domains, train, tests, n_start, label, "CLINC150 domain-incremental"


def _file_stream(
    settings: Settings, data: Path, test: Path | None, groups: int, per_intent: int, rng: random.Random
) -> Stream:
    """A user's labels, shuffled (by the seed) into ``groups`` groups: the first is what version 1 knows,
    each later group arrives as one round (class-incremental). Test: ``test`` or a stratified split."""
    examples, held = train_and_test(data, test, Columns.of(settings), settings.seed_test_share, settings.seed)
    labels = sorted({lab for _, lab in examples})
    if not 2 <= groups <= len(labels):
        raise ValueError(f"--groups must be between 2 and the number of labels ({len(labels)})")
    random.Random(settings.seed).shuffle(labels)
    names = [f"group{i + 1}" for i in range(groups)]
    group_of = {lab: names[i * groups // len(labels)] for i, lab in enumerate(labels)}
    train = {g: _subsample([ex for ex in examples if group_of[ex[1]] == g], per_intent, rng) for g in names}
    tests = {g: [ex for ex in held if group_of[ex[1]] == g] for g in names}
    empty = [g for g in names if not tests[g]]
    if empty:
        raise ValueError(f"no test examples in {', '.join(empty)}: the test file needs texts of every label")
    return names, train, tests, 1, "first group", f"{data.name}, {len(labels)} labels in {groups} groups"


def _weighted(scores: dict[str, float], tests: dict[str, list[Example]]) -> float:
    n = sum(len(tests[d]) for d in scores)
    return sum(scores[d] * len(tests[d]) for d in scores) / n
