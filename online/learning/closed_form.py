"""The closed-form head: a ridge solve on accumulated statistics, the encoder tuned on a slower clock.

After RanPAC (McDonnell et al., NeurIPS 2023): the live encoder's sentence embedding, L2-normalised,
goes through a fixed random ReLU lift to ``width`` dimensions (:class:`online.model.LiftedHead`), and
the head's weights are the exact ridge solution ``W = (G + ridge I)^-1 Q`` from the statistics of every
stored example: ``G = H^T H`` and ``Q = H^T Y`` in float64, and per-label counts. Such a head is order
invariant: after any sequence of rounds it equals the head fitted once on everything stored, so it
forgets nothing a joint fit would keep, and a round of 20 examples of a new intent is an update of two
matrices and one Cholesky solve.

- **Statistics.** :class:`StatisticsCache` keeps ``G``, ``Q`` and the multiset of examples they cover,
  under one encoder (a fingerprint of its weights) and one lift. A round syncs them to the examples it
  is given (the buffer, the seed data and its new examples): what is new is added, what left the buffer
  is subtracted, so the statistics are always exactly those of the stored examples. A process that
  starts cold, or an encoder that changed, rebuilds them from the stored examples (the embeddings of
  texts are cached per encoder, so an encoder that did not change is never run twice over a text).
- **Held-out choices.** One stored text in :data:`FOLDS` (by a stable hash) is the held-out fold: when
  statistics are rebuilt after the encoder changed, or the live head is not closed-form yet, the ridge
  regulariser is chosen on it (accuracy of the head solved on the other folds, one eigendecomposition
  for the whole grid), then the temperature that scales the logits (held-out log loss). Both are stored
  in the head and carried across rounds until the encoder changes again.
- **Class imbalance.** With ``bias_correction=logit-adjust`` the head's bias is ``-tau log`` of each
  label's share of the stored examples (post-hoc logit adjustment, Menon et al. 2021, their generalised
  form with ``tau``): a label with 20 examples beside labels with 100 is not answered less for having
  fewer. ``tau`` (``ONLINE_HEAD_ADJUST_TAU``, 1.5) is above the Bayes choice of 1 because a ridge head
  under-scores a label with few examples beyond its prior: its column of ``Q`` is small and the
  regulariser shrinks it most (the small-round table of docs/benchmarks.md: 1.0 missed 2 of 240 texts
  of new intents, 1.5 none). With ``head_balance=reweight`` a rare label's examples also weigh more in
  the solve (:func:`rare_labels_weighted`); the bias still counts its examples as they are.
- **The encoder's clock.** Every ``encoder_every``-th round (0: never) first fine-tunes the encoder with
  the usual recipe (:func:`online.learning.step.learn`: rehearsal, distillation, probe, logit adjustment),
  then rebuilds the statistics exactly under the new encoder and solves the head on them.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from online.engines import torch_thread_count
from online.examples import Example
from online.learning.fit import Progress, embeddings
from online.model import LiftedHead, TextClassifier, encoder_fingerprint, resolve_device
from online.reports import HeadInfo

log = logging.getLogger("online.learning.closed_form")

HEAD_ROUND = "closed-form"  # a round's mode (manifest) when it solved the head on the live encoder
FOLDS = 5  # one stored text in FOLDS is held out to choose the regulariser and the temperature
RIDGE_GRID = tuple(float(10**k) for k in np.arange(-1.0, 5.01, 0.5))  # G's diagonal grows as n / 2
TEMPERATURE_GRID = tuple(float(t) for t in np.geomspace(1.0, 200.0, 41))
CHUNK = 2048  # rows lifted at a time while statistics are built (a 2048 x width float64 block)


def held_out(text: str) -> bool:
    """Whether a text is in the held-out fold: stable across processes, rounds and Python versions."""
    return int(hashlib.sha1(f"fold:{text}".encode()).hexdigest()[:8], 16) % FOLDS == 0


def lift_fingerprint(head: LiftedHead) -> str:
    return hashlib.blake2b(head.lift.detach().cpu().float().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def lifted(x: np.ndarray, lift: np.ndarray) -> np.ndarray:
    """``relu(lift @ x / |x|)`` row by row, in float64: what :meth:`LiftedHead.lifted` computes."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.maximum(x @ lift.T, 0.0)


