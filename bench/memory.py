"""`online bench memory`: what a correction memory of N entries does to accuracy and latency.

The product's own memory (``online.memory.index``) and forward pass (``online.serving.forward``) on the
newest local version (or version 1 trained on the seed data), in one process:

- **corrections**: CLINC150 texts of intents the version does not know (its later domains: new labels an
  operator approved) and texts of its own intents that it gets wrong, with their true labels, shuffled;
  N = 0, 100, 1,000, 10,000 of them in memory;
- **untouched traffic**: the test texts of the version's intents (no correction was taught on them);
  accuracy with the memory must stay within 0.2 point of no memory, or the memory hijacks traffic;
- **paraphrases**: a surface paraphrase of corrected texts (a greeting, "please" or "thanks" added, a
  stop word dropped; ``bench.common.paraphrase``), answered right only if the memory carries them;
- **ablation**: the setting's threshold without the "nearer than the known training data" comparison;
- **latency**: single-text forward passes with memory lookup, N interleaved, p50 and p99.

Every similarity threshold in ``--similarities`` is measured on the same embeddings; the setting
``memory_similarity`` is the lowest that keeps untouched traffic within 0.2 point at 10,000 entries.
"""

from __future__ import annotations

import random
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import paraphrase, version_under_test
from online.data import Clinc150
from online.feedback.labels import LabelRules
from online.feedback.quarantine import ScreenConfig
from online.memory.index import CorrectionMemory, Policy, blend
from online.memory.log import Correction
from online.predictor import torch_predictor
from online.serving.breaker import Breaker
from online.serving.forward import ForwardPass, MemoryHook
from online.serving.metrics import ApiMetrics
from online.settings import Settings

SIZES = (0, 100, 1000, 10_000)
PARAPHRASES = 500


def run_bench_memory(
    settings: Settings, console: Console, *, similarities: list[float], latency_requests: int
) -> list[dict]:
    clinc = Clinc150.open(settings.data_dir)
    model, version, reference = version_under_test(settings, console)
    known = set(model.labels)
    predictor = torch_predictor(model, version, settings)
    predictor.warmup()
    rng = random.Random(settings.seed)
    seen = [ex for split in ("train", "val", "test") for ex in clinc.split(split)]
    traffic = [ex for ex in clinc.split("test") if ex[1] in known]
    own = [ex for split in ("train", "val") for ex in clinc.split(split) if ex[1] in known]
    t0 = time.perf_counter()
    own_probs, _ = predictor.probabilities_and_embeddings([t for t, _ in own])
    wrong = [ex for ex, p in zip(own, own_probs.argmax(-1).tolist()) if model.labels[p] != ex[1]]
    pool = [ex for ex in seen if ex[1] not in known] + wrong
    rng.shuffle(pool)
    pool = pool[: max(SIZES)]
    console.print(
        f"version {version}: {len(known)} intents; {len(traffic)} untouched test texts; correction pool "
        f"{len(pool)} ({len(wrong)} of its own texts it gets wrong, the rest of intents it does not know)"
    )
    entries = [
        Correction(f"c{i}", f"e{i}", text, label, f"team-{i % 8}", float(i)) for i, (text, label) in enumerate(pool)
    ]
    pool_probs, pool_emb = predictor.probabilities_and_embeddings([t for t, _ in pool])
    traffic_probs, traffic_emb = predictor.probabilities_and_embeddings([t for t, _ in traffic])
    console.print(f"embedded {len(own) + len(pool) + len(traffic)} texts in {time.perf_counter() - t0:.0f} s")

    rules = LabelRules.from_settings(settings)
    screen_cfg = ScreenConfig.from_settings(settings) if settings.quarantine else None
    policy = Policy(approved_labels=frozenset(lab for _, lab in pool))  # new intents an operator approved

    def memory_of(n: int, similarity: float, check: bool = True) -> CorrectionMemory:
        memory = CorrectionMemory(model.labels, similarity, rules, screen_cfg, reference if check else None)
        memory.policy = policy
        memory.learn(entries[:n], pool_probs[:n].numpy(), pool_emb[:n].numpy())
        memory.refresh()
        return memory

    rows = []
    # the setting without the known-data comparison too (an ablation: what the comparison buys)
    variants = [(sim, True) for sim in similarities] + [(settings.memory_similarity, False)]
    for similarity, check in variants:
        base = None
        for n in SIZES:
            memory = memory_of(n, similarity, check)
            answers = served_labels(memory, [t for t, _ in traffic], traffic_probs, traffic_emb)
            untouched = sum(a == lab for a, (_, lab) in zip(answers, traffic)) / len(traffic)
            base = untouched if base is None else base
            taught = [
                e for e, state in zip(entries[:n], (memory.states()[e.sid] for e in entries[:n])) if state == "active"
            ]
            sample = random.Random(n).sample(taught, min(PARAPHRASES, len(taught)))
            para = [paraphrase(e.text, random.Random(e.sid)) for e in sample]
            para_acc = None
            if para:
                p_probs, p_emb = predictor.probabilities_and_embeddings(para)
                got = served_labels(memory, para, p_probs, p_emb)
                para_acc = sum(a == e.label for a, e in zip(got, sample)) / len(sample)
            counts = memory.counts()
            rows.append(
                {"similarity": similarity, "known_check": check, "entries": n, **counts, "untouched_accuracy": untouched,
                 "untouched_change": untouched - base, "paraphrase_accuracy": para_acc}
            )  # fmt: skip
    _table(console, rows)
    latency = _latency(settings, predictor, memory_of, [t for t, _ in traffic], latency_requests)
    _latency_table(console, latency)
    return rows + latency


