"""The core types every layer shares: a labelled example, a remembered sample, class-balanced picks.

They sit on the ground floor so that the buffer, rehearsal, the drift reference and the release
pipeline can all speak of examples without importing one another.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

Example = tuple[str, str]  # (text, label)


@dataclass(frozen=True)
class Sample:
    sid: str
    text: str
    label: str
    count: int
    seq: int
    source: str
    released: bool = False  # an operator released it from quarantine: the screen leaves it alone
    trusted: str = ""  # "admin"/"key": sent with the admin token or a trusted feedback key (``online.credentials``)
    origin: str = ""  # what independence rules count for its first sender (a key, a client address)


def class_quotas(counts: dict[str, int], k: int) -> dict[str, int]:
    """Split ``k`` picks evenly over labels; a label with fewer examples passes its share on."""
    quotas = dict.fromkeys(counts, 0)
    left = min(k, sum(counts.values()))
    open_labels = sorted(counts)
    while left > 0 and open_labels:
        share = max(left // len(open_labels), 1)
        for label in list(open_labels):
            take = min(share, counts[label] - quotas[label], left)
            quotas[label] += take
            left -= take
            if quotas[label] >= counts[label]:
                open_labels.remove(label)
            if left == 0:
                break
    return quotas


def by_label(pool: Sequence[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in pool:
        groups[ex[1]].append(ex)
    return groups


def class_balanced(pool: Sequence[Example], k: int, rng: random.Random) -> list[Example]:
    """The same number of examples from every label, random within a label (the drift reference's
    sample and the ``balanced`` rehearsal strategy)."""
    groups = by_label(pool)
    quotas = class_quotas({lab: len(exs) for lab, exs in groups.items()}, k)
    return [ex for lab, exs in sorted(groups.items()) for ex in rng.sample(exs, quotas[lab])]
