"""A continual-learning round in production: buffer -> learn -> gate -> registry.

Start from the live version; take the new samples since the buffer's cursor (a stable slice held out for
the gate) plus a rehearsal sample from the buffer and the seed data; fine-tune (``online.learning.step``);
judge the candidate (``online.lifecycle.gate``); publish it (rejected candidates too, marked, for inspection);
promote it if it passed and live has not moved meanwhile; only then move the cursor.

A crash or a stop before the end publishes nothing and leaves the cursor where it was, so the same
samples are retried by the next round. A rejected round still moves the cursor: its samples stay in the
buffer as rehearsal material, but are not retried as "new" forever.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from online.credentials import sender
from online.data import DataNotFound
from online.examples import Example, Sample
from online.feedback.buffer import ReplayBuffer
from online.feedback.labels import LabelBook, LabelRules, govern, is_pending
from online.feedback.quarantine import Candidate, ScreenConfig, SourceLedger, batch_counts, decide, reason_kind, screen
from online.feedback.status import EventStatusLog
from online.learning.closed_form import (
    HEAD_ROUND,
    StatisticsCache,
    closed_form_round,
    encoder_due,
    encoder_needed,
    head_info,
    uncovered,
)
from online.learning.fit import Progress
from online.learning.step import LearnConfig, LearnResult, learn, new_repeats, select_rehearsal, split_holdout
from online.learning.version_one import seed_data
from online.lifecycle.artifact import build_int8
from online.lifecycle.gate import Gate
from online.lifecycle.registry import Manifest, ModelRegistry
from online.lifecycle.release import JudgedVersion, release
from online.memory.log import CorrectionLog
from online.model import TextClassifier
from online.predictor import serving_predictor, torch_predictor
from online.reference import REFERENCE_FILE, Reference
from online.reports import GateReport, RoundStats
from online.settings import Settings

WARM_CHUNK = 512  # texts a warm-up embeds between two looks at a stop request

log = logging.getLogger("online.learning.round")

RoundStatus = Literal["promoted", "canary", "shadow", "published", "rejected", "superseded", "idle"]


class RoundReport(RoundStats):
    """One round, in the one shape every reader uses: the manifest's ``round`` field (its
    :class:`RoundStats` part; the gate report has its own field), the trainer's log record,
    `online train --now`."""

    status: RoundStatus
    parent: int | None = None
    version: int | None = None
    gate: GateReport | None = None

    def manifest_stats(self) -> RoundStats:
        """What the version's manifest keeps as ``round`` (the gate report has its own field)."""
        return RoundStats.model_validate(self.model_dump(include=set(RoundStats.model_fields)))

    def log_record(self) -> dict:
        """The structured fields of the trainer's one log line per round."""
        record = self.model_dump(exclude={"gate", "added_labels"})
        record["added_labels"] = len(self.added_labels)
        record["gate"] = None if self.gate is None else {c.name: c.passed for c in self.gate.checks}
        engine = self.gate.engine if self.gate else None
        record["engine"] = None if engine is None else ("onnx-int8" if engine.passed else f"torch ({engine.detail})")
        return record

    def summary(self) -> str:
        if self.status == "idle":
            if self.quarantined:
                return f"all {self.quarantined} new samples held ({self.held_by_reason}): nothing to train"
            return "no new samples: nothing to train"
        failed = f" (failed: {', '.join(self.gate.failed())})" if self.gate and not self.gate.passed else ""
        return (
            f"round from v{self.parent}: {self.status} v{self.version}{failed}; {self.new} new "
            f"({self.holdout} held out, {self.quarantined} quarantined), {self.rehearsed} rehearsed, "
            f"new labels {len(self.added_labels)}, loss {self.mean_loss or 0:.4f}, train {self.train_s:.1f} s, "
            f"total {self.duration_s:.1f} s"
        )


Fence = Callable[[], None]
HOUR_S = 3600.0


def _bad_origins(quarantined: set[str]) -> set[str]:
    """The origins of quarantined sources: their names (samples stored without an origin) and keys."""
    return quarantined | {f"key:{s}" for s in quarantined}


def _trusted(s: Sample, quarantined: set[str]) -> bool:
    """Sent with the admin token, or with the trusted key of a source not quarantined since."""
    return s.trusted == "admin" or (s.trusted == "key" and s.source not in quarantined)


def _encoder_of(parent: int, manifest: Manifest) -> int:
    """The version whose round last changed the encoder ``parent`` (with ``manifest``) serves."""
    info = getattr(manifest.round, "head", None)
    return info.encoder_of if info is not None and info.encoder_of is not None else parent


