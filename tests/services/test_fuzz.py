"""schemathesis against the project's own OpenAPI schema, on a running API process: no 5xx anywhere, and
every answer whose status the schema documents matches the schema it documents (422s included).

Examples are bounded (hypothesis ``max_examples``) so the suite stays fast; the admin token is sent, so
admin endpoints are exercised past authentication too."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.specs.openapi.checks import response_schema_conformance

from online.model import TextClassifier
from online.wiring.stores import Stores
from services.supervisor import api_process

TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_base, redis_server, tansu_server):
    from online.settings import Settings
    from tests.helpers import DATA_DIR

    tmp = tmp_path_factory.mktemp("fuzz")
    s = Settings(
        _env_file=None,
        state_dir=tmp / "state",
        model_store=tmp / "models",
        data_dir=DATA_DIR,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        kafka_bootstrap=f"127.0.0.1:{tansu_server.port}",
        key_prefix="fuzz",
        feedback_topic="fuzz.feedback",
        dlq_topic="fuzz.feedback.dlq",
        base_model=tiny_base,
        precision="fp32",
        admin_token=SecretStr(TOKEN),
        max_batch_size=8,
    )
    registry = Stores.from_settings(s).registry
    model = TextClassifier.from_base(tiny_base, ["a", "b"])
    v1 = registry.publish(model, parent=None).version
    registry.promote(v1)
    registry.promote(registry.publish(model, parent=v1).version)
    with api_process(s) as url:
        yield url


def test_no_server_errors_on_any_endpoint(api):
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    seen: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            seen[operation.label] = seen.get(operation.label, 0) + 1
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            )
            case.validate_response(response, checks=[response_schema_conformance])

        check()
    assert set(seen) == {op.label for op in operations}  # every endpoint was called
