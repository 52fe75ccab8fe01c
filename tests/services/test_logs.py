"""Logs a pipeline can parse: JSON lines with structured fields, a request id per API call, an access log."""

from __future__ import annotations

import io
import json
import logging

from online.logs import _RequestId, json_formatter, request_id, resolve_format
from tests.helpers import live_untrained, served_app


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_console_on_a_terminal_and_json_lines_otherwise():
    assert resolve_format("auto", _Tty()) == "console"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", _Tty()) == "json" and resolve_format("console", io.StringIO()) == "console"


def test_a_json_line_carries_level_logger_message_fields_and_the_request_id():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(_RequestId())
    logger = logging.getLogger("online.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id.set("req-42")
    try:
        logger.warning("round from v1: promoted v2 (意图)", extra={"round": {"new": 25, "gate": {"holdout": True}}})
    finally:
        request_id.reset(token)
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())  # exactly one JSON object on one line
    assert line["level"] == "WARNING" and line["logger"] == "online.test_logs"
    assert line["message"] == "round from v1: promoted v2 (意图)" and line["round"] == {"new": 25, "gate": {"holdout": True}}
    assert line["request_id"] == "req-42" and line["timestamp"].startswith("20")


def test_every_request_gets_an_id_and_an_access_line(settings, caplog):
    live_untrained(settings)
    with served_app(settings) as client, caplog.at_level(logging.INFO, logger="online.access"):
        given = client.post("/v1/predict", json={"text": "hello"}, headers={"X-Request-ID": "trace-abc.1"})
        made = client.post("/v1/predict", json={"text": "hello"})
        hostile = client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
        invalid = client.post("/v1/predict", json={"text": ""})
    assert given.headers["x-request-id"] == "trace-abc.1"
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "trace-abc.1"
    assert "\n" not in hostile.headers["x-request-id"] and hostile.headers["x-request-id"] != "bad id"
    assert invalid.status_code == 422
    lines = {r.request_id: r for r in caplog.records if r.name == "online.access"}
    assert lines["trace-abc.1"].status == 200 and lines["trace-abc.1"].path == "/v1/predict"
    assert lines["trace-abc.1"].duration_ms > 0 and lines["trace-abc.1"].method == "POST"
    assert lines[invalid.headers["x-request-id"]].status == 422  # refusals are logged too


def test_at_high_rates_one_successful_line_in_k_is_written_and_says_so(monkeypatch):
    from services.api import access

    clock = [100.0]
    monkeypatch.setattr(access.time, "monotonic", lambda: clock[0])
    log = access.AccessLog(app=None, max_per_s=10)
    first = [log._sample(200) for _ in range(50)]  # 50 in the first second: every line (no rate known yet)
    assert first == [1] * 50
    clock[0] = 101.0  # the next second: 50/s against 10/s -> 1 in 5
    second = [log._sample(200) for _ in range(50)]
    assert second.count(5) == 10 and second.count(None) == 40
    assert log._sample(500) == 1 and log._sample(422) == 1  # invalid requests and errors: always
    clock[0] = 105.0  # after an idle gap: every line again
    assert [log._sample(200) for _ in range(3)] == [1, 1, 1]
    assert access.AccessLog(app=None, max_per_s=0)._sample(200) == 1  # 0: every line


def test_a_flood_of_load_refusals_is_sampled_on_its_own_budget(monkeypatch):
    """429s of a flooding client and 503s of a full queue are logged 1 in k as successes are (a line each
    would cost the event loop what the refusal saves), without taking the successes' budget."""
    from services.api import access

    clock = [100.0]
    monkeypatch.setattr(access.time, "monotonic", lambda: clock[0])
    log = access.AccessLog(app=None, max_per_s=10)
    assert [log._sample(429) for _ in range(100)] == [1] * 100  # no rate known yet
    clock[0] = 101.0  # 100/s of refusals against 10/s -> 1 in 10
    refused = [log._sample(429) for _ in range(50)] + [log._sample(503) for _ in range(50)]
    assert refused.count(10) == 10 and refused.count(None) == 90
    assert [log._sample(200) for _ in range(5)] == [1] * 5  # successes: their own (idle) budget
    assert log._sample(401) == 1 and log._sample(500) == 1
