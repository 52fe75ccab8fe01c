"""What a model version is to the lifecycle: a small protocol, not the concrete classifier.

The registry stores and loads, and the release pipeline packages, any model family through
:class:`VersionModel` and the family's :class:`ModelSpec` (what its manifest records to rebuild it).
A family registers its loader here once (``online.model`` registers ``classifier``); a second family,
such as a small generative LM, slots in by registering its own, without touching the registry, the
release pipeline or the follower.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel


class ModelSpec(BaseModel):
    """Enough to rebuild a version from its weight file (the manifest's first fields)."""

    family: str = "classifier"
    labels: list[str] = []  # the output vocabulary of a classifier; empty for a family without one
    base_model: str
    pooling: str = "mean"  # a classifier's pooling; other families ignore it


class VersionModel(Protocol):
    """What the registry and the release pipeline need of the model a version holds."""

    @property
    def base_model(self) -> str: ...

    @property
    def labels(self) -> list[str]: ...

    def spec(self) -> ModelSpec:
        """What its manifest records to rebuild it."""
        ...

    def save(self, weights: Path) -> str:
        """Write the weights, return their sha256."""
        ...


Loader = Callable[[Path, ModelSpec], VersionModel]
_LOADERS: dict[str, Loader] = {}


def register_family(family: str, loader: Loader) -> None:
    """Make versions of ``family`` loadable (called once, by the module that defines the family)."""
    _LOADERS[family] = loader


def load_model(weights: Path, spec: ModelSpec) -> VersionModel:
    try:
        loader = _LOADERS[spec.family]
    except KeyError:
        raise ValueError(f"unknown model family {spec.family!r} (known: {', '.join(sorted(_LOADERS))})") from None
    return loader(weights, spec)
