"""Rehearsal selection strategies: which remembered examples are replayed beside new feedback.

Storage (what is remembered: the Redis replay buffer and the seed data) is one concern; selection (which
of those a round replays) is another, and this module only does the second, the way Avalanche keeps
strategies apart from storage policies. Every strategy takes the pool of remembered examples and how
many to pick, and returns a list of examples; :data:`STRATEGIES` names them for settings and benchmarks.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from online.examples import Example, by_label, class_balanced, class_quotas

Embed = Callable[[list[str]], np.ndarray]  # texts -> (n, d) float32 embeddings of the live model


class Strategy(Protocol):
    name: str
    needs_embeddings: bool

    def select(
        self,
        pool: Sequence[Example],
        k: int,
        rng: random.Random,
        embed: Embed | None = None,
        new: Sequence[Example] = (),
    ) -> list[Example]:
        """``k`` examples of ``pool`` to replay beside ``new`` (the round's new feedback, which some
        strategies aim at: the remembered examples it would interfere with)."""
        ...


def _unit_embeddings(embed: Embed | None, texts: list[str], strategy: str) -> np.ndarray:
    """The live model's embeddings of ``texts``, L2-normalised for cosine search with faiss."""
    import faiss

    if embed is None:
        raise ValueError(f"the {strategy} strategy needs an embedding function")
    x = np.ascontiguousarray(embed(texts), dtype=np.float32)
    faiss.normalize_L2(x)
    return x


class Reservoir:
    """Uniform over the pool: what a reservoir-sampled memory replays. Big labels get more replay."""

    name = "reservoir"
    needs_embeddings = False

    def select(
        self,
        pool: Sequence[Example],
        k: int,
        rng: random.Random,
        embed: Embed | None = None,
        new: Sequence[Example] = (),
    ) -> list[Example]:
        return rng.sample(list(pool), min(k, len(pool)))


class ClassBalanced:
    """The same number of examples from every remembered label, random within a label."""

    name = "balanced"
    needs_embeddings = False

    def select(
        self,
        pool: Sequence[Example],
        k: int,
        rng: random.Random,
        embed: Embed | None = None,
        new: Sequence[Example] = (),
    ) -> list[Example]:
        return class_balanced(pool, k, rng)


class Diverse:
    """Class-balanced, and within a label the examples that cover its region of embedding space.

    Per label, faiss k-means with as many centroids as the label's quota, then the example nearest to
    each centroid: paraphrases of one question do not crowd out the rest of the label. Labels with
    many examples are first cut to ``candidates_per_pick`` random candidates per pick, so the cost of
    embedding stays proportional to what is selected, not to the size of the buffer.
    """

    name = "diverse"
    needs_embeddings = True

    def __init__(self, candidates_per_pick: int = 4, niter: int = 10) -> None:
        self.candidates_per_pick = candidates_per_pick
        self.niter = niter

    def select(
        self,
        pool: Sequence[Example],
        k: int,
        rng: random.Random,
        embed: Embed | None = None,
        new: Sequence[Example] = (),
    ) -> list[Example]:
        import faiss

        groups = by_label(pool)
        quotas = class_quotas({lab: len(exs) for lab, exs in groups.items()}, k)
        chosen: list[Example] = []
        candidates: dict[str, list[Example]] = {}
        for lab, exs in sorted(groups.items()):
            q = quotas[lab]
            if q == 0:
                continue
            if q >= len(exs):
                chosen.extend(exs)
            else:
                candidates[lab] = rng.sample(exs, min(len(exs), q * self.candidates_per_pick))
        if not candidates:
            return chosen
        vectors = _unit_embeddings(embed, [t for exs in candidates.values() for t, _ in exs], self.name)
        start = 0
        for lab, exs in candidates.items():
            x = vectors[start : start + len(exs)]
            start += len(exs)
            q = quotas[lab]
            km = faiss.Kmeans(x.shape[1], q, niter=self.niter, seed=rng.randrange(1 << 30), min_points_per_centroid=1)
            km.train(x)
            index = faiss.IndexFlatL2(x.shape[1])
            index.add(x)
            # The nearest distinct example to each centroid (a few neighbours each, in case two share one).
            _, nn = index.search(km.centroids, min(len(exs), 4))
            picked: list[int] = []
            for row in nn:
                for i in row:
                    if i >= 0 and i not in picked:
                        picked.append(int(i))
                        break
            rest = [i for i in range(len(exs)) if i not in picked]
            picked += rng.sample(rest, q - len(picked)) if len(picked) < q else []
            chosen.extend(exs[i] for i in picked[:q])
        return chosen


class Interfered:
    """Half class-balanced, half aimed at the old labels the new data sits closest to.

    Each new example's nearest remembered neighbours (faiss, live model's embedding space) name the old
    labels a round is most likely to overwrite (the idea of maximally interfered retrieval); the second
    half of the picks goes to those labels in proportion, choosing their examples nearest the new data.
    """

    name = "interfered"
    needs_embeddings = True

    def __init__(self, neighbours: int = 5, focus: float = 0.5, candidates_per_pick: int = 8) -> None:
        self.neighbours = neighbours
        self.focus = focus
        self.candidates_per_pick = candidates_per_pick

    def select(
        self,
        pool: Sequence[Example],
        k: int,
        rng: random.Random,
        embed: Embed | None = None,
        new: Sequence[Example] = (),
    ) -> list[Example]:
        import faiss

        aimed = int(k * self.focus) if new else 0
        base = ClassBalanced().select(pool, k - aimed, rng)
        if aimed == 0:
            return base
        chosen = {id(ex) for ex in base}
        rest = [ex for ex in pool if id(ex) not in chosen]
        if not rest:
            return base
        if len(rest) > self.candidates_per_pick * aimed:  # embedding cost follows the picks, not the buffer
            rest = rng.sample(rest, self.candidates_per_pick * aimed)
        x = _unit_embeddings(embed, [t for t, _ in rest], self.name)
        q = _unit_embeddings(embed, [t for t, _ in new], self.name)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        _, nn = index.search(q, min(self.neighbours, len(rest)))
        hits: dict[int, int] = defaultdict(int)  # pool row -> how many new examples it is near
        for row in nn:
            for i in row:
                if i >= 0:
                    hits[int(i)] += 1
        ranked = sorted(hits, key=lambda i: -hits[i])[:aimed]
        return base + [rest[i] for i in ranked]


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "balanced": ClassBalanced,
    "reservoir": Reservoir,
    "diverse": Diverse,
    "interfered": Interfered,
}


def strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown rehearsal strategy {name!r}: choose one of {sorted(STRATEGIES)}") from None
