"""The regression gate: a candidate goes live only after it proved itself against the live version.

Checks (thresholds from settings, every one recorded with its value in the version's manifest):

- ``golden_accuracy``: accuracy on the frozen golden set is not below live's by more than a margin;
- ``label_regression``: no golden label with enough support loses more than a per-label margin;
- ``holdout``: on the round's held-out new feedback the candidate does at least as well as live;
- ``finite_outputs``: every output is a finite probability;
- ``latency``: a batch is not slower than live's by more than a ratio (measured side by side).

The golden set is frozen once, when version 1 is made, from the seed test data (or read from the file
the operator names), and never changes afterwards, so every candidate is judged on the same texts.
Live's golden results are stored in its manifest, so each round evaluates only the candidate.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from online.examples import Example
from online.lifecycle.store import GOLDEN_FILE
from online.model import TextClassifier
from online.predictor import Predictor, torch_predictor
from online.reports import Check, GateReport
from online.settings import Settings


class GoldenSet:
    """The frozen evaluation set (a JSONL file of ``{"text", "label"}``), with its sha256."""

    def __init__(self, examples: list[Example], sha256: str) -> None:
        self.examples = examples
        self.sha256 = sha256

    @classmethod
    def load(cls, path: Path) -> "GoldenSet":
        raw = path.read_bytes()
        examples = []
        for n, line in enumerate(raw.decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                examples.append((str(row["text"]), str(row["label"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a {{'text', 'label'}} JSON object ({exc})") from None
        if not examples:
            raise ValueError(f"{path}: the golden set is empty")
        return cls(examples, hashlib.sha256(raw).hexdigest())

    @classmethod
    def freeze(cls, path: Path, examples: Sequence[Example], per_label: int) -> "GoldenSet":
        """Write the golden set once; an existing file is never overwritten (it stays frozen)."""
        if path.is_file():
            return cls.load(path)
        kept: dict[str, list[Example]] = defaultdict(list)
        for ex in examples:
            if len(kept[ex[1]]) < per_label:
                kept[ex[1]].append(ex)
        lines = [json.dumps({"text": t, "label": lab}) for exs in kept.values() for t, lab in exs]
        tmp = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(path)
        return cls.load(path)

    @staticmethod
    def path(settings: Settings) -> Path:
        """The operator's file if named, else the set frozen in the model store."""
        return settings.golden_path or settings.models_dir / GOLDEN_FILE

    @classmethod
    def exists(cls, settings: Settings) -> bool:
        return cls.path(settings).is_file()

    @classmethod
    def for_settings(cls, settings: Settings, seed_test: Sequence[Example] | None = None) -> "GoldenSet":
        """The operator's file if named, else the set frozen in the model store (freezing it from
        ``seed_test`` the first time)."""
        if settings.golden_path:
            return cls.load(settings.golden_path)
        path = cls.path(settings)
        if path.is_file() or seed_test is None:
            return cls.load(path)
        return cls.freeze(path, seed_test, settings.golden_per_label)