class FeatureCache:
    """Sentence embeddings of texts under the latest encoder seen (a new encoder empties it)."""

    def __init__(self) -> None:
        self.fingerprint: str | None = None
        self._row: dict[str, int] = {}
        self._x = np.empty((0, 0), dtype=np.float32)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return self._n * (self._x.shape[1] if self._n else 0) * 4

    def get(
        self, model: TextClassifier, fingerprint: str, texts: Sequence[str], max_seq_len: int, device
    ) -> np.ndarray:
        """The embeddings of ``texts`` (rows in order), computing those not cached yet."""
        if fingerprint != self.fingerprint:
            self.fingerprint, self._row, self._n = fingerprint, {}, 0
            self._x = np.empty((0, 0), dtype=np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._row]
        if missing:
            x = embeddings(model, missing, max_seq_len=max_seq_len, device=device).cpu().numpy().astype(np.float32)
            if self._x.shape[0] < self._n + len(x) or self._x.shape[1] != x.shape[1]:
                grown = np.empty((max(2 * self._x.shape[0], self._n + len(x), 1024), x.shape[1]), dtype=np.float32)
                if self._n:
                    grown[: self._n] = self._x[: self._n]
                self._x = grown
            self._x[self._n : self._n + len(x)] = x
            for i, t in enumerate(missing):
                self._row[t] = self._n + i
            self._n += len(x)
        return self._x[[self._row[t] for t in texts]]


