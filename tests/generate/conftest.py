"""Fixtures of the generative family's tests: a tiny random Llama (built once per session) and settings
that serve it as ``ONLINE_TASK=generate``."""

from __future__ import annotations

import pytest

from tests.generate.tiny import build_tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def gen_settings(settings, tiny_lm):
    return settings.model_copy(
        update={"task": "generate", "generate_base_model": tiny_lm, "generate_max_new_tokens": 64, "device": "cpu"}
    )


@pytest.fixture
def gen_kafka_settings(kafka_settings, tiny_lm):
    return kafka_settings.model_copy(
        update={"task": "generate", "generate_base_model": tiny_lm, "generate_max_new_tokens": 64, "device": "cpu"}
    )
