"""Versions in S3-compatible object storage (moto's S3 server): published by one "host", served by
another with an empty state directory, checked against the manifest's sha256, still served from the
cache while the store is down, collected from the bucket."""

from __future__ import annotations

import boto3
import pytest

from online.engines import INT8_FILE
from online.lifecycle import promotion
from online.lifecycle.gate import GoldenSet
from online.lifecycle.registry import IntegrityError
from online.lifecycle.store import GOLDEN_FILE, StoreUnavailable
from online.reference import REFERENCE_FILE
from online.wiring.stores import Stores
from tests.helpers import OLD, examples, keyword_round_settings, s3_env, start_s3, train_v1

BUCKET = "versions"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    server = start_s3(tmp_path / "s3")
    s3_env(monkeypatch, server.port, BUCKET)
    yield server
    server.stop()


def _host(settings, tmp_path, name: str):
    """The settings of one host: the shared Redis and bucket, its own (empty) state directory; the golden
    set frozen into the store (by the first host that freezes it), not an operator's file."""
    (tmp_path / name).mkdir(exist_ok=True)
    state = tmp_path / name / "state"
    return keyword_round_settings(
        settings, tmp_path / name, model_store=f"s3://{BUCKET}/prod", state_dir=state, golden_path=None
    )


def _trainer(settings, tmp_path):
    host = _host(settings, tmp_path, "trainer")
    registry = Stores.from_settings(host).registry
    GoldenSet.for_settings(host, examples(OLD, 15, seed=7))  # frozen in this host's cache, shared at publish
    return host, registry


def _objects() -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_a_version_published_on_one_host_serves_on_another(s3, settings, tmp_path):
    trainer, registry = _trainer(settings, tmp_path)
    _, v1 = train_v1(trainer, registry)
    keys = _objects()
    assert f"prod/v{v1.version}/manifest.json" in keys and f"prod/{GOLDEN_FILE}" in keys
    assert REFERENCE_FILE in v1.artifacts  # the drift reference is checksummed like the weights

    api = _host(settings, tmp_path, "api")  # nothing on disk yet
    registry = Stores.from_settings(api).registry
    assert not (api.models_dir / GOLDEN_FILE).exists()  # an API host never needs it...
    registry.fetch_golden()
    assert (api.models_dir / GOLDEN_FILE).is_file()  # ...a trainer on a fresh host judges on the frozen one
    model, manifest = registry.load(v1.version)  # fetched from the bucket, then checked
    assert model.labels == v1.labels and registry.path(v1.version).is_dir()
    if INT8_FILE in manifest.artifacts:
        assert registry.artifact(v1.version, INT8_FILE).is_file()

    s3.stop()  # the store goes away: the cached version still verifies and loads, without the network
    again = Stores.from_settings(api).registry
    assert again.load(v1.version)[1].sha256 == v1.sha256
    third = _host(settings, tmp_path, "late")  # a host with nothing cached cannot serve it, and says why
    with pytest.raises(StoreUnavailable):
        Stores.from_settings(third).registry.verify(v1.version)


def test_a_corrupted_object_is_refused(s3, settings, tmp_path):
    trainer, registry = _trainer(settings, tmp_path)
    _, v1 = train_v1(trainer, registry)
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"prod/v{v1.version}/model.safetensors", Body=b"tampered")
    api = _host(settings, tmp_path, "api")
    with pytest.raises(IntegrityError, match="sha256"):
        Stores.from_settings(api).registry.verify(v1.version)


def test_rollback_and_collection_work_on_the_bucket(s3, settings, tmp_path):
    host, registry = _trainer(settings, tmp_path)
    model, v1 = train_v1(host, registry)
    versions = [v1.version]
    for _ in range(3):
        versions.append(registry.publish(model, parent=versions[-1]).version)
        promotion.promote(registry, versions[-1], "test")
    promotion.rollback(registry)
    assert registry.live() == versions[-2]
    collected = registry.collect(keep=1)
    assert collected and all(not any(k.startswith(f"prod/v{v}/") for k in _objects()) for v in collected)
    assert registry.get(collected[0]).status == "collected"


def test_an_imported_classifier_is_served_by_a_host_that_did_not_import_it(s3, settings, tmp_path):
    """Its base (config, tokenizer) travels through the store with it, not only the weights."""
    from online.lifecycle.importer import import_classifier
    from tests.services.test_own_data import _fine_tuned_bert, _seed_rows

    rows = _seed_rows("en", 20, seed=1)
    _fine_tuned_bert(tmp_path / "my-bert", rows)
    host = _host(settings, tmp_path, "importer").model_copy(update={"gate_latency_ratio": 5.0})
    manifest, report = import_classifier(host, Stores.from_settings(host).registry, tmp_path / "my-bert", _seed_rows("en", 8, seed=50))
    assert report.passed and manifest.base_ref and any(k.startswith(f"prod/{manifest.base_ref}/") for k in _objects())

    api = _host(settings, tmp_path, "api")
    registry = Stores.from_settings(api).registry
    model, served = registry.load(manifest.version)
    assert served.base_model.startswith(str(api.models_dir)) and model.labels == manifest.labels


def test_an_imported_classifier_is_served_on_int8_by_a_host_that_did_not_import_it(s3, settings, tmp_path):
    """An int8 replica hashes only the artifact it loads, but it still needs the imported base (the
    tokenizer) from the bucket: without it the artifact was refused and torch served."""
    from online.lifecycle.importer import import_classifier
    from tests.helpers import served_app
    from tests.services.test_own_data import _fine_tuned_bert, _seed_rows

    _fine_tuned_bert(tmp_path / "my-bert", _seed_rows("en", 20, seed=1))
    host = _host(settings, tmp_path, "importer").model_copy(update={"gate_latency_ratio": 5.0, "engine": "onnx-int8"})
    manifest, report = import_classifier(host, Stores.from_settings(host).registry, tmp_path / "my-bert", _seed_rows("en", 8, seed=50))
    assert report.passed and manifest.base_ref and INT8_FILE in manifest.artifacts

    api = _host(settings, tmp_path, "api").model_copy(update={"engine": "onnx-int8"})
    with served_app(api) as client:
        ready = client.get("/readyz").json()
        assert ready["model_version"] == manifest.version and ready["engine"] == "onnx-int8", ready
        assert 'online_engine_fallbacks_total{reason="refused"} 1.0' not in client.get("/metrics").text


def test_a_canary_published_on_one_host_is_served_from_the_bucket_by_another(s3, settings, tmp_path):
    from online.lifecycle import canary
    from tests.helpers import served_app, wait_for

    trainer, registry = _trainer(settings, tmp_path)
    model, v1 = train_v1(trainer, registry)
    v2 = registry.publish(model, parent=v1.version).version
    canary.start(registry, v2, trainer, "canary from the bucket", share=0.5)
    api = _host(settings, tmp_path, "api")  # an empty state directory: both versions come from the bucket
    with served_app(api) as client:
        wait_for(lambda: client.get("/v1/canary").json()["loaded_by_this_replica"], what="canary fetched and loaded")
        users = [f"user-{i}" for i in range(20)]
        served = {u: client.post("/v1/predict", json={"text": "rain today", "user": u}).json()["model_version"] for u in users}
        assert {u for u, v in served.items() if v == v2} == {u for u in users if canary.routed_to_canary(u, v2, 0.5)}
        assert set(served.values()) == {v1.version, v2}
        assert (api.models_dir / f"v{v2}").is_dir()
