"""`online bench learn`: the CLINC150 domain-incremental stream (or a user's labels split into groups:
``--data``), every method side by side.

The starting point is version 1's knowledge (the seed domains, as `online up` trains it) or only the
first domain. Each later domain's train examples then arrive as one round of feedback, in the order of
``domains.json``. After every round each method is scored on the test examples of every domain seen so
far. Bounds: joint training on everything seen (upper) and naive sequential fine-tuning (lower).

Memory is bounded as in the reference figures: ``memory_per_intent`` remembered examples per intent
(a random subset, what a class-balanced reservoir holds); rehearsal strategies select from it.
Every method runs :func:`online.learning.step.learn`, the code the trainer runs in production; the
closed-form methods run :func:`online.learning.closed_form.closed_form_round`, the trainer's round of
``ONLINE_HEAD=closed-form``: its head is solved on the statistics of every example seen (the Redis
buffer, 50,000 samples by default, holds all of this stream), and the rounds that tune the encoder
rehearse from the same bounded memory as the other methods.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from online.data import Clinc150
from online.examples import Example
from online.labelled_file import Columns, train_and_test
from online.learning.closed_form import StatisticsCache, closed_form_round, encoder_due
from online.learning.fit import configure_threads, fit
from online.learning.step import LearnConfig, learn, select_rehearsal
from online.learning.version_one import seed_epochs
from online.model import WEIGHTS_FILE, TextClassifier, default_base_model, detect_pooling
from online.predictor import torch_predictor
from online.settings import Settings

FULL_MEMORY = "distill, whole buffer"  # rehearsing from everything seen, as the Redis buffer does
BASE_ENCODER = "closed-form-base-encoder"  # the closed-form head on the pretrained encoder as it ships


def methods(base: LearnConfig) -> dict[str, LearnConfig]:
    """Everything compared; ``joint`` (the upper bound) is handled apart. ``default`` is the product's
    round as configured (``ONLINE_*`` settings); :data:`FULL_MEMORY` lifts the memory bound, as the Redis
    buffer (50,000 samples by default) holds every example of this stream."""
    plain = base.but(distill_weight=0.0, rehearsal_min=0, bias_correction="off", probe_first=False)
    replay = plain.but(strategy="balanced")
    distill = replay.but(distill_weight=1.0)
    sgd = base.but(rehearsal_min=0, head="sgd")
    closed = base.but(rehearsal_min=0, head="closed-form")
    return {
        "default": base.but(rehearsal_min=0),
        "sgd": sgd,  # the SGD round whatever ONLINE_HEAD says
        "closed-form": closed,  # ONLINE_ENCODER_EVERY as configured
        "closed-form-frozen": closed.but(encoder_every=0),
        "closed-form-logit-adjust": closed.but(head_balance="logit-adjust"),  # a rare label helped by the bias only
        "closed-form-frozen-w2048": closed.but(encoder_every=0, head_width=2048),
        BASE_ENCODER: closed.but(encoder_every=0),  # the head on the base encoder, never fine-tuned
        **{f"closed-form-k{k}": closed.but(encoder_every=k) for k in (1, 2, 3, 4, 5)},
        "closed-form-k4-sgd-probe": closed.but(encoder_every=4, exact_probe=False),
        "naive": plain.but(rehearsal_ratio=0.0),
        "replay-reservoir": replay.but(strategy="reservoir"),
        "replay-balanced": replay,
        "replay-diverse": replay.but(strategy="diverse"),
        "replay+logit-adjust": replay.but(bias_correction="logit-adjust"),
        "balanced+distill": distill,
        "interfered+distill": distill.but(strategy="interfered"),
        "distill+logit-adjust": distill.but(bias_correction="logit-adjust"),
        "distill+head-finetune": distill.but(bias_correction="head-finetune"),
        "replay-x2": replay.but(rehearsal_ratio=2.0),  # twice the rehearsal: at most 1.5x the cost a round
        "replay-x2+distill": distill.but(rehearsal_ratio=2.0),
        "replay+probe": replay.but(probe_first=True),
        "probe+distill": distill.but(probe_first=True),
        "lora+distill": distill.but(mode="lora"),
        "lora+default": base.but(mode="lora", rehearsal_min=0),
        "head-only": replay.but(mode="head"),
        "head-only+default": base.but(mode="head", rehearsal_min=0),
        FULL_MEMORY: distill,
    }


DEFAULT_METHODS = ["replay-balanced", "sgd", "closed-form", "joint"]


@dataclass
class Run:
    name: str
    seed: int = 0
    acc: list[float] = field(default_factory=list)  # accuracy on all seen domains after each round
    per_domain: list[dict[str, float]] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)
    round_cpu_s: list[float] = field(default_factory=list)  # process CPU time: the cost, even on a busy machine
    samples: list[int] = field(default_factory=list)
    encoder_round: list[bool] = field(default_factory=list)  # closed-form: the rounds that tuned the encoder
    stats_mb: float = 0.0  # closed-form: the statistics (G, Q, counts) at the end, MiB
    features_mb: float = 0.0  # closed-form: the cached embeddings of the stored examples, MiB

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
    predictor = torch_predictor(model, 0, settings)
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
    seeds: int = 3,
    seeds_of: dict[str, int] | None = None,
) -> dict:
    """Every chosen method over ``seeds`` seeds (the seed orders training batches, dropout, the memory
    and rehearsal picks, and the starting model), seeds outermost so that a slow spell of the machine
    lands on every method alike. Prints mean and spread; ``out`` gets every run as JSON."""
    configure_threads(settings.num_threads)
    if data is not None:
        stream_of = _file_stream(settings, data, test, groups, per_intent, random.Random(settings.seed))
    else:
        stream_of = _clinc_stream(settings, start, per_intent, random.Random(settings.seed))
    domains, train, tests, n_start, start_label, title = stream_of
    stream = domains[n_start:][: rounds if rounds else None]
    base_model = settings.base_model or default_base_model()
    base = LearnConfig.from_settings(settings).but(epochs=epochs)
    all_methods = methods(base)
    chosen = DEFAULT_METHODS if not names else [*all_methods, "joint"] if names == ["all"] else names
    unknown = set(chosen) - set(all_methods) - {"joint"}
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from all, {[*all_methods, 'joint']}")

    start_train = [ex for d in domains[:n_start] for ex in train[d]]
    console.print(
        f"start: {n_start} {start_label} ({len(start_train)} examples), then {len(stream)} rounds "
        f"({', '.join(stream)}); {per_intent} train examples per intent, memory {memory_per_intent} per intent, "
        f"{epochs} epochs a round; {seeds} seed(s); methods {', '.join(chosen)}"
    )

    # A user's small file: the start (and joint) models get version 1's epochs, as `online up --data` trains
    def from_scratch(n: int, seed: int) -> LearnConfig:
        return base.but(epochs=seed_epochs(settings, n), seed=seed) if data is not None else base.but(seed=seed)

    runs: dict[str, list[Run]] = {name: [] for name in chosen}
    start_acc: list[float] = []

    def report() -> dict:
        return {
            "start": start,
            "per_intent": per_intent,
            "memory_per_intent": memory_per_intent,
            "epochs": epochs,
            "seeds": [settings.seed + s for s in range(seeds)],
            "stream": stream,
            "start_accuracy": start_acc,
            "defaults": {k: v for k, v in asdict(base).items() if k != "device"},
            "summary": {name: _summary(rs, joint) for name, rs in runs.items() if rs},
            "runs": {name: [{**asdict(r), "forgetting": r.forgetting} for r in rs] for name, rs in runs.items()},
        }

    def save() -> None:  # after every run: a long benchmark cut short keeps what it measured
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report(), indent=2))

    def train_joint(run: Run) -> None:
        """The upper bound: a model trained from the base encoder on everything seen, after every round or
        only the last (``joint`` = every | final)."""
        for i in range(len(stream)):
            if joint == "off" or (joint == "final" and i < len(stream) - 1):
                continue
            seen = domains[: n_start + i + 1]
            examples = [ex for d in seen for ex in train[d]]
            t0 = time.perf_counter()
            model = _train_from_base(examples, from_scratch(len(examples), run.seed), base_model)
            run.round_s.append(time.perf_counter() - t0)
            run.samples.append(len(examples))
            scores = _evaluate(model, {d: tests[d] for d in seen}, settings)
            run.per_domain.append(scores)
            run.acc.append(_weighted(scores, tests))
            console.print(f"  seed {run.seed} {'joint':<24} after round {i + 1}: acc on seen {run.acc[-1]:.4f}")

    for s in range(seeds):
        seed = settings.seed + s
        start_model = _start_model(
            start_train, from_scratch(len(start_train), seed), base_model, settings.state_dir / "bench", console
        )
        start_acc.append(_weighted(_evaluate(start_model, {d: tests[d] for d in domains[:n_start]}, settings), tests))
        for name in chosen:
            if s >= (seeds_of or {}).get(name, seeds):
                continue
            run = Run(name, seed=seed)
            runs[name].append(run)
            if name == "joint":
                train_joint(run)
                save()
                continue
            cfg = all_methods[name].but(seed=seed)
            model = start_model
            if name == BASE_ENCODER:  # the start model's labels on the untouched pretrained encoder
                model = TextClassifier.from_base(base_model, start_model.labels, pooling=start_model.pooling)
            keep = 10**9 if name == FULL_MEMORY else memory_per_intent
            memory = _subsample(start_train, keep, random.Random(seed))
            stored = list(start_train)  # closed-form: every example seen (the buffer and the seed data)
            cache = StatisticsCache()
            head_rounds = 0  # closed-form: rounds since the encoder last changed (the start model's)
            for i, domain in enumerate(stream):
                new = train[domain]
                t0, c0 = time.perf_counter(), time.process_time()
                tune = not cfg.closed_form or encoder_due(head_rounds, cfg.encoder_every)
                rng = random.Random(seed * 1000 + i)
                rehearsal = select_rehearsal(model, memory, len(new), cfg, rng, new) if tune else []
                if cfg.closed_form:
                    result = closed_form_round(model, new, stored, rehearsal, cfg, cache, tune_encoder=tune)
                    head_rounds = 0 if tune else head_rounds + 1
                    stored += new
                    run.stats_mb = result.head.stats_bytes / 2**20
                    run.features_mb = result.head.features_bytes / 2**20
                else:
                    result = learn(model, new, rehearsal, cfg)
                run.round_s.append(time.perf_counter() - t0)
                run.round_cpu_s.append(time.process_time() - c0)
                run.encoder_round.append(tune)
                run.samples.append(result.examples)
                model = result.model
                memory += _subsample(new, keep, random.Random(seed * 1000 + 100 + i))
                seen = domains[: n_start + i + 1]
                scores = _evaluate(model, {d: tests[d] for d in seen}, settings)
                run.per_domain.append(scores)
                run.acc.append(_weighted(scores, tests))
                console.print(
                    f"  seed {seed} {name:<24} round {i + 1}/{len(stream)} ({domain}): acc on seen "
                    f"{run.acc[-1]:.4f}, {result.examples} samples, {run.round_s[-1]:.1f} s "
                    f"({run.round_cpu_s[-1]:.1f} CPU s{', encoder tuned' if cfg.closed_form and tune else ''})"
                )
            save()

    _print_summary(console, runs, joint, start_label, statistics.mean(start_acc), title, len(stream))
    shown = [n for n in ("default", "sgd", "closed-form") if n in runs] or [n for n in runs if n != "joint"][:1]
    for matrix_of in shown:
        _print_matrix(console, matrix_of, runs[matrix_of], domains[: n_start + len(stream)])
    save()
    if out:
        console.print(f"results written to {out}")
    return report()


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _summary(rs: list[Run], joint: str) -> dict[str, float]:
    """Mean and standard deviation over seeds of what the table shows."""
    out: dict[str, float] = {}
    final = [r.acc[-1] for r in rs if r.acc]
    avg = [statistics.mean(r.acc) for r in rs if r.acc and (r.name != "joint" or joint == "every")]
    forgetting = [r.forgetting for r in rs if r.name != "joint" or joint == "every"]
    for key, values in (("final", final), ("avg", avg), ("forgetting", forgetting)):
        out[f"{key}_mean"], out[f"{key}_sd"] = _mean_sd([100 * v for v in values])
    out["round_s_mean"], out["round_s_sd"] = _mean_sd([statistics.mean(r.round_s) for r in rs if r.round_s])
    out["round_cpu_s_mean"], out["round_cpu_s_sd"] = _mean_sd(
        [statistics.mean(r.round_cpu_s) for r in rs if r.round_cpu_s]
    )
    # closed-form: a head round's cost and an encoder round's cost apart (CPU seconds, mean over rounds)
    for key, tuned in (("head_cpu_s", False), ("encoder_cpu_s", True)):
        per_run = [[c for c, e in zip(r.round_cpu_s, r.encoder_round) if e == tuned] for r in rs if r.encoder_round]
        out[f"{key}_mean"], out[f"{key}_sd"] = _mean_sd([statistics.mean(c) for c in per_run if c])
    out["encoder_rounds"] = statistics.mean([sum(r.encoder_round) for r in rs]) if rs else float("nan")
    out["stats_mb"] = max((r.stats_mb for r in rs), default=0.0)
    out["features_mb"] = max((r.features_mb for r in rs), default=0.0)
    return out


def _pm(mean: float, sd: float, digits: int = 2) -> str:
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _print_summary(
    console: Console,
    runs: dict[str, list[Run]],
    joint: str,
    start_label: str,
    start_acc: float,
    title: str,
    n_rounds: int,
) -> None:
    summary = {name: _summary(rs, joint) for name, rs in runs.items()}
    joint_final = summary.get("joint", {}).get("final_mean", float("nan"))
    replay_cpu = summary.get("replay-balanced", {}).get("round_cpu_s_mean", float("nan"))
    n_seeds = max(len(rs) for rs in runs.values())
    table = Table(
        title=f"online bench learn: {title}, {n_rounds} rounds after the {start_label}, mean ± sd of {n_seeds} seed(s)"
    )
    for col in (
        "method",
        "final acc %",
        "avg acc %",
        "forgetting",
        "vs joint",
        "s/round",
        "CPU s/round",
        "cost vs replay",
        "head round CPU s",
        "encoder round CPU s",
        "statistics MiB",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, sm in summary.items():
        is_joint = name == "joint"
        table.add_row(
            name,
            _pm(sm["final_mean"], sm["final_sd"]),
            _pm(sm["avg_mean"], sm["avg_sd"]),
            _pm(sm["forgetting_mean"], sm["forgetting_sd"]),
            "-" if is_joint or math.isnan(joint_final) else f"{sm['final_mean'] - joint_final:+.2f}",
            _pm(sm["round_s_mean"], sm["round_s_sd"], 1),
            "-" if is_joint else _pm(sm["round_cpu_s_mean"], sm["round_cpu_s_sd"], 1),
            "-" if is_joint or math.isnan(replay_cpu) else f"{sm['round_cpu_s_mean'] / replay_cpu:.2f}x",
            "-" if is_joint else _pm(sm["head_cpu_s_mean"], sm["head_cpu_s_sd"], 1),
            "-" if is_joint else _pm(sm["encoder_cpu_s_mean"], sm["encoder_cpu_s_sd"], 1),
            f"{sm['stats_mb']:.0f} (+{sm['features_mb']:.0f})" if sm["stats_mb"] else "-",
        )
    console.print(table)
    seeds = Table(title="per seed: final accuracy % / forgetting (points)")
    seeds.add_column("method")
    for r in max(runs.values(), key=len):  # a method may run fewer seeds (--seeds-of)
        seeds.add_column(f"seed {r.seed}", justify="right")
    for name, rs in runs.items():
        seeds.add_row(name, *(f"{100 * r.acc[-1]:.2f} / {100 * r.forgetting:.2f}" if r.acc else "-" for r in rs))
    console.print(seeds)
    console.print(
        f"start model on its {start_label}: {100 * start_acc:.2f}%. forgetting = mean over earlier domains of "
        "(best - final) accuracy, points. cost vs replay: CPU seconds a round (this process's, so other load on "
        "the machine barely moves it) against replay-balanced's, measured in this run. head / encoder round: "
        "the CPU seconds of rounds that solved the head on the live encoder / that fine-tuned the encoder first "
        "(an SGD round always does); statistics: the closed-form head's G, Q and counts (+ the cached embeddings "
        "of the stored examples), MiB."
    )


def _print_matrix(console: Console, name: str, rs: list[Run], domains: list[str]) -> None:
    """Accuracy per domain (columns) after each round (rows), mean over seeds: which old intents a round hurt."""
    table = Table(title=f"{name}: accuracy % per domain after each round (mean of {len(rs)} seed(s))")
    table.add_column("after round")
    for d in domains:
        table.add_column(d[:10], justify="right")
    for i in range(len(rs[0].per_domain)):
        cells = []
        for d in domains:
            values = [r.per_domain[i][d] for r in rs if i < len(r.per_domain) and d in r.per_domain[i]]
            cells.append(f"{100 * statistics.mean(values):.1f}" if values else "")
        table.add_row(f"{i + 1} ({list(rs[0].per_domain[i])[-1]})", *cells)
    console.print(table)


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


SMALL_ROUND_INTENTS = ["plug_type", "alarm", "insurance_change", "do_you_have_pets"]


def run_small_rounds(
    settings: Settings,
    console: Console,
    *,
    names: list[str] | None = None,
    intents: list[str] | None = None,
    seeds: int = 2,
    per_intent: int = 20,
    out: Path | None = None,
) -> dict:
    """Small rounds from version 1 (the seed domains, trained as `online up` trains it): ``per_intent``
    examples of one new intent, for each intent and seed (the seed picks the examples and seeds the
    round), in process, each method from its own version 1 (the closed-form methods' has its head solved
    on the seed data, as ``ONLINE_HEAD=closed-form`` makes it). Golden: the test texts of version 1's
    labels. Reports the golden accuracy change and the new intent's recall on its test texts."""
    configure_threads(settings.num_threads)
    clinc = Clinc150.open(settings.data_dir)
    seed_train = clinc.seed(settings.seed_domains, "train")
    golden = clinc.seed(settings.seed_domains, "test")
    train, test = clinc.split("train"), clinc.split("test")
    intents = intents or SMALL_ROUND_INTENTS
    base_model = settings.base_model or default_base_model()
    base = LearnConfig.from_settings(settings)
    chosen = names or ["sgd", "closed-form"]
    configs = {"sgd": base.but(head="sgd"), "closed-form": base.but(head="closed-form"), **methods(base)}
    v1 = _start_model(
        seed_train, base.but(epochs=seed_epochs(settings, len(seed_train))), base_model, settings.state_dir / "bench",
        console,
    )  # fmt: skip
    rows: dict[str, list[dict]] = {}
    for name in chosen:
        cfg = configs[name].but(rehearsal_min=base.rehearsal_min)
        start, cache = v1, StatisticsCache()
        t0 = time.process_time()
        if cfg.closed_form:  # version 1 as the closed-form mode publishes it
            start = closed_form_round(v1, [], seed_train, [], cfg, cache, tune_encoder=False).model
        start_cpu = time.process_time() - t0
        before = _accuracy(start, golden, settings)
        rows[name] = []
        for intent in intents:
            for s in range(seeds):
                rng = random.Random(settings.seed + 100 * s)
                new = rng.sample([ex for ex in train if ex[1] == intent], per_intent)
                c0 = time.process_time()
                if cfg.closed_form:
                    result = closed_form_round(start, new, seed_train, [], cfg.but(seed=s), cache, tune_encoder=False)
                else:
                    rehearsal = select_rehearsal(start, seed_train, len(new), cfg, rng, new)
                    result = learn(start, new, rehearsal, cfg.but(seed=s))
                cpu = time.process_time() - c0
                row = {
                    "intent": intent,
                    "seed": s,
                    "golden_before": before,
                    "golden_after": _accuracy(result.model, golden, settings),
                    "recall": _accuracy(result.model, [ex for ex in test if ex[1] == intent], settings),
                    "cpu_s": cpu,
                }
                rows[name].append(row)
                console.print(
                    f"  {name:<14} {intent:<18} seed {s}: golden {100 * row['golden_after']:.2f} "
                    f"({100 * (row['golden_after'] - before):+.2f}), recall {row['recall']:.2f}, {cpu:.1f} CPU s"
                )
        console.print(f"  {name}: version 1 golden {100 * before:.2f}% (made in {start_cpu:.1f} CPU s)")
    table = Table(title=f"small rounds: {per_intent} examples of one new intent, from version 1, {seeds} seed(s) each")
    for col in ("method", "golden before", "golden change, mean", "worst", "recall, mean (min)", "CPU s/round"):
        table.add_column(col, justify="left" if col == "method" else "right")
    summary = {}
    for name, rs in rows.items():
        change = [100 * (r["golden_after"] - r["golden_before"]) for r in rs]
        recall = [r["recall"] for r in rs]
        summary[name] = {
            "golden_before": rs[0]["golden_before"],
            "golden_change_mean": statistics.mean(change),
            "golden_change_worst": min(change),
            "recall_mean": statistics.mean(recall),
            "recall_min": min(recall),
            "cpu_s_mean": statistics.mean(r["cpu_s"] for r in rs),
        }
        sm = summary[name]
        table.add_row(
            name,
            f"{100 * sm['golden_before']:.2f}",
            f"{sm['golden_change_mean']:+.2f}",
            f"{sm['golden_change_worst']:+.2f}",
            f"{sm['recall_mean']:.2f} ({sm['recall_min']:.2f})",
            f"{sm['cpu_s_mean']:.1f}",
        )
    console.print(table)
    result = {"intents": intents, "seeds": seeds, "per_intent": per_intent, "summary": summary, "rows": rows}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result


def _accuracy(model: TextClassifier, examples: list[Example], settings: Settings) -> float:
    predictor = torch_predictor(model, 0, settings)
    preds = predictor.predict([t for t, _ in examples], 1)
    return sum(p.label == lab for p, (_, lab) in zip(preds, examples)) / len(examples)