def _unfenced() -> None:
    """No leadership to check (tests and benches that run one round in one process)."""


def seed_pool(settings: Settings) -> list[Example]:
    """Version 1's training data, rehearsed beside the buffer (empty if the data is not there).

    An imported version 1 (``seed_model``) rehearses ``seed_data`` only when named: never the CLINC150
    demo, whose labels would otherwise be taught to the user's classifier."""
    if settings.seed_model and not settings.seed_data:
        log.info("version 1 was imported and ONLINE_SEED_DATA is unset: rehearsal draws on the buffer only")
        return []
    try:
        return seed_data(settings)[0]
    except DataNotFound:
        log.warning(
            "no seed data (CLINC150 not under %s, ONLINE_SEED_DATA unset): rehearsal draws on the buffer only",
            settings.data_dir,
        )
        return []


def work_units(n_examples: int, cfg: LearnConfig) -> int:
    """What the progress callback will count up to for a round of ``n_examples``."""
    return n_examples if cfg.mode == "head" else n_examples * cfg.epochs


class RoundStores(Protocol):
    """The stores a round reads and writes (the wiring's ``Stores`` has them all)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> ModelRegistry: ...

    @property
    def buffer(self) -> ReplayBuffer: ...

    @property
    def sources(self) -> SourceLedger: ...

    @property
    def labels(self) -> LabelBook: ...

    @property
    def corrections(self) -> CorrectionLog: ...

    @property
    def status(self) -> EventStatusLog: ...


class RoundRunner:
    """Runs rounds; the caller holds the trainer's leader lock."""

    def __init__(
        self,
        stores: RoundStores,
        gate: Gate,
        seed_examples: list[Example] | None = None,
        head_stats: StatisticsCache | None = None,
    ) -> None:
        self.s = stores.settings
        self.stores = stores
        self.registry = stores.registry
        self.buffer = stores.buffer
        self.gate = gate
        self.cfg = LearnConfig.from_settings(self.s)
        self.screen_cfg = ScreenConfig.from_settings(self.s)
        self.label_rules = LabelRules.from_settings(self.s)
        self.seed_examples = seed_pool(self.s) if seed_examples is None else seed_examples
        self._pending_count: Counter[str] = Counter()  # pending labels' held examples, per label...
        self._pending_teachers: dict[str, set[str]] = {}  # ...and the origins that taught them
        # closed-form rounds: the statistics and embeddings of the stored examples, kept between rounds
        self.head_stats = StatisticsCache() if head_stats is None else head_stats

    def _head_rounds_since_encoder(self, version: int | None) -> int:
        """Closed-form head rounds in a row that made ``version`` from its ancestors (the encoder unchanged
        since the version before them), counted up to ``encoder_every``."""
        n = 0
        while version is not None and n < self.cfg.encoder_every:
            manifest = self.registry.get(version)
            stats = manifest.round
            if stats is None or getattr(stats, "kind", None) != "continual" or stats.mode != HEAD_ROUND:
                break
            n += 1
            version = manifest.parent
        return n

    def _stored(self, live: TextClassifier, exclude: set[str] = frozenset()) -> list[Example]:
        """Every stored example a closed-form head is solved on: the buffer's, then the seed data's."""
        remembered = sorted((s for s in self.buffer.samples() if s.sid not in exclude), key=lambda s: s.sid)
        return [(s.text, s.label) for s in remembered] + self._seed_for(live)

    def warm(self, progress: Progress | None = None) -> int:
        """Closed-form mode: what a trainer's first head round would otherwise pay for, done now: the
        statistics of the live encoder over every stored example, its quantised int8 encoder, and the
        embeddings a head round's checks reuse (the golden set under the gate's and the int8 check's
        engines, every stored text under the serving engine: the drift reference samples them). Returns
        the number of examples the statistics cover (0 when there is nothing to do). ``progress`` is
        called (with 0) between its steps and chunks: a stop raised from it ends the warm-up (a minute
        on 2 cores for CLINC150) within a step (the int8 export, seconds, is not split), and what it
        built is only a cache."""
        tick = progress or (lambda _: None)
        parent = self.registry.live()
        if not self.cfg.closed_form or parent is None:
            return 0
        live, _ = self.registry.load(parent)
        if uncovered(live, stored := self._stored(live)):
            return 0
        model = closed_form_round(
            live, [], stored, [], self.cfg, self.head_stats, tune_encoder=False, progress=progress
        ).model
        golden = [t for t, _ in self.gate.golden.examples]
        tick(0)
        torch_predictor(model, 0, self.s, reuse=True).probabilities(golden)
        tick(0)
        with tempfile.TemporaryDirectory(prefix="online-warm-") as tmp:
            path, _ = build_int8(model, self.gate.golden.examples, self.s, Path(tmp))
            serving = serving_predictor(model, 0, self.s, path, reuse=True)
            texts = [t for t, _ in stored] + golden
            for start in range(0, len(texts), WARM_CHUNK):
                tick(0)
                serving.probabilities(texts[start : start + WARM_CHUNK])
        return self.head_stats.stats.n if self.head_stats.stats else 0

    def _requeue_held(self, fence: Fence, live_labels: set[str]) -> int:
        """Held samples that may be trained now go back to the buffer as new (screened again): those
        enough distinct trusted origins sent, and those held only while their new label was pending once
        the label is live or approved (or an hour passed, for the per-source budget). Other pending ones
        stay held and are *counted* by the round's label rules (examples, teachers) instead of screened
        again: more pending examples than a round takes never keep the trainer busy. One read of the
        held set."""
        need = self.screen_cfg.release_sources
        bad = _bad_origins(self.stores.sources.quarantined())
        waiting = self.buffer.held()
        origins = self.buffer.sources([h.sid for h in waiting])
        agreed = {h.sid for h, srcs in zip(waiting, origins) if len(srcs - bad) >= need}
        approved = self.stores.labels.approved()
        now = time.time()
        chosen = set(agreed)
        self._pending_count, self._pending_teachers = Counter(), {}
        for h, srcs in zip(waiting, origins):
            if not is_pending(h.reason) or h.sid in agreed:
                continue
            if h.label in live_labels or h.label in approved or ("this hour" in h.reason and now - h.at >= HOUR_S):
                chosen.add(h.sid)
            else:
                self._pending_count[h.label] += 1
                self._pending_teachers.setdefault(h.label, set()).update(srcs - bad)
        if not chosen:
            return 0
        if agreed:
            log.info("released %d held samples that %d+ sources agree on", len(agreed), need)
        fence()
        return self.buffer.release(sorted(chosen), by_operator=False)

    def _screen(
        self, live: TextClassifier, parent: int, samples: list[Sample], fence: Fence
    ) -> tuple[list[Sample], dict[str, int]]:
        """Hold poisoned-looking samples (``online.feedback.quarantine``) and examples of new labels that
        may not go live yet (``online.feedback.labels``). Samples of trusted sources and samples enough
        sources agree on skip the screen but not label governance; an operator's releases skip both.
        Returns the trainable samples and the held counts by kind."""
        cfg = self.screen_cfg
        ledger = self.stores.sources
        bad = ledger.quarantined()
        bad_origins = _bad_origins(bad)
        # what independence counts: origins (feedback keys, client addresses), not names
        srcs = dict(zip((s.sid for s in samples), self.buffer.sources([s.sid for s in samples])))
        exempt = {
            s.sid for s in samples
            if s.released or _trusted(s, bad) or len(srcs[s.sid] - bad_origins) >= cfg.release_sources
        }  # fmt: skip
        todo = [s for s in samples if s.sid not in exempt]
        items = [Candidate(s.text, s.label, s.source, s.origin) for s in todo]
        judged = []
        if todo:
            predictor = torch_predictor(live, 0, self.s)
            probs, emb = predictor.probabilities_and_embeddings([s.text for s in todo])
            ref_path = self.registry.optional_artifact(parent, REFERENCE_FILE)
            reference = Reference.load(ref_path) if ref_path else None
            judged = screen(items, probs.numpy(), emb.numpy(), live.labels, reference, cfg)
        reasons, newly = decide(items, judged, ledger.counts(), bad, cfg)
        # Label governance covers every sample but the operator's releases and what a trusted credential
        # sent (a trusted source may create a label; under the approval policy only the admin token
        # does); agreed ones are governed too
        approval = self.label_rules.policy == "approval"
        governed = [
            s for s in samples
            if not s.released and not (_trusted(s, bad) and (s.trusted == "admin" or not approval))
        ]  # fmt: skip
        takeover = {s.sid: j.takeover for s, j in zip(todo, judged)}
        screened = dict(zip((s.sid for s in todo), reasons))
        teachers: dict[str, set[str]] = {}
        for s in samples:
            teachers.setdefault(s.label, set()).update(srcs[s.sid] - bad_origins)
        examples = Counter(s.label for s in samples) + self._pending_count  # held while pending: they count
        for label, origins in self._pending_teachers.items():
            teachers.setdefault(label, set()).update(origins)
        # the label rules (hourly budget, takeovers, vouched names) count a keyless client by its origin
        governed_reasons, created = govern(
            [s.label for s in governed], [sender(s.source, s.origin) for s in governed], [takeover.get(s.sid) for s in governed],
            [screened.get(s.sid) for s in governed], set(live.labels), self.stores.labels.approved(),
            self.stores.labels.created_recently, self.label_rules, examples, teachers,
        )  # fmt: skip
        verdict = dict(zip((s.sid for s in governed), governed_reasons))
        fence()
        ledger.record(batch_counts(items, judged))
        for source in sorted(newly):
            ledger.quarantine(source)
            log.warning(
                "source %r quarantined: most of its labels contradict the live model's knowledge; its feedback "
                "is held until released (`online quarantine list`, `online quarantine release --source %s`)",
                source, source,
            )  # fmt: skip
        if newly:  # what a newly quarantined sender taught earlier is no longer answered from memory (after
            # the quarantine: the forget makes the replicas re-read the policy)
            taught = self.stores.corrections.snapshot()[1]
            self.stores.corrections.forget(
                [c.sid for c in taught if c.trusted == "" and ({c.source, c.origin} & newly)], "quarantine: source"
            )
        hold = [(s.sid, verdict[s.sid]) for s in governed if verdict[s.sid]]
        if hold:
            self.buffer.quarantine(hold)
            # what the quarantine holds is never answered from memory (pending labels come back when allowed)
            self.stores.corrections.forget([sid for sid, r in hold if not is_pending(r)], "quarantine: held")
            log.info("held %d of %d new samples (e.g. %s)", len(hold), len(samples), hold[0][1])
        self.stores.labels.record_created(created)
        held_ids = {sid for sid, _ in hold}
        return [s for s in samples if s.sid not in held_ids], dict(Counter(reason_kind(r) for _, r in hold))

    def _seed_for(self, live: TextClassifier) -> list[Example]:
        """Seed examples of labels the live version knows: rehearsal keeps what it learned, and never
        teaches it another task's labels (the CLINC150 demo after a restart without ``--data``)."""
        known = set(live.labels)
        kept = [ex for ex in self.seed_examples if ex[1] in known]
        if self.seed_examples and not kept:
            log.warning("none of the seed data's labels is live: not rehearsed (is ONLINE_SEED_DATA this task's file?)")
        return kept

    def run(self, on_start: Callable[[int], Progress] | None = None, fence: Fence | None = None) -> RoundReport:
        """One round. ``on_start(total)`` may return a progress callback (which may raise to stop);
        ``fence()`` is called right before every write of the round and raises when this process may no
        longer write (the trainer passes its leadership check), so a deposed leader writes nothing."""
        fence = fence or _unfenced
        started = time.perf_counter()
        started_at = time.time()
        parent = self.registry.live()
        if parent is None:
            raise RuntimeError("nothing is live: version 1 comes first")
        if self.s.quarantine:
            self._requeue_held(fence, set(self.registry.get(parent).labels))
        samples, upto = self.buffer.new_samples(limit=self.s.round_max_new)
        after = self.buffer.cursor()
        if not samples:
            return RoundReport(status="idle", parent=parent)
        live, manifest = self.registry.load(parent)
        held_by: dict[str, int] = {}
        if self.s.quarantine:
            samples, held_by = self._screen(live, parent, samples, fence)
        held = sum(held_by.values())
        if not samples:  # everything held: nothing to learn, so no version either
            fence()
            self.buffer.advance_cursor(upto)
            self.stores.status.round_done(after, upto, None, "idle")
            log.info("round: all %d new samples held (%s); nothing trained, nothing published", held, held_by)
            return RoundReport(
                status="idle", parent=parent, quarantined=held, held_by_reason=held_by, cursor=upto,
                started_at=started_at, duration_s=time.perf_counter() - started,
            )  # fmt: skip
        # In content order (sid), not arrival order: events of one batch reach the buffer interleaved
        # differently across Kafka partitions from run to run, and the same data must train the same round.
        samples = sorted(samples, key=lambda s: s.sid)
        new_ids = {s.sid for s in samples}
        new = [(s.text, s.label) for s in samples]
        train_new, holdout = split_holdout(new, self.s.holdout_fraction, self.s.holdout_min_new)
        pool = self._stored(live, exclude=new_ids)
        rng = random.Random(self.s.seed + upto)
        closed_form = self.cfg.closed_form
        if closed_form and (missing := uncovered(live, pool + train_new)):
            log.warning(
                "closed-form head: %d live labels have no stored example (e.g. %s): this round trains by SGD",
                len(missing), ", ".join(missing[:3]),
            )  # fmt: skip
            closed_form = False
        tune_encoder = not closed_form or encoder_due(self._head_rounds_since_encoder(parent), self.cfg.encoder_every)

        def attempt(tune: bool, done: int = 0) -> tuple[list[Example], LearnResult]:
            """The round's training: rehearsal picked and the encoder tuned when ``tune``, else a head solve."""
            rehearsal = select_rehearsal(live, pool, len(train_new), self.cfg, rng, train_new) if tune else []
            n_train = len(train_new) * new_repeats(len(train_new), len(rehearsal), self.cfg) + len(rehearsal)
            units = work_units(n_train, self.cfg) if tune else len(train_new)
            progress = on_start(done + units) if on_start else None
            if not closed_form:
                return rehearsal, learn(live, train_new, rehearsal, self.cfg, progress)
            cf = closed_form_round(live, train_new, pool, rehearsal, self.cfg, self.head_stats, tune_encoder=tune,
                                   progress=progress)  # fmt: skip
            return rehearsal, cf

        rehearsal, result = attempt(tune_encoder)
        if closed_form and not tune_encoder and encoder_needed(result.head, self.cfg):
            # the live features do not separate what users teach: the head alone cannot learn it, so this
            # round tunes the encoder first instead of waiting for its turn
            log.warning(
                "closed-form head: the solved head answers %.0f%% of this round's %d new examples with their "
                "label (ENCODER_FIT_MIN %.0f%%): this round tunes the encoder too",
                100 * result.head.probe_fit, len(train_new), 100 * self.cfg.encoder_fit_min,
            )  # fmt: skip
            tune_encoder = True
            rehearsal, result = attempt(True, done=len(train_new))

        live_report = manifest.gate
        gate = self.gate.evaluate(result.model, live, live_report, holdout)
        report = RoundReport(
            status="rejected",
            parent=parent,
            new=len(new),
            holdout=len(holdout),
            rehearsed=len(rehearsal),
            quarantined=held,
            held_by_reason=held_by,
            added_labels=result.added_labels,
            rehearsal_strategy=self.cfg.strategy if tune_encoder else None,
            mode=(f"closed-form+{self.cfg.mode}" if tune_encoder else HEAD_ROUND) if closed_form else self.cfg.mode,
            epochs=self.cfg.epochs if tune_encoder else None,
            distill_weight=(self.cfg.distill_weight if self.cfg.distills else 0.0) if tune_encoder else None,
            bias_correction=self.cfg.bias_correction,
            probe_first=self.cfg.probes if tune_encoder else None,
            mean_loss=result.mean_loss,
            train_s=result.duration_s,
            cursor=upto,
            started_at=started_at,
            trained_by=f"{socket.gethostname()}:{os.getpid()}",
            gate=gate,
            head=head_info(
                result.model,
                result.head,
                encoder_tuned=result.encoder_tuned,
                encoder_of=None if result.encoder_tuned else _encoder_of(parent, manifest),
            ),
        )
        metrics = {"golden_accuracy": gate.golden_accuracy}
        if gate.holdout_accuracy is not None:
            metrics["holdout_accuracy"] = gate.holdout_accuracy

        def stats() -> RoundStats:  # read once the package is built: the round's duration counts it
            report.duration_s = time.perf_counter() - started
            return report.manifest_stats()

        released = release(
            self.registry,
            self.s,
            JudgedVersion(
                model=result.model,
                report=gate,
                parent=parent,
                trained_on=pool + new,
                calibration=list(self.gate.golden.examples) + holdout,
                golden=self.gate.golden.examples,
                metrics=metrics,
            ),
            stats,
            reason=f"round on {len(new)} new samples passed the gate",
            fence=fence,
        )
        report.version = released.manifest.version
        report.status = released.outcome  # rejected, promoted, shadow or superseded
        if report.status != "superseded":
            # A superseded round is retried from the new live version: the cursor stays.
            fence()
            self.buffer.advance_cursor(upto)
            self.stores.status.round_done(after, upto, report.version, report.status)
        if report.status == "promoted" and result.added_labels and self.s.quarantine:
            # examples held while their label was pending: it is live now
            self._requeue_held(fence, set(result.model.labels))
        report.duration_s = time.perf_counter() - started
        return report
