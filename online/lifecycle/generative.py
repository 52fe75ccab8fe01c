"""The generative family's place in the release pipeline: its packager and the judgement of its base.

A generative version's weights are its LoRA adapter (or nothing, for the base): there is no int8
artifact or drift reference to build beside them yet, so its package is empty and the pipeline publishes
and places it like any version (``online.lifecycle.release``). Importing this module registers the packager.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from online.lifecycle.package import Package
from online.lifecycle.release import JudgedVersion, register_packager
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
