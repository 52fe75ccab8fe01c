"""Fixtures only (shared helpers are in tests/helpers.py): real Tansu and Redis on free loopback ports
(stopped by PID), a tiny random encoder, per-test settings."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from online.model import default_base_model
from online.settings import Settings
from services.embedded import Server, start_redis, start_tansu
from tests.helpers import DATA_DIR


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Server:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tansu_server(tmp_path_factory) -> Server:
    server = start_tansu(tmp_path_factory.mktemp("tansu"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer: fast, real code paths."""
    path = tmp_path_factory.mktemp("tiny-encoder")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)  # the same tiny encoder in every session: learning tests are reproducible
    BertModel(config).save_pretrained(path)
    real = Path(default_base_model())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(real / name, path / name)
    return str(path)


@pytest.fixture
def settings(tmp_path, tiny_base, redis_server) -> Settings:
    """Settings for one test: tiny encoder, own key prefix in the shared Redis, own model store."""
    return Settings(
        _env_file=None,
        state_dir=tmp_path / "state",
        model_store=tmp_path / "models",
        data_dir=DATA_DIR,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        base_model=tiny_base,
        seed_domains=1,
        seed_per_label=20,
        seed_epochs=2,
        head_learning_rate=1e-2,
        learning_rate=1e-3,
        precision="fp32",
        engine="torch",  # exporting the int8 artifact costs ~4 s a publish: tests/serving/test_int8_engine.py covers it
        model_poll_s=0.5,
        head_width=256,  # the closed-form head's lift: 4096 (the default) solves in seconds, 256 in milliseconds
    )


@pytest.fixture
def kafka_settings(settings, tansu_server) -> Settings:
    """``settings`` plus the session broker, with topics and group of this test only."""
    tag = settings.key_prefix
    return settings.model_copy(
        update={
            "kafka_bootstrap": f"127.0.0.1:{tansu_server.port}",
            "feedback_topic": f"{tag}.feedback",
            "dlq_topic": f"{tag}.feedback.dlq",
            "consumer_group": f"{tag}-group",
            "feedback_partitions": 3,
        }
    )
