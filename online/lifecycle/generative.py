"""The generative family's place in the release pipeline: its packager, its frozen golden set and its gate.

A generative version's weights are its LoRA adapter (or nothing, for the base): there is no int8
artifact or drift reference to build beside them yet, so its package is empty and the pipeline publishes
and places it like any version (``online.lifecycle.release``). Importing this module registers the packager.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from online.generative_prompts import GOLDEN
from online.lifecycle.package import Package
from online.lifecycle.release import JudgedVersion, register_packager
from online.lifecycle.store import ModelStore
from online.reports import Check, GateReport
from online.settings import Settings

FAMILY = "generative"


@contextlib.contextmanager
def package_generative(candidate: JudgedVersion, settings: Settings) -> Iterator[Package]:
    """Nothing beside the adapter: replicas load it on their base model (``online.generative``)."""
    yield Package()


register_packager(FAMILY, package_generative)


def base_report(base_model: str) -> GateReport:
    """Version 1 of a generative deployment is its base model: judged against nothing, it is the baseline
    later versions are compared with."""
    check = Check(name="baseline", passed=True, value=None, threshold=None, detail=f"the base model {base_model}")
    return GateReport(passed=True, checks=[check], golden_sha256="-", golden_accuracy=0.0, golden_per_label={})


# --- the golden set and the gate of a generative version --------------------------------------
GENERATE_GOLDEN_FILE = "generate-golden.jsonl"  # frozen prompt/reference pairs, shared through the store


def frozen_golden(
    store: ModelStore, settings: Settings, reference_answers: Callable[[list[str]], list[str | None]]
) -> list[tuple[str, str]]:
    """The deployment's golden (prompt, reference) pairs: the file every trainer shares through the
    store, else ``ONLINE_GENERATE_GOLDEN_PATH`` (JSONL ``prompt``/``reference``), else the built-in general
    prompts with ``reference_answers`` (the base model's own; a prompt it answers with None, an answer cut
    off, is left out), frozen now and shared."""
    path = store.fetch_file(GENERATE_GOLDEN_FILE)
    if path is None:
        if settings.generate_golden_path:
            rows = [json.loads(line) for line in Path(settings.generate_golden_path).read_text().splitlines() if line.strip()]
            pairs = [(r["prompt"], r["reference"]) for r in rows]
        else:
            pairs = [(p, r) for p, r in zip(GOLDEN, reference_answers(GOLDEN)) if r is not None]
        path = store.local / GENERATE_GOLDEN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"prompt": p, "reference": r}, ensure_ascii=False) + "\n" for p, r in pairs))
        store.put_file(GENERATE_GOLDEN_FILE, path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["prompt"], r["reference"]) for r in rows]


@dataclass(frozen=True)
class GenerativeEvidence:
    """What the gate compares, measured by the caller (``online.generative_eval``) on parent and candidate."""

    golden_nll: tuple[float, float]  # (parent, candidate) per-token NLL of the golden references
    heldout_nll: tuple[float, float] | None  # (parent, candidate) on held-out corrections; None: none held out
    preference: tuple[float, float] | None  # (parent, candidate) share of held-out pairs preferring the correction
    kl: float  # mean per-token KL(parent || candidate) along the golden references
    empty_answers: tuple[int, int]  # (parent, candidate) empty greedy answers to the golden prompts
    golden_sha256: str


def judge(evidence: GenerativeEvidence, settings: Settings) -> GateReport:
    """The generative gate, a pure function of the evidence: what was taught is learned (held-out
    corrections' NLL falls, pairs prefer the correction no less), and nothing else moved much (golden NLL
    within ``generate_gate_max_golden_nll_rise`` of the parent's, KL to the parent under
    ``generate_gate_max_kl``, no more empty answers)."""
    e = evidence
    parent, cand = e.golden_nll
    rise = (cand - parent) / parent if parent > 0 else 0.0
    checks = [
        Check(
            name="golden_nll", passed=rise <= settings.generate_gate_max_golden_nll_rise, value=rise,
            threshold=settings.generate_gate_max_golden_nll_rise,
            detail=f"per-token NLL of the golden references: parent {parent:.4f}, candidate {cand:.4f}",
        ),
        Check(
            name="kl_to_parent", passed=e.kl <= settings.generate_gate_max_kl, value=e.kl,
            threshold=settings.generate_gate_max_kl, detail="mean per-token KL(parent || candidate) on the golden set",
        ),
        Check(
            name="format", passed=e.empty_answers[1] <= e.empty_answers[0], value=float(e.empty_answers[1]),
            threshold=float(e.empty_answers[0]), detail="empty greedy answers to the golden prompts (parent's as the bound)",
        ),
    ]  # fmt: skip
    if e.heldout_nll is None:
        checks.append(Check(name="heldout_nll", passed=True, value=None, threshold=None, detail="no correction held out (too few new)"))
    else:
        p, c = e.heldout_nll
        checks.append(Check(name="heldout_nll", passed=c < p, value=c, threshold=p, detail="held-out corrections' NLL must fall below the parent's"))
    if e.preference is not None:
        p, c = e.preference
        checks.append(Check(name="preference", passed=c >= p, value=c, threshold=p, detail="held-out pairs whose correction the model prefers to the answer it replaced"))
    return GateReport(
        passed=all(c.passed for c in checks), checks=checks, golden_sha256=e.golden_sha256,
        golden_accuracy=0.0, golden_per_label={},
    )  # fmt: skip
