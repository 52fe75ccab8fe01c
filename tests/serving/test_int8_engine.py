"""The int8 engine: built and checked at publish, verified and served by replicas, torch when it cannot be."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from online.engines import INT8_FILE, SOLO_AFTER_S, OnnxEngine, resolve_engine
from online.lifecycle import artifact
from online.lifecycle.gate import Gate, GoldenSet
from online.lifecycle.registry import IntegrityError
from online.lifecycle.release import JudgedVersion, release
from online.predictor import Predictor
from online.reports import SeedStats
from online.wiring.stores import Stores
from tests.helpers import OLD, examples, keyword_round_settings, served_app, train_v1, wait_for


@pytest.fixture
def int8_settings(settings, tmp_path):
    return keyword_round_settings(settings, tmp_path, engine="auto", device="cpu")


def _publish_next(settings, registry, model, parent: int) -> int:
    """A new version of ``model`` published the way a round does: gate baseline, then its artifacts."""
    gate = Gate(settings, GoldenSet.for_settings(settings))
    report = gate.baseline(model)
    golden = gate.golden.examples
    judged = JudgedVersion(model, report, parent, golden, golden, golden, {})
    return release(registry, settings, judged, SeedStats(examples=0, epochs=0), reason="t", placement="none").manifest.version


def test_auto_is_int8_on_cpu_and_torch_on_cuda():
    assert resolve_engine("auto", "cpu") == "onnx-int8"
    assert resolve_engine("auto", "cuda") == "torch"
    assert resolve_engine("torch", "cpu") == "torch"


def test_int8_engine_matches_fp32_on_any_batch_shape(int8_settings, tmp_path):
    registry = Stores.from_settings(int8_settings).registry
    model, _ = train_v1(int8_settings, registry)
    path = tmp_path / INT8_FILE
    artifact.export_int8(model, path)
    int8 = Predictor.on_engine(OnnxEngine(path), 1, model.labels, model.base_model, bucket_size=4)
    fp32 = Predictor(model, 1, precision="fp32", bucket_size=4)
    texts = [t for t, _ in examples(OLD, 5, seed=3)] + ["x", "a much longer text about my bank account " * 6]
    for batch in (texts[:1], texts[:3], texts):  # batch and sequence axes are dynamic
        p8, e8 = int8.probabilities_and_embeddings(batch)
        p32, e32 = fp32.probabilities_and_embeddings(batch)
        assert p8.shape == p32.shape and e8.shape == e32.shape
        assert torch.allclose(p8.sum(-1), torch.ones(len(batch)), atol=1e-4)
        assert (p8 - p32).abs().max() < 0.05
        assert torch.nn.functional.cosine_similarity(e8, e32).min() > 0.98
    assert (int8.probabilities(texts).argmax(-1) == fp32.probabilities(texts).argmax(-1)).float().mean() >= 0.9


def test_lanes_answer_alike_and_overlapping_runs_take_the_lane_session(int8_settings, tmp_path):
    """Two lanes: answers from two threads at once equal a lone caller's; a run beside another uses the
    one-thread lane session, and a lone run goes back to every thread only after runs stop overlapping."""
    registry = Stores.from_settings(int8_settings).registry
    model, _ = train_v1(int8_settings, registry)
    path = tmp_path / INT8_FILE
    artifact.export_int8(model, path)
    engine = OnnxEngine(path, threads=2, lanes=2)
    assert engine.lanes == 2 and engine.lane_session is not None
    lanes = Predictor.on_engine(engine, 1, model.labels, model.base_model, bucket_size=4)
    texts = [t for t, _ in examples(OLD, 12, seed=4)]
    alone = lanes.probabilities(texts)
    used: list[str] = []
    for name in ("session", "lane_session"):
        real = getattr(engine, name)

        class Spy:
            def __init__(self, real, name):
                self.real, self.name = real, name

            def run(self, *args, **kwargs):
                used.append(self.name)
                return self.real.run(*args, **kwargs)

        setattr(engine, name, Spy(real, name))
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(2)

    def call(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            results[i] = lanes.probabilities(texts)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(torch.allclose(results[i], alone, atol=1e-5) for i in (0, 1))
    assert "lane_session" in used  # overlapping runs took the lane session
    used.clear()
    lanes.probabilities(texts[:1])
    assert used == ["lane_session"]  # alone, but runs overlapped a moment ago
    engine._overlapped -= SOLO_AFTER_S + 1  # ...long ago
    lanes.probabilities(texts[:1])
    assert used[-1] == "session"  # a lone run on every thread


def test_artifact_built_at_publish_checked_by_the_gate_and_served_after_a_hot_swap(int8_settings):
    registry = Stores.from_settings(int8_settings).registry
    model, v1 = train_v1(int8_settings, registry)
    assert INT8_FILE in v1.artifacts
    check = v1.gate.engine
    assert check.passed and check.agreement >= int8_settings.engine_min_agreement
    assert check.fp32_accuracy - check.accuracy <= int8_settings.engine_max_drop
    registry.artifact(v1.version, INT8_FILE)  # its sha256 matches the manifest

    with served_app(int8_settings) as client:
        ready = client.get("/readyz").json()
        assert ready["model_version"] == v1.version and ready["engine"] == "onnx-int8"
        body = client.post("/v1/predict", json={"text": "what is the forecast for rain today"}).json()
        assert body["predictions"][0]["label"] == "weather"

        v2 = _publish_next(int8_settings, registry, copy.deepcopy(model), v1.version)
        registry.promote(v2)
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v2, what="the swap to v2")
        assert client.get("/readyz").json()["engine"] == "onnx-int8"
        body = client.post("/v1/predict", json={"text": "play that song on my playlist"}).json()
        assert body["model_version"] == v2 and body["predictions"][0]["label"] == "music"
        assert 'online_model_engine{engine="onnx-int8"} 1.0' in client.get("/metrics").text


def test_a_corrupted_artifact_is_refused_and_torch_serves_the_version(int8_settings):
    registry = Stores.from_settings(int8_settings).registry
    model, v1 = train_v1(int8_settings, registry)
    v2 = _publish_next(int8_settings, registry, copy.deepcopy(model), v1.version)
    path = registry.path(v2) / INT8_FILE
    path.write_bytes(path.read_bytes()[:-16] + b"\0" * 16)  # flipped bytes: its checksum fails
    with pytest.raises(IntegrityError):
        registry.artifact(v2, INT8_FILE)

    with served_app(int8_settings) as client:
        registry.promote(v2)
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v2, what="the swap to v2")
        assert client.get("/readyz").json()["engine"] == "torch-fp32"  # the weights are intact: torch serves
        body = client.post("/v1/predict", json={"text": "transfer money from my account"}).json()
        assert body["model_version"] == v2 and body["predictions"][0]["label"] == "bank"
        assert 'online_engine_fallbacks_total{reason="refused"} 1.0' in client.get("/metrics").text


def test_an_int8_replica_checks_the_artifact_it_loads_not_the_weights_beside_it(int8_settings):
    """The weights are hashed only where they are loaded (a fallback to torch, the trainer): hashing
    them at every swap cost the forward lanes their caches (issue 34)."""
    registry = Stores.from_settings(int8_settings).registry
    model, v1 = train_v1(int8_settings, registry)
    v2 = _publish_next(int8_settings, registry, copy.deepcopy(model), v1.version)
    weights = registry.path(v2) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(IntegrityError):
        registry.verify(v2)

    with served_app(int8_settings) as client:
        registry.promote(v2)
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v2, what="the swap to v2")
        assert client.get("/readyz").json()["engine"] == "onnx-int8"  # its artifact is intact
        body = client.post("/v1/predict", json={"text": "play that song on my playlist"}).json()
        assert body["model_version"] == v2 and body["predictions"][0]["label"] == "music"


def test_a_failed_export_publishes_the_version_for_torch(int8_settings, monkeypatch):
    def broken(model, target):
        raise RuntimeError("this architecture does not export")

    monkeypatch.setattr(artifact, "export_int8", broken)
    registry = Stores.from_settings(int8_settings).registry
    _, v1 = train_v1(int8_settings, registry)
    assert INT8_FILE not in v1.artifacts and v1.status == "published"
    assert not v1.gate.engine.passed and "does not export" in v1.gate.engine.detail

    with served_app(int8_settings) as client:
        assert client.get("/readyz").json()["engine"] == "torch-fp32"
        assert client.post("/v1/predict", json={"text": "sunny with a chance of rain"}).json()["predictions"]
        assert 'online_engine_fallbacks_total{reason="missing"} 1.0' in client.get("/metrics").text


def test_a_version_rewritten_in_place_is_hashed_again(int8_settings):
    registry = Stores.from_settings(int8_settings).registry
    model, v1 = train_v1(int8_settings.model_copy(update={"engine": "torch"}), registry)
    registry.verify(v1.version)
    weights = registry.path(v1.version) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(IntegrityError):
        registry.verify(v1.version)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_serving_path_matches_cpu_fp32(int8_settings, precision):
    registry = Stores.from_settings(int8_settings).registry
    model, _ = train_v1(int8_settings.model_copy(update={"engine": "torch"}), registry)
    gpu = Predictor(model, 1, device="cuda", precision=precision)
    cpu = Predictor(model, 1, device="cpu", precision="fp32")
    assert gpu.engine.pin_memory and gpu.engine_name == f"torch-{precision}"
    texts = [t for t, _ in examples(OLD, 10, seed=4)]
    p_gpu, e_gpu = gpu.probabilities_and_embeddings(texts)
    p_cpu, _ = cpu.probabilities_and_embeddings(texts)
    assert p_gpu.device.type == "cpu" and e_gpu.dtype == torch.float32
    assert (p_gpu - p_cpu).abs().max() < 0.05


def test_an_artifact_the_gate_refuses_is_not_stored(int8_settings, monkeypatch):
    monkeypatch.setattr(artifact, "check_int8", lambda *a: (0.80, 0.95, 0.85))  # 15 points lost, 85% agreement
    registry = Stores.from_settings(int8_settings).registry
    _, v1 = train_v1(int8_settings, registry)
    check = v1.gate.engine
    assert INT8_FILE not in v1.artifacts and v1.status == "published" and not check.passed
    assert check.accuracy == 0.80 and check.agreement == 0.85 and "int8 0.8000 vs fp32 0.9500" in check.detail


def test_an_artifact_that_runs_wrong_is_refused_at_load_and_torch_serves(int8_settings, tmp_path):
    registry = Stores.from_settings(int8_settings).registry
    model, v1 = train_v1(int8_settings, registry)
    grown = copy.deepcopy(model)
    grown.grow(["travel"])
    stale = tmp_path / INT8_FILE  # v1's artifact: a valid model, but of 3 labels where v2 has 4
    stale.write_bytes(registry.artifact(v1.version, INT8_FILE).read_bytes())
    v2 = registry.publish(grown, parent=v1.version, artifacts={INT8_FILE: stale}).version

    with served_app(int8_settings) as client:
        registry.promote(v2)
        wait_for(lambda: client.get("/readyz").json()["model_version"] == v2, what="the swap to v2")
        ready = client.get("/readyz").json()
        assert ready["engine"] == "torch-fp32" and not ready["failed_loads"]
        top = client.post("/v1/predict", json={"text": "book a flight", "top_k": 4}).json()["predictions"][0]["top_k"]
        assert {t["label"] for t in top} == {*OLD, "travel"}
        assert 'online_engine_fallbacks_total{reason="refused"} 1.0' in client.get("/metrics").text
