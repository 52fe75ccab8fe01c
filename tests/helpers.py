"""Helpers shared by the tests (fixtures live in conftest.py).

- polling and environment: ``wait_for``, ``settings_env``, ``DATA_DIR``;
- a tiny keyword task a 2-layer random encoder learns in seconds, for tests of learning behaviour;
- the feedback consumer run in a thread, and the replay buffer it writes to.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from consumers.feedback import FeedbackConsumer
from online.examples import Example
from online.feedback.buffer import ReplayBuffer
from online.learning.fit import fit
from online.lifecycle.registry import Manifest, ModelRegistry
from online.model import TextClassifier
from online.settings import Settings
from online.wiring.stores import Stores
from services.supervisor import child_env

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clinc150"


# -- polling and environment ---------------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "",
    alive: Sequence[subprocess.Popen] = (),
) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test on timeout, or at once when a
    process of ``alive`` (the ones meant to bring the condition about) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        dead = [p for p in alive if p.poll() is not None]
        if dead:
            raise AssertionError(
                f"{' '.join(map(str, dead[0].args))} exited with {dead[0].returncode} "
                f"while waiting for {what or condition}"
            )
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see ``settings``."""
    return child_env(settings)


# -- a tiny keyword task -------------------------------------------------------------------------------------


KEYWORDS = {
    "weather": ["rain", "sunny", "forecast", "temperature", "umbrella"],
    "music": ["song", "playlist", "album", "guitar", "concert"],
    "bank": ["balance", "account", "transfer", "deposit", "mortgage"],
    "travel": ["flight", "hotel", "passport", "luggage", "airport"],
}
FILLER = ["please", "can you", "tell me", "about my", "what is", "the", "now", "today", "i want", "help with"]
OLD = ["weather", "music", "bank"]


def examples(labels: list[str], n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for label in labels:
        for _ in range(n):
            out.append((f"{rng.choice(FILLER)} {rng.choice(KEYWORDS[label])} {rng.choice(FILLER)}", label))
    return out


def write_golden(path: Path, items: list[Example]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in items))
    return path


def keyword_round_settings(settings: Settings, tmp_path: Path, **overrides) -> Settings:
    """Settings for rounds on the keyword task: its golden set (45 texts: one text is 2.2 points, hence
    the golden-drop margin), 10-epoch rounds a tiny model learns from, no latency check to speak of."""
    golden = write_golden(tmp_path / "golden.jsonl", examples(OLD, 15, seed=7))
    update = {
        "golden_path": golden,
        "train_epochs": 10,
        "rehearsal_min": 60,
        "gate_latency_ratio": 5.0,
        "gate_max_golden_drop": 0.05,
        "new_share_min": 0.0,  # 10-epoch rounds on a tiny model need no repeats
        # the keyword task is learned by fine-tuning: a tiny random encoder's frozen features do not separate
        # its labels well enough for a closed-form head (tests/learning/test_closed_form.py tests that head)
        "head": "sgd",
    }
    return settings.model_copy(update=update | overrides)


def train_v1(settings, registry: ModelRegistry, epochs: int = 10) -> tuple[TextClassifier, Manifest]:
    """Version 1 on the old labels, published and promoted with its gate baseline."""
    import torch

    from online.lifecycle.gate import Gate, GoldenSet
    from online.lifecycle.release import JudgedVersion, release
    from online.reports import SeedStats

    torch.manual_seed(0)
    model = TextClassifier.from_base(settings.base_model, OLD)
    fit(model, examples(OLD, 40, seed=1), epochs=epochs, lr=1e-3, head_lr=1e-2, seed=0)
    gate = Gate(settings, GoldenSet.for_settings(settings))
    baseline = gate.baseline(model)
    judged = JudgedVersion(  # released with the int8 artifact unless the engine is torch, and the reference
        model=model,
        report=baseline,
        parent=None,
        trained_on=examples(OLD, 40, seed=1),
        calibration=gate.golden.examples,
        golden=gate.golden.examples,
        metrics={"golden_accuracy": baseline.golden_accuracy},
    )
    manifest = release(registry, settings, judged, SeedStats(examples=80, epochs=epochs), reason="test").manifest
    return model, manifest


def live_untrained(settings: Settings, labels: tuple[str, ...] = ("a", "b")) -> int:
    """An untrained model over ``labels`` published and made live: for tests of serving, not learning."""
    registry = Stores.from_settings(settings).registry
    version = registry.publish(TextClassifier.from_base(settings.base_model, list(labels)), parent=None).version
    registry.promote(version)
    return version


@contextmanager
def served_app(settings: Settings) -> Iterator:
    """A ``TestClient`` of the API on ``settings``, once it serves a model."""
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").json()["ready"], what="a model served")
        yield client


def accuracy(model: TextClassifier, items: list[Example]) -> float:
    from online.predictor import Predictor

    preds = Predictor(model, 0, precision="fp32").predict([t for t, _ in items], 1)
    return sum(p.label == lab for p, (_, lab) in zip(preds, items)) / len(items)


# -- the feedback consumer and its buffer --------------------------------------------------------------------


class ConsumerThread:
    """A ``FeedbackConsumer`` running in a daemon thread for the span of a ``with`` block."""

    def __init__(self, settings) -> None:
        self.stop = threading.Event()
        self.consumer = FeedbackConsumer(settings, Stores.from_settings(settings))
        self.thread = threading.Thread(target=self.consumer.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> "ConsumerThread":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def buffer_of(settings) -> ReplayBuffer:
    return Stores.from_settings(settings).buffer


def total_events(buffer: ReplayBuffer) -> int:
    return sum(s.total for s in buffer.stats())


# -- object storage: moto's S3 server ----------------------------------------------------------------------


def start_s3(log_dir: Path):
    """moto's S3-compatible server on a free loopback port (stopped by PID like the other servers)."""
    from bench.common import start_s3 as start

    return start(log_dir)


def s3_env(monkeypatch, port: int, bucket: str) -> None:
    """The standard AWS variables pointing at a local S3 server, and ``bucket`` created there."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket=bucket)
