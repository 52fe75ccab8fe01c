"""A round of a generative deployment: corrections and thumbs-up from the replay buffer become a LoRA
adapter, judged by the generative gate and released like any version.

1. New samples past the buffer's cursor: corrections (``gen:correction``: the answer it should have
   given) and thumbs-up generations (``gen:up``: an answer confirmed good) are what it imitates; a
   correction of a served generation is also a preference pair (DPO), and an answer voted down without a
   correction an undesirable one (KTO): neither alone starts a round (live accuracy counts them).
   One new correction in five (when there are five or more) is held out for the gate.
2. Rehearsal, so a taught fact does not leak into unrelated answers: every earlier accepted correction
   and confirmed answer still in the buffer, and the parent's own greedy answers to general prompts
   (``online.generative_prompts.REHEARSAL``), learned beside the new ones.
3. A fresh adapter from the base on all of it (``generative_teach.teach``), never stacked on the parent's.
4. The gate (``online.lifecycle.generative.judge``) on evidence measured here: golden NLL and KL against
   the parent, held-out corrections' NLL and preference, empty answers.
5. The release pipeline: published (rejected ones too, inspectable), placed (live, canary or shadow);
   the cursor moves past the samples unless the round was superseded.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable

import torch

from online import generation_samples as gen
from online.examples import Sample
from online.feedback.buffer import normalise
from online.generative import AdapterHost, GenerativeLM, load_base, serving_dtype
from online.generative_eval import Chat, answer_nll, answers, complete_answers, kl_to, mean_nll, user
from online.generative_prompts import REHEARSAL
from online.learning.generative_teach import teach
from online.learning.round import RoundReport
from online.lifecycle.generative import GenerativeEvidence, frozen_golden, judge
from online.lifecycle.release import JudgedVersion, release
from online.model import resolve_device
from online.reports import RoundStats

log = logging.getLogger("online.learning.generative_round")

Pair = tuple[Chat, str]


def _held_out(sample: Sample) -> bool:
    """One correction in five, by its id: the same one whichever trainer reads it."""
    return zlib.crc32(sample.sid.encode()) % 5 == 0


class GenerativeRoundRunner:
    """The trainer's round for ``ONLINE_TASK=generate`` (the same ``run`` shape as the classifier's)."""

    def __init__(self, stores) -> None:
        self.stores = stores
        self.s = stores.settings
        self.registry = stores.registry
        self.buffer = stores.buffer
        self.device = resolve_device(self.s.device)
        self._host: AdapterHost | None = None  # the base with parent and candidate adapters: evaluation
        self._train_base = None  # a second copy of the base that adapters are trained on
        self._parent_answers: dict[int, list[str | None]] = {}  # parent version -> its answers to REHEARSAL

    def host(self, base_model: str) -> AdapterHost:
        if self._host is None or self._host.base_model != base_model:
            self._host = AdapterHost(base_model, self.device, keep=3, cache_dir=self.s.state_dir / "base-cache")
            self._train_base = None
        return self._host

    def train_base(self, base_model: str):
        if self._train_base is None:
            model, tok = load_base(base_model, self.device, dtype=serving_dtype(self.device), cache_dir=self.s.state_dir / "base-cache")
            for p in model.parameters():
                p.requires_grad_(False)
            self._train_base = (model, tok)
        return self._train_base

    def run(self, on_start: Callable | None = None, fence: Callable[[], None] = lambda: None) -> RoundReport:
        started, wall = time.perf_counter(), time.time()
        live = self.registry.live()
        if live is None:
            raise RuntimeError("nothing is live: a round needs a parent")
        parent, manifest = self.registry.load(live)
        assert isinstance(parent, GenerativeLM)
        after = self.buffer.cursor()
        samples, upto = self.buffer.new_samples(limit=self.s.round_max_new)
        learnable = [s for s in samples if s.label in (gen.CORRECTION, gen.UP)]
        if not learnable:
            if samples:
                fence()
                self.buffer.advance_cursor(upto)  # thumbs down only: judgements, nothing to learn from
                self.stores.status.round_done(after, upto, None, "idle")
            return RoundReport(status="idle", parent=live, started_at=wall)
        heldout = [s for s in learnable if s.label == gen.CORRECTION and len(learnable) >= 5 and _held_out(s)]
        new = [s for s in learnable if s not in heldout]
        earlier = [
            s for label in (gen.CORRECTION, gen.UP) for s in self.buffer.samples(label) if s.seq <= after and not _held_out(s)
        ]
        host = self.host(parent.base_model)
        golden = frozen_golden(
            self.registry.store, self.s,
            lambda prompts: complete_answers(host, GenerativeLM(parent.base_model), [user(p) for p in prompts]),
        )  # fmt: skip
        prompts = REHEARSAL[: self.s.generate_rehearsal]
        if live not in self._parent_answers:
            self._parent_answers = {live: complete_answers(host, parent, [user(p) for p in prompts])}
        rehearsal = [(user(p), a) for p, a in zip(prompts, self._parent_answers[live]) if a is not None]
        downs = [s for s in self.buffer.samples(gen.DOWN) if s.seq <= upto]
        disowned = _voted_down_later(downs)
        new, earlier = [s for s in new if not disowned(s)], [s for s in earlier if not disowned(s)]
        pairs = [_pair(s) for s in new + earlier]
        preferences = [p for p in (_preference(s) for s in new + earlier) if p is not None]
        undesirable = [_pair(s) for s in downs]
        distill = self.s.generate_distill_weight > 0
        if not distill:
            pairs += rehearsal  # the parent's answers as plain targets
        if on_start is not None:
            on_start(len(pairs) * self.s.generate_train_epochs)
        fence()

        def teacher(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            host.activate(parent)
            return host.network(input_ids=input_ids, attention_mask=mask).logits

        referenced = distill or ((preferences or undesirable) and self.s.generate_preference_weight > 0)
        taught = teach(
            parent.base_model, pairs, self.s, keep=rehearsal if distill else (), teacher=teacher if referenced else None,
            preferences=preferences, undesirable=undesirable, device=self.device, base=self.train_base(parent.base_model),
        )  # fmt: skip
        candidate = taught.model
        evidence = self._evidence(host, parent, candidate, golden, [_pair(s) for s in heldout], heldout)
        report = judge(evidence, self.s)
        stats = RoundStats(
            new=len(new), holdout=len(heldout), rehearsed=len(earlier) + len(rehearsal), mode="lora",
            epochs=self.s.generate_train_epochs, mean_loss=taught.mean_loss, train_s=taught.seconds,
            cursor=upto, started_at=wall, duration_s=time.perf_counter() - started,
        )  # fmt: skip
        judged = JudgedVersion(
            model=candidate, report=report, parent=live, trained_on=[], calibration=[], golden=[],
            metrics={"golden_nll": evidence.golden_nll[1], "kl_to_parent": evidence.kl},
        )  # fmt: skip
        released = release(self.registry, self.s, judged, stats, reason=f"generative round on {len(new)} new samples", fence=fence)
        status = released.outcome if released.outcome != "published" else "rejected"
        if released.outcome != "superseded":
            fence()
            self.buffer.advance_cursor(upto)
            self.stores.status.round_done(after, upto, released.manifest.version, status)  # what feedback status reads
        return RoundReport(
            **stats.model_dump(), status=status,
            parent=live, version=released.manifest.version, gate=report,
        )  # fmt: skip

    @torch.inference_mode()
    def _evidence(
        self, host: AdapterHost, parent: GenerativeLM, candidate: GenerativeLM, golden: list[tuple[str, str]],
        heldout: list[Pair], heldout_samples: list[Sample],
    ) -> GenerativeEvidence:  # fmt: skip
        import hashlib

        golden_pairs = [(user(p), r) for p, r in golden]
        g = (mean_nll(answer_nll(host, parent, golden_pairs)), mean_nll(answer_nll(host, candidate, golden_pairs)))
        h = None
        if heldout:
            h = (mean_nll(answer_nll(host, parent, heldout)), mean_nll(answer_nll(host, candidate, heldout)))
        pairs = [gen.decode(s.text) for s in heldout_samples]
        pairs = [p for p in pairs if p.rejected]
        preference = None
        if pairs:
            chosen = [(p.messages, p.answer) for p in pairs]
            rejected = [(p.messages, p.rejected or "") for p in pairs]

            def prefers(version: GenerativeLM) -> float:
                good, bad = answer_nll(host, version, chosen), answer_nll(host, version, rejected)
                return sum(a.per_token < b.per_token for a, b in zip(good, bad)) / len(pairs)

            preference = (prefers(parent), prefers(candidate))
        kl = kl_to(host, parent, candidate, golden_pairs)
        chats = [user(p) for p, _ in golden]
        empties = (
            sum(not a.strip() for a in answers(host, parent, chats, 24)),
            sum(not a.strip() for a in answers(host, candidate, chats, 24)),
        )
        digest = hashlib.sha256(repr(golden).encode()).hexdigest()
        return GenerativeEvidence(g, h, preference, kl, empties, digest)


def _pair(sample: Sample) -> Pair:
    decoded = gen.decode(sample.text)
    return decoded.messages, decoded.answer


def _voted_down_later(downs: list[Sample]) -> Callable[[Sample], bool]:
    """Whether a correction's answer to its prompt was voted down after it was taught (served from the
    correction memory, then a thumbs down): it is no longer imitated, and its answer is undesirable."""
    latest: dict[tuple[str, str], int] = {}
    for d in downs:
        decoded = gen.decode(d.text)
        key = (normalise(decoded.prompt), normalise(decoded.answer))
        latest[key] = max(latest.get(key, 0), d.seq)

    def disowned(sample: Sample) -> bool:
        decoded = gen.decode(sample.text)
        return latest.get((normalise(decoded.prompt), normalise(decoded.answer)), -1) > sample.seq

    return disowned


def _preference(sample: Sample) -> tuple[Chat, str, str] | None:
    """A correction of a served generation: the correction preferred to what was served (DPO)."""
    if sample.label != gen.CORRECTION:
        return None
    decoded = gen.decode(sample.text)
    if decoded.rejected is None or normalise(decoded.rejected) == normalise(decoded.answer):
        return None
    return decoded.messages, decoded.answer, decoded.rejected
