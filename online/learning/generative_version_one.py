"""Version 1 of a generative deployment (``ONLINE_TASK=generate``): the base model itself, released through
the one release pipeline like any version (judged: the baseline; published; promoted)."""

from __future__ import annotations

from collections.abc import Callable

from online.generative import GenerativeLM, default_generative_base
from online.lifecycle.generative import base_report
from online.lifecycle.registry import Manifest, ModelRegistry
from online.lifecycle.release import JudgedVersion, release
from online.reports import ImportStats
from online.settings import Settings


def generative_base(settings: Settings) -> str:
    """The configured base (a directory or a .gguf file, made absolute), else SmolLM2 from its wheel."""
    from pathlib import Path

    if settings.generate_base_model:
        return str(Path(settings.generate_base_model).resolve())
    return default_generative_base()


def release_base(settings: Settings, registry: ModelRegistry, fence: Callable[[], None] | None = None) -> Manifest:
    """Publish the base model as a version (no adapter) and make it live."""
    base = generative_base(settings)
    released = release(
        registry,
        settings,
        JudgedVersion(GenerativeLM(base), base_report(base), None, [], [], [], {}),
        ImportStats(source=base, labels=0),
        reason="version 1: the base model",
        fence=fence,
    )
    return released.manifest