@dataclass
class Statistics:
    """``G = H^T H``, ``Q = H^T Y`` (float64) and per-label counts of a multiset of examples, under one
    encoder and one lift. Memory: ``width^2`` float64 (128 MiB at width 4096) and ``width x labels``."""

    key: tuple[str, str]  # (encoder fingerprint, lift fingerprint)
    labels: list[str]
    gram: np.ndarray  # (width, width)
    cross: np.ndarray  # (width, labels)
    counts: np.ndarray  # (labels,)
    examples: Counter = field(default_factory=Counter)

    @classmethod
    def empty(cls, key: tuple[str, str], width: int) -> Statistics:
        return cls(key, [], np.zeros((width, width)), np.zeros((width, 0)), np.zeros(0))

    @property
    def nbytes(self) -> int:
        return self.gram.nbytes + self.cross.nbytes + self.counts.nbytes

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def columns(self, labels: Sequence[str]) -> list[int]:
        """The columns of ``labels`` in ``Q`` and the counts (a label not seen yet gets a zero column)."""
        new = [lab for lab in dict.fromkeys(labels) if lab not in self.labels]
        if new:
            self.labels.extend(new)
            self.cross = np.concatenate([self.cross, np.zeros((self.cross.shape[0], len(new)))], axis=1)
            self.counts = np.concatenate([self.counts, np.zeros(len(new))])
        index = {lab: i for i, lab in enumerate(self.labels)}
        return [index[lab] for lab in labels]

    def add(self, h: np.ndarray, labels: Sequence[str], sign: float = 1.0) -> None:
        """Add (``sign`` -1: subtract) the lifted rows ``h`` of examples with ``labels``."""
        cols = np.asarray(self.columns(labels), dtype=np.int64)
        self.gram += sign * (h.T @ h)
        self.cross += sign * _sum_by_column(h, cols, len(self.labels))
        np.add.at(self.counts, cols, sign)

    def total(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(G, Q, counts), ``Q`` and counts in the order of ``labels`` (zero where a label has no example)."""
        cols = self.columns(labels)
        return self.gram, self.cross[:, cols], self.counts[cols]


def _sum_by_column(h: np.ndarray, cols: np.ndarray, n_labels: int) -> np.ndarray:
    """``H^T Y`` for one-hot ``Y`` with ones at ``cols``: the rows of ``h`` summed per label."""
    y = np.zeros((len(h), n_labels))
    y[np.arange(len(h)), cols] = 1.0
    return h.T @ y


@dataclass
class SyncReport:
    rebuilt: bool
    added: int
    removed: int
    embedded: int  # texts run through the encoder (not cached yet)
    seconds: float


class StatisticsCache:
    """The trainer's statistics and embeddings, kept between rounds (one object per process)."""

    def __init__(self) -> None:
        self.features = FeatureCache()
        self.stats: Statistics | None = None

    @property
    def nbytes(self) -> int:
        return (self.stats.nbytes if self.stats else 0) + self.features.nbytes

    def sync(
        self,
        model: TextClassifier,
        examples: Sequence[Example],
        max_seq_len: int,
        device,
        fingerprint: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[Statistics, SyncReport]:
        """The statistics of exactly ``examples`` (a multiset) under ``model``'s encoder and lift.
        ``progress`` is called (with 0: nothing trained yet) after each chunk embedded: a stop request
        raised from it ends a build of every stored example within a chunk, not after it."""
        started = time.perf_counter()
        head = model.head
        if not isinstance(head, LiftedHead):
            raise TypeError("the statistics are those of a lifted head: call with_lifted_head first")
        key = (fingerprint or encoder_fingerprint(model), lift_fingerprint(head))
        target = Counter(examples)
        rebuilt = self.stats is None or self.stats.key != key
        if rebuilt:
            self.stats = Statistics.empty(key, head.width)
        stats = self.stats
        added = target - stats.examples
        removed = stats.examples - target
        before = len(self.features) if self.features.fingerprint == key[0] else 0
        lift = head.lift.detach().cpu().double().numpy()
        for change, sign in ((added, 1.0), (removed, -1.0)):
            items = list(change.elements())
            for start in range(0, len(items), CHUNK):
                chunk = items[start : start + CHUNK]
                texts = [t for t, _ in chunk]
                x = self.features.get(model, key[0], texts, max_seq_len, device)
                stats.add(lifted(x, lift), [lab for _, lab in chunk], sign)
                # what the sums hold, chunk by chunk: a sync stopped here leaves them consistent
                (stats.examples.update if sign > 0 else stats.examples.subtract)(chunk)
                if progress:
                    progress(0)
        stats.examples = target  # the same multiset, without subtract's zero counts
        embedded = len(self.features) - before
        return stats, SyncReport(
            rebuilt, sum(added.values()), sum(removed.values()), embedded, time.perf_counter() - started
        )

    def held_out_features(self, model: TextClassifier, examples: Sequence[Example], max_seq_len: int, device):
        """Lifted features and labels of the held-out fold of ``examples`` (all embedded by a sync)."""
        chosen = [ex for ex in examples if held_out(ex[0])]
        fp = self.stats.key[0] if self.stats else encoder_fingerprint(model)
        x = self.features.get(model, fp, [t for t, _ in chosen], max_seq_len, device)
        return lifted(x, model.head.lift.detach().cpu().double().numpy()), [lab for _, lab in chosen]


class UncoveredLabels(ValueError):
    """Labels of the model with no stored example: a head solved on the stored examples would lose them
    (e.g. an imported version 1 whose training data is not rehearsed: ONLINE_SEED_DATA unset)."""

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__(f"no stored example of {len(labels)} labels (e.g. {', '.join(list(labels)[:3])})")
        self.labels = list(labels)


def uncovered(model: TextClassifier, examples: Sequence[Example]) -> list[str]:
    """The model's labels that no example of ``examples`` carries."""
    have = {lab for _, lab in examples}
    return [lab for lab in model.labels if lab not in have]


RARE = 0.5  # a label with fewer stored examples than this share of the median label's is weighted up


def rare_labels_weighted(
    stats: Statistics, cache: StatisticsCache, model: TextClassifier, max_seq_len: int, device
) -> tuple[np.ndarray, np.ndarray]:
    """(G, Q) of a weighted ridge in which each example of a rare label (fewer than :data:`RARE`
    of the median label's count) weighs ``median / count``: the label then pulls on the solve as a
    typical one does, so 20 examples of a new intent beside 100 of each old one win their own texts.
    Exact, from the statistics plus the rare labels' own rows (a few dozen: their embeddings are cached),
    and still a function of the stored multiset only (order invariant)."""
    gram, cross, counts = stats.total(model.labels)
    present = counts[counts > 0]
    target = float(np.median(present)) if len(present) else 0.0
    rare = [i for i, c in enumerate(counts) if 0 < c < RARE * target]
    if not rare:
        return gram, cross
    gram, cross = gram.copy(), cross.copy()
    lift = model.head.lift.detach().cpu().double().numpy()
    for i in rare:
        label = model.labels[i]
        texts = [t for (t, lab), k in stats.examples.items() if lab == label for _ in range(k)]
        h = lifted(cache.features.get(model, stats.key[0], texts, max_seq_len, device), lift)
        extra = target / counts[i] - 1.0
        gram += extra * (h.T @ h)
        cross[:, i] += extra * h.sum(0)
    return gram, cross


BIAS_FLOOR = 0.2  # in the bias a label counts at least this share of the median label's examples


def log_prior_bias(counts: np.ndarray) -> np.ndarray:
    """``-log`` of each label's share, a label counted as at least :data:`BIAS_FLOOR` of the median
    label's examples (one without examples as the rarest present one). The floor: the bias makes up for
    the ridge shrinking a label's small column of Q, and below a fifth of the median it outgrows what
    the label's own examples say: 3 examples of a new intent beside 100 of each old one took 63 of 2,250
    golden texts at tau 1.5, where 20 examples took 8 (20 of 100 is not floored: docs/benchmarks.md's
    small rounds are unchanged by it)."""
    counts = np.asarray(counts, dtype=np.float64).copy()
    present = counts[counts > 0]
    counts[counts <= 0] = present.min() if len(present) else 1.0
    if len(present):
        counts = np.maximum(counts, BIAS_FLOOR * float(np.median(present)))
    return -np.log(counts / counts.sum())


def ridge_solve(gram: np.ndarray, cross: np.ndarray, ridge: float) -> np.ndarray:
    """``(G + ridge I)^-1 Q`` by a Cholesky factorisation in float64 (``G`` is positive semi-definite,
    so ``G + ridge I`` is positive definite for any ``ridge`` > 0); an eigendecomposition if rounding
    made it fail."""
    a = torch.from_numpy(gram) + ridge * torch.eye(len(gram), dtype=torch.float64)
    q = torch.from_numpy(np.ascontiguousarray(cross))
    with torch_thread_count(1):  # see _eigh
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return torch.cholesky_solve(q, factor).numpy()
    s, v = _eigh(gram)
    return v @ ((v.T @ cross) / np.maximum(s + ridge, ridge)[:, None])


def _eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of ``G`` on one thread: the tridiagonal reduction is thousands of
    small parallel steps, each a barrier, and with more threads than free cores (a trainer beside an API
    on 2 cores) one 4096-wide decomposition took over 10 minutes instead of ~15 s (measured)."""
    with torch_thread_count(1):
        s, v = torch.linalg.eigh(torch.from_numpy(gram))
    return s.numpy(), v.numpy()


def _nll(scores: np.ndarray, y: np.ndarray) -> float:
    scores = scores - scores.max(1, keepdims=True)
    logz = np.log(np.exp(scores).sum(1))
    return float((logz - scores[np.arange(len(y)), y]).mean())


@dataclass(frozen=True)
class Choice:
    ridge: float
    temperature: float
    held_out: int  # held-out examples it was chosen on
    accuracy: float  # held-out accuracy at the chosen ridge (nan without a held-out fold)


def choose(stats: Statistics, labels: Sequence[str], h_out: np.ndarray, y_out: Sequence[str], adjust: float) -> Choice:
    """The ridge regulariser (held-out accuracy of the head solved on the other folds: the statistics
    less the held-out rows; ties go to the stronger regulariser) and the temperature (held-out log loss,
    with the bias of logit adjustment of strength ``adjust``, 0: none)."""
    gram, cross, counts = stats.total(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    y_all = np.array([index[lab] for lab in y_out], dtype=np.int64)
    out_counts = np.bincount(y_all, minlength=len(labels)).astype(np.float64)
    fit_counts = counts - out_counts
    # held-out texts of labels with no other example cannot be answered by a head fitted without them
    keep = np.flatnonzero(fit_counts[y_all] > 0)
    if len(keep) < 2:
        return Choice(ridge=100.0, temperature=10.0, held_out=len(keep), accuracy=float("nan"))
    gram = gram - h_out.T @ h_out
    cross = cross - _sum_by_column(h_out, y_all, len(labels))
    h_out, y = h_out[keep], y_all[keep]
    bias = adjust * log_prior_bias(fit_counts)
    s, v = _eigh(gram)
    s = np.maximum(s, 0.0)
    z, p = v.T @ cross, h_out @ v
    best: tuple[float, float, np.ndarray] | None = None
    for ridge in RIDGE_GRID:
        scores = p @ (z / (s + ridge)[:, None])
        acc = float((scores.argmax(1) == y).mean())  # the logit scale is chosen next: plain argmax here
        if best is None or acc >= best[0]:
            best = (acc, ridge, scores)
    acc, ridge, scores = best
    temperature = min(TEMPERATURE_GRID, key=lambda t: _nll(t * scores + bias, y))
    return Choice(ridge=ridge, temperature=float(temperature), held_out=len(keep), accuracy=acc)


def with_lifted_head(model: TextClassifier, width: int, seed: int) -> TextClassifier:
    """``model`` (changed in place) with a lifted head of ``width`` drawn from ``seed`` unless it has one
    of that width already (its lift is kept: the statistics stay valid)."""
    head = model.head
    if isinstance(head, LiftedHead) and head.width == width:
        return model
    model.head = LiftedHead(head.in_features, width, len(model.labels), seed=seed).to(head.weight.device)
    return model


@dataclass(frozen=True)
class HeadSolve:
    choice: Choice
    chosen_now: bool  # False: the live head's ridge and temperature were carried
    sync: SyncReport
    solve_s: float
    examples: int
    stats_bytes: int  # G, Q and counts
    features_bytes: int  # the cached embeddings of the stored examples
    mean_loss: float
    encoder: str = ""  # fingerprint of the encoder the statistics were built under
    probe_fit: float = float("nan")  # share of the probe examples (a round's new ones) the head answers right


def solve_head(
    model: TextClassifier,
    examples: Sequence[Example],
    cache: StatisticsCache,
    *,
    width: int,
    seed: int,
    adjust: float,
    max_seq_len: int,
    device,
    carry: LiftedHead | None = None,
    probe: Sequence[Example] = (),
    reweight: bool = False,
    progress: Progress | None = None,
) -> HeadSolve:
    """Solve ``model``'s head in place on the statistics of ``examples``: a lifted head, every label of
    the examples in it. ``carry``: the live head whose ridge and temperature are kept (``None``: choose
    them on the held-out fold). ``probe``: examples whose mean log loss is reported (the round's new ones).
    ``adjust``: the strength ``tau`` of logit adjustment (0: no bias); ``reweight``: rare labels weigh
    as the median one in the solve."""
    model.grow(sorted({lab for _, lab in examples}))
    with_lifted_head(model, width, seed)
    head: LiftedHead = model.head  # type: ignore[assignment]
    if carry is not None and isinstance(carry, LiftedHead) and carry.width == head.width:
        head.lift.copy_(carry.lift)
    stats, sync = cache.sync(model, examples, max_seq_len, device, progress=progress)
    started = time.perf_counter()
    if carry is None or float(carry.ridge) <= 0:
        h_out, y_out = cache.held_out_features(model, list(stats.examples.elements()), max_seq_len, device)
        choice, chosen_now = choose(stats, model.labels, h_out, y_out, adjust), True
    else:
        choice, chosen_now = Choice(float(carry.ridge), float(carry.temperature), 0, float("nan")), False
    gram, cross, counts = stats.total(model.labels)
    missing = [lab for lab, c in zip(model.labels, counts) if c <= 0]
    if missing:
        raise UncoveredLabels(missing)
    if reweight:
        gram, cross = rare_labels_weighted(stats, cache, model, max_seq_len, device)
    w = ridge_solve(gram, cross, choice.ridge)
    bias = adjust * log_prior_bias(counts)  # the shares as stored: reweighting does not hide a rare label
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(choice.temperature * w.T).to(head.weight.dtype))
        head.bias.copy_(torch.from_numpy(bias).to(head.bias.dtype))
        head.ridge.fill_(choice.ridge)
        head.temperature.fill_(choice.temperature)
    solve_s = time.perf_counter() - started
    loss = fit = float("nan")
    if probe:
        x = cache.features.get(model, stats.key[0], [t for t, _ in probe], max_seq_len, device)
        index = {lab: i for i, lab in enumerate(model.labels)}
        scores = choice.temperature * (lifted(x, head.lift.detach().cpu().double().numpy()) @ w) + bias
        y = np.array([index[lab] for _, lab in probe])
        loss, fit = _nll(scores, y), float(np.mean(scores.argmax(axis=1) == y))
    return HeadSolve(
        choice, chosen_now, sync, solve_s, stats.n, stats.nbytes, cache.features.nbytes, loss, encoder=stats.key[0],
        probe_fit=fit,
    )  # fmt: skip


def closed_form_round(
    live: TextClassifier,
    new: Sequence[Example],
    stored: Sequence[Example],
    rehearsal: Sequence[Example],
    cfg,  # online.learning.step.LearnConfig (imported lazily: step imports this module)
    cache: StatisticsCache,
    *,
    tune_encoder: bool,
    progress: Progress | None = None,
):
    """One round of the closed-form head: ``live`` (never modified) -> a candidate whose head is solved
    on the statistics of ``stored`` + ``new``; with ``tune_encoder`` the encoder is first fine-tuned on
    ``new`` + ``rehearsal`` by :func:`online.learning.step.learn` (the SGD round's recipe)."""
    from online.learning.step import LearnResult, learn

    started = time.perf_counter()
    device = resolve_device(cfg.device)
    examples = list(stored) + list(new)
    encoder_s = 0.0
    if tune_encoder:
        start = live
        if cfg.exact_probe:
            # the probe of LP-FT, exact: the head solved on every stored example and the new ones under
            # the live encoder, so the fine-tuning starts from the best head the live features allow
            start = copy.deepcopy(live).cpu()
            solve_head(
                start, examples, cache, width=cfg.head_width, seed=cfg.seed,
                adjust=cfg.head_tau, max_seq_len=cfg.max_seq_len, device=device,
                carry=live.head if isinstance(live.head, LiftedHead) else None, reweight=cfg.head_balance == "reweight",
            )  # fmt: skip
        tuned = learn(start, new, rehearsal, cfg.but(probe_first=cfg.probe_first and not cfg.exact_probe), progress)
        model, encoder_s = tuned.model, tuned.duration_s
        carry = None  # a new encoder: the regulariser and the temperature are chosen again
    else:
        model = copy.deepcopy(live).cpu()
        carry = live.head if isinstance(live.head, LiftedHead) else None
    added = [lab for lab in dict.fromkeys(lab for _, lab in examples) if lab not in live.labels]
    solved = solve_head(
        model, examples, cache, width=cfg.head_width, seed=cfg.seed, adjust=cfg.head_tau,
        max_seq_len=cfg.max_seq_len, device=device, carry=carry, probe=new, reweight=cfg.head_balance == "reweight",
        progress=progress,
    )  # fmt: skip
    if progress and not tune_encoder:
        progress(len(new))
    model.cpu().eval()
    log.info(
        "closed-form head: %d stored examples (%s: +%d -%d, %d embedded, %.1f s), ridge %g, temperature %.3g "
        "(%s), solve %.1f s, statistics %.0f MB, new examples fit %.2f%s",
        solved.examples, "rebuilt" if solved.sync.rebuilt else "synced", solved.sync.added, solved.sync.removed,
        solved.sync.embedded, solved.sync.seconds, solved.choice.ridge, solved.choice.temperature,
        f"chosen on {solved.choice.held_out} held out" if solved.chosen_now else "carried", solved.solve_s,
        (solved.stats_bytes + solved.features_bytes) / 2**20, solved.probe_fit, f", encoder tuned in {encoder_s:.1f} s" if tune_encoder else "",
    )  # fmt: skip
    return LearnResult(
        model=model,
        added_labels=added,
        examples=len(examples),
        mean_loss=solved.mean_loss,
        duration_s=time.perf_counter() - started,
        encoder_tuned=tune_encoder,
        encoder_s=encoder_s,
        head=solved,
    )


def head_info(
    model: TextClassifier, solve: HeadSolve | None, *, encoder_tuned: bool, encoder_of: int | None
) -> HeadInfo:
    """What a version's manifest says of its head and encoder. ``encoder_of``: the version whose round
    last changed the encoder (``None``: this version's own round did)."""
    head = model.head
    if not isinstance(head, LiftedHead) or solve is None:
        return HeadInfo(mode="sgd", encoder_tuned=encoder_tuned, encoder_of=encoder_of)
    return HeadInfo(
        mode="closed-form",
        width=head.width,
        ridge=solve.choice.ridge,
        temperature=solve.choice.temperature,
        ridge_chosen=solve.chosen_now,
        examples=solve.examples,
        new_fit=None if np.isnan(solve.probe_fit) else round(solve.probe_fit, 4),
        encoder_tuned=encoder_tuned,
        encoder_of=encoder_of,
        encoder_sha=solve.encoder or None,
    )


def encoder_due(head_rounds_since_encoder: int, encoder_every: int) -> bool:
    """Whether this round tunes the encoder: every ``encoder_every``-th round (0: never)."""
    return encoder_every > 0 and head_rounds_since_encoder + 1 >= encoder_every


def encoder_needed(solved: HeadSolve | None, cfg) -> bool:
    """Whether a head round's solve shows the live encoder cannot carry what this round teaches: its head
    answers fewer than ``cfg.encoder_fit_min`` of the round's own new examples with their label (a ridge
    head on features that separate them fits them almost all: 1.0 on CLINC150's small rounds). Only
    where encoder rounds are allowed (``encoder_every`` > 0)."""
    if solved is None or cfg.encoder_every <= 0 or np.isnan(solved.probe_fit):
        return False
    return solved.probe_fit < cfg.encoder_fit_min


__all__ = [
    "FOLDS",
    "FeatureCache",
    "HeadSolve",
    "Statistics",
    "StatisticsCache",
    "UncoveredLabels",
    "choose",
    "closed_form_round",
    "encoder_due",
    "encoder_fingerprint",
    "encoder_needed",
    "head_info",
    "held_out",
    "lifted",
    "ridge_solve",
    "solve_head",
    "uncovered",
    "with_lifted_head",
]