def _per_label(predicted: list[str], examples: Sequence[Example]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p, (_, lab) in zip(predicted, examples):
        out[lab][0] += int(p == lab)
        out[lab][1] += 1
    return dict(out)


def _taken_by_new(predicted: list[str], examples: Sequence[Example], new: set[str]) -> dict[str, dict[str, int]]:
    """For each new label, the golden labels whose texts are now answered with it, most taken first."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for p, (_, lab) in zip(predicted, examples):
        if p in new and p != lab:
            out[p][lab] += 1
    return {new_label: dict(c.most_common()) for new_label, c in sorted(out.items())}


def _taken_detail(taken: dict[str, dict[str, int]], shown: int = 3) -> str:
    """``taken`` for a check's detail: the count, then each new label's ``shown`` largest sources."""
    if not taken:
        return ""
    parts = []
    for new_label, sources in taken.items():
        cells = [f"{lab} {n}" for lab, n in list(sources.items())[:shown]]
        more = f", +{len(sources) - shown} more" if len(sources) > shown else ""
        parts.append(f"{new_label}: {', '.join(cells)}{more}")
    total = sum(sum(c.values()) for c in taken.values())
    return f"; {total} answered with a new label ({'; '.join(parts)})"


def _batch_latency_ms(predictors: Sequence[Predictor], texts: list[str], repeats: int = 7) -> list[float]:
    """Median batch latency of each predictor, measured interleaved so that load on the machine hits
    all of them alike (the ratio is what the gate judges)."""
    times: list[list[float]] = [[] for _ in predictors]
    for p in predictors:
        p.probabilities(texts, reuse=False)  # warm
    for _ in range(repeats):
        for p, t in zip(predictors, times):
            t0 = time.perf_counter()
            p.probabilities(texts, reuse=False)  # the forward itself, never reused embeddings
            t.append(time.perf_counter() - t0)
    return [1000 * statistics.median(t) for t in times]


class Gate:
    def __init__(self, settings: Settings, golden: GoldenSet) -> None:
        self.s = settings
        self.golden = golden

    def _predictor(self, model: TextClassifier) -> Predictor:
        # reuse: a closed-form head round's candidate shares the live encoder, whose golden embeddings
        # are then computed once, not per round (the same numbers: only the head runs again)
        return torch_predictor(model, 0, self.s, reuse=True)

    def baseline(self, model: TextClassifier) -> GateReport:
        """The report of a version nothing is compared with (version 1): its golden results."""
        started = time.perf_counter()
        predictor = self._predictor(model)
        probs = predictor.probabilities([t for t, _ in self.golden.examples])
        labels = [predictor.labels[i] for i in probs.argmax(-1).tolist()]
        per_label = _per_label(labels, self.golden.examples)
        acc = sum(r for r, _ in per_label.values()) / len(self.golden.examples)
        finite = bool(probs.isfinite().all())
        return GateReport(
            passed=finite,
            checks=[
                Check(
                    name="finite_outputs",
                    passed=finite,
                    value=float(finite),
                    threshold=1.0,
                    detail="first version: nothing to compare with",
                )
            ],
            golden_sha256=self.golden.sha256,
            golden_accuracy=acc,
            golden_per_label=per_label,
            batch_latency_ms=_batch_latency_ms([predictor], [t for t, _ in self.golden.examples[:32]])[0],
            duration_s=time.perf_counter() - started,
        )

    def evaluate(
        self,
        candidate: TextClassifier,
        live: TextClassifier,
        live_report: GateReport | None,
        holdout: Sequence[Example],
    ) -> GateReport:
        """Judge ``candidate`` against ``live`` (whose golden results come from ``live_report`` when it
        was judged on this same golden set, else are computed now)."""
        started = time.perf_counter()
        s = self.s
        if live_report is None or live_report.golden_sha256 != self.golden.sha256:
            live_report = self.baseline(live)
        cand = self._predictor(candidate)
        ref = self._predictor(live)
        texts = [t for t, _ in self.golden.examples]
        probs = cand.probabilities(texts)
        predicted = [cand.labels[i] for i in probs.argmax(-1).tolist()]
        per_label = _per_label(predicted, self.golden.examples)
        acc = sum(r for r, _ in per_label.values()) / len(texts)
        taken = _taken_by_new(predicted, self.golden.examples, set(candidate.labels) - set(live.labels))
        checks = []

        finite = bool(probs.isfinite().all()) and bool(((probs.sum(-1) - 1).abs() < 1e-3).all())
        checks.append(Check(name="finite_outputs", passed=finite, value=float(finite), threshold=1.0))

        drop = live_report.golden_accuracy - acc
        checks.append(
            Check(
                name="golden_accuracy",
                passed=drop <= s.gate_max_golden_drop,
                value=acc,
                threshold=live_report.golden_accuracy - s.gate_max_golden_drop,
                detail=f"live {live_report.golden_accuracy:.4f}, candidate {acc:.4f} on {len(texts)} texts"
                + _taken_detail(taken),
            )
        )

        worst_label, worst_drop = None, -math.inf
        change: dict[str, float] = {}
        for label, (right, total) in per_label.items():
            if label not in live_report.golden_per_label:
                continue
            lr, lt = live_report.golden_per_label[label]
            d = lr / lt - right / total
            if d != 0:
                change[label] = round(-d, 4)
            if total < s.gate_label_min_support:
                continue
            if d > worst_drop:
                worst_label, worst_drop = label, d
        checks.append(
            Check(
                name="label_regression",
                passed=worst_drop <= s.gate_label_max_drop,
                value=None if worst_label is None else worst_drop,
                threshold=s.gate_label_max_drop,
                detail=f"largest drop: {worst_label}" if worst_label else "no label with enough support",
            )
        )

        holdout_acc = None
        if len(holdout) >= s.gate_holdout_min:
            h_texts = [t for t, _ in holdout]
            c_pred = [cand.labels[i] for i in cand.probabilities(h_texts).argmax(-1).tolist()]
            l_pred = [ref.labels[i] for i in ref.probabilities(h_texts).argmax(-1).tolist()]
            holdout_acc = sum(p == lab for p, (_, lab) in zip(c_pred, holdout)) / len(holdout)
            live_h = sum(p == lab for p, (_, lab) in zip(l_pred, holdout)) / len(holdout)
            checks.append(
                Check(
                    name="holdout",
                    passed=holdout_acc >= live_h,
                    value=holdout_acc,
                    threshold=live_h,
                    detail=f"{len(holdout)} held-out new samples: live {live_h:.4f}, candidate {holdout_acc:.4f}",
                )
            )
        else:
            checks.append(
                Check(
                    name="holdout",
                    passed=True,
                    value=None,
                    threshold=None,
                    detail=f"skipped: {len(holdout)} held-out samples < {s.gate_holdout_min}",
                )
            )

        batch = texts[:32]
        live_ms, cand_ms = _batch_latency_ms([ref, cand], batch)
        ratio = cand_ms / live_ms if live_ms > 0 else 1.0
        checks.append(
            Check(
                name="latency",
                passed=ratio <= s.gate_latency_ratio,
                value=ratio,
                threshold=s.gate_latency_ratio,
                detail=f"batch of {len(batch)}: live {live_ms:.1f} ms, candidate {cand_ms:.1f} ms",
            )
        )
        return GateReport(
            passed=all(c.passed for c in checks),
            checks=checks,
            golden_sha256=self.golden.sha256,
            golden_accuracy=acc,
            golden_per_label=per_label,
            golden_label_change=dict(sorted(change.items(), key=lambda kv: (kv[1], kv[0]))),
            golden_taken_by_new=taken,
            holdout_accuracy=holdout_acc,
            batch_latency_ms=cand_ms,
            duration_s=time.perf_counter() - started,
        )