def _latency(settings, predictor, memory_of, texts: list[str], requests: int) -> list[dict]:
    """Single-text forward passes with the memory hook, each size in turn per request (interleaved)."""
    metrics = ApiMetrics()
    passes = {}
    for n in SIZES:
        memory = memory_of(n, settings.memory_similarity)
        hook = MemoryHook(lambda v, m=memory: m, settings.max_top_k, metrics)
        passes[n] = ForwardPass([hook], metrics, settings.max_top_k, Breaker("redis", ""))
    times: dict[int, list[float]] = {n: [] for n in SIZES}
    rng = random.Random(1)
    for i in range(requests):
        text = texts[i % len(texts)]
        order = list(SIZES)
        rng.shuffle(order)
        for n in order:
            t0 = time.perf_counter()
            passes[n](predictor, [text])
            times[n].append(time.perf_counter() - t0)
    base = np.percentile(times[0], 99)
    return [
        {"entries": n, "p50_ms": 1000 * statistics.median(t), "p99_ms": 1000 * float(np.percentile(t, 99)),
         "p99_vs_none": float(np.percentile(t, 99)) / base}
        for n, t in times.items()
    ]  # fmt: skip


def _table(console: Console, rows: list[dict]) -> None:
    table = Table(title="online bench memory: accuracy with N corrections in memory")
    for col in ("similarity", "nearer than known", "entries", "active", "absorbed", "held", "pending", "untouched acc", "vs none",
                "paraphrases right"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['similarity']:.2f}", "yes" if r["known_check"] else "no", str(r["entries"]), str(r["active"]), str(r["absorbed"]), str(r["held"]),
            str(r["pending"]), f"{100 * r['untouched_accuracy']:.2f}%", f"{100 * r['untouched_change']:+.2f}",
            "-" if r["paraphrase_accuracy"] is None else f"{100 * r['paraphrase_accuracy']:.1f}%",
        )  # fmt: skip
    console.print(table)
    console.print("Goal: untouched traffic within 0.2 point of no memory (at 10,000 entries).")


def _latency_table(console: Console, rows: list[dict]) -> None:
    table = Table(title="single-text forward + memory lookup, interleaved")
    for col in ("entries", "p50 ms", "p99 ms", "p99 vs no memory"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["entries"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['p99_vs_none']:.2f}x")
    console.print(table)
    console.print("Goal: p99 within 1.2x of no memory at 10,000 entries.")


def served_accuracy(
    model,
    taught: list[tuple[str, str, str]],
    test: list[tuple[str, str]],
    settings: Settings,
    screen_cfg: ScreenConfig | None,
    reference,
    quarantined: frozenset[str] = frozenset(),
) -> float:
    """Accuracy on ``test`` of ``model`` with a correction memory of ``taught`` (text, label, source),
    screened and governed as a replica serving ``model`` would."""
    predictor = torch_predictor(model, 0, settings)
    memory = CorrectionMemory(model.labels, settings.memory_similarity, LabelRules.from_settings(settings),
                              screen_cfg, reference)  # fmt: skip
    memory.policy = Policy(quarantined_sources=quarantined)
    entries = [Correction(f"c{i}", f"e{i}", t, lab, src, float(i)) for i, (t, lab, src) in enumerate(taught)]
    for start in range(0, len(entries), 256):
        chunk = entries[start : start + 256]
        probs, emb = predictor.probabilities_and_embeddings([e.text for e in chunk])
        memory.learn(chunk, probs.numpy(), emb.numpy())
    memory.refresh()
    probs, emb = predictor.probabilities_and_embeddings([t for t, _ in test])
    answers = served_labels(memory, [t for t, _ in test], probs, emb)
    return sum(a == lab for a, (_, lab) in zip(answers, test)) / len(test)


def served_labels(memory: CorrectionMemory, texts: list[str], probs, emb) -> list[str]:
    """The label a replica serves for each text: the memory's blend where it answers, else the model's
    (what ``MemoryHook`` does, from embeddings computed once)."""
    hits = memory.lookup(texts, emb.numpy())
    answers = [memory.labels[i] for i in probs.argmax(-1).tolist()]
    return [blend(h, probs[i].numpy(), memory.labels, 1)[0][0][0] if h else answers[i] for i, h in enumerate(hits)]
