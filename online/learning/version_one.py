"""Version 1: trained from the seed data when the registry is empty.

The seed is the user's labelled file when one is configured; else (the demo) CLINC150's train split of
its first ``seed_domains`` domains, so the remaining domains can arrive later as feedback (the
domain-incremental stream the trainer is benchmarked on).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable

from online.data import Clinc150
from online.examples import Example
from online.labelled_file import Columns, read_labelled, train_and_test
from online.learning.closed_form import StatisticsCache, closed_form_round, head_info
from online.learning.fit import Progress, accuracy, fit
from online.learning.step import LearnConfig
from online.lifecycle.gate import Gate, GoldenSet
from online.lifecycle.importer import import_classifier
from online.lifecycle.registry import Manifest, ModelRegistry
from online.lifecycle.release import JudgedVersion, release
from online.model import TextClassifier, default_base_model, resolve_device
from online.predictor import torch_predictor
from online.reports import SeedStats
from online.settings import Settings


def seed_data(settings: Settings) -> tuple[list[Example], list[Example]]:
    """(train, test) examples version 1 learns and is judged on: the user's file (``seed_data``, with
    ``seed_test`` or a stratified split of it), else CLINC150's first ``seed_domains`` domains. At most
    ``seed_per_label`` train examples per label. Raises :class:`DataError` naming a bad row."""
    if settings.seed_data:
        train, test = train_and_test(
            settings.seed_data, settings.seed_test, Columns.of(settings), settings.seed_test_share, settings.seed
        )
    else:
        clinc = Clinc150.open(settings.data_dir)
        train, test = clinc.seed(settings.seed_domains, "train"), clinc.seed(settings.seed_domains, "test")
    if settings.seed_per_label:
        kept: dict[str, list[Example]] = defaultdict(list)
        for ex in train:
            if len(kept[ex[1]]) < settings.seed_per_label:
                kept[ex[1]].append(ex)
        train = [ex for exs in kept.values() for ex in exs]
    return train, test


SEED_EXAMPLES_SEEN = 3000


def seed_epochs(settings: Settings, n_train: int) -> int:
    """Epochs of version 1: as configured, else enough passes over a small file to see 3,000 examples
    (one epoch over a few hundred examples leaves the head far from fitted: tests/services/test_own_data.py)."""
    if settings.seed_epochs:
        return settings.seed_epochs
    if not settings.seed_data:
        return 1  # the CLINC150 demo: `online up` under 5 minutes on 2 cores
    return max(1, min(20, math.ceil(SEED_EXAMPLES_SEEN / max(n_train, 1))))


def seed_test_examples(settings: Settings) -> list[Example]:
    """Labelled test texts the user configured (``seed_test``, else the held-out part of ``seed_data``)."""
    if settings.seed_test:
        return read_labelled(settings.seed_test, Columns.of(settings))
    return seed_data(settings)[1] if settings.seed_data else []


def make_version_one(
    settings: Settings,
    registry: ModelRegistry,
    progress: Progress | None = None,
    fence: Callable[[], None] | None = None,
    head_stats: StatisticsCache | None = None,
) -> Manifest:
    """Version 1: the user's own classifier imported (``seed_model``), else trained on the seed data.
    Raises :class:`VersionOneRefused` when the gate refused it (nothing went live)."""
    if settings.seed_model:
        manifest, report = import_classifier(
            settings, registry, settings.seed_model, seed_test_examples(settings), "version 1 imported", fence
        )
    else:
        manifest = train_version_one(settings, registry, progress, fence, head_stats)
        report = manifest.gate
    if registry.live() != manifest.version:
        failed = ", ".join(report.failed()) if report else "not placed"
        raise VersionOneRefused(f"version {manifest.version} was refused ({failed}): fix the seed data or model")
    return manifest


class VersionOneRefused(RuntimeError):
    """Version 1 did not pass its gate: retrying the same data would publish the same refusal."""


def train_version_one(
    settings: Settings,
    registry: ModelRegistry,
    progress: Progress | None = None,
    fence: Callable[[], None] | None = None,
    head_stats: StatisticsCache | None = None,
) -> Manifest:
    """Train, evaluate, publish and promote version 1. Returns its manifest. ``fence()``, if given, is
    called before the publish and the promotion and raises when this process may no longer write.
    ``head_stats``: the closed-form statistics cache the caller's rounds will use (the trainer's), so
    its first round starts from the seed data's statistics instead of embedding them again."""
    started = time.perf_counter()
    train, test = seed_data(settings)
    labels = sorted({lab for _, lab in train})
    epochs = seed_epochs(settings, len(train))
    model = TextClassifier.from_base(
        settings.base_model or default_base_model(), labels, pooling=settings.pooling, seed=settings.seed
    )
    result = fit(
        model,
        train,
        epochs=epochs,
        batch_size=settings.train_batch_size,
        lr=settings.learning_rate,
        head_lr=settings.head_learning_rate,
        max_seq_len=settings.max_seq_len,
        device=resolve_device(settings.device),
        seed=settings.seed,
        progress=progress,
    )
    model.cpu()
    solved = None
    if settings.head == "closed-form":
        # the head every later round solves: exact, on the seed data's statistics under this encoder
        cfg = LearnConfig.from_settings(settings)
        cache = StatisticsCache() if head_stats is None else head_stats
        cf = closed_form_round(model, [], train, [], cfg, cache, tune_encoder=False)
        model, solved = cf.model, cf.head
    predictor = torch_predictor(model, 0, settings, precision="fp32")
    acc = accuracy(lambda texts: [p.label for p in predictor.predict(texts, 1)], test)
    # The golden set is frozen now, from the seed test data, and never changes afterwards (unless a
    # trainer on another host froze it first: the store's copy wins).
    registry.fetch_golden()
    golden = GoldenSet.for_settings(settings, test)
    gate = Gate(settings, golden)
    report = gate.baseline(model)
    released = release(
        registry,
        settings,
        JudgedVersion(
            model=model,
            report=report,
            parent=None,
            trained_on=train,
            calibration=golden.examples,
            golden=golden.examples,
            metrics={"seed_test_accuracy": acc, "golden_accuracy": report.golden_accuracy},
        ),
        lambda: SeedStats(
            examples=len(train),
            epochs=epochs,
            mean_loss=result.mean_loss,
            duration_s=time.perf_counter() - started,
            head=head_info(model, solved, encoder_tuned=True, encoder_of=None),
        ),
        reason="version 1 trained on the seed data",
        fence=fence,
    )
    manifest = released.manifest
    return manifest
