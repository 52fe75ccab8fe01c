"""Operator commands: `online train --now`, `online models show`, `online status`, `online training`."""

from __future__ import annotations

import json
import os
import time

from typer.testing import CliRunner

from online.feedback.buffer import Incoming
from online.model import TextClassifier
from online.wiring.stores import Stores
from services.cli import app as cli
from tests import helpers
from tests.helpers import settings_env


def test_train_now_models_show_status_and_pause(settings, tmp_path, monkeypatch):
    golden = helpers.write_golden(tmp_path / "golden.jsonl", helpers.examples(helpers.OLD, 15, seed=7))
    s = settings.model_copy(
        update={"golden_path": golden, "train_epochs": 10, "rehearsal_min": 60, "gate_max_golden_drop": 0.05,
                "gate_latency_ratio": 5.0, "data_dir": tmp_path / "no-clinc"}  # rehearse from the buffer only
    )  # fmt: skip
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    stores = Stores.from_settings(s)
    registry, buffer = stores.registry, stores.buffer
    helpers.train_v1(s, registry)
    items = helpers.examples(helpers.OLD, 15, seed=2) + helpers.examples(["travel"], 30, seed=5)
    buffer.add([Incoming(f"e{i}", t, lab, "cli", time.time()) for i, (t, lab) in enumerate(items)])
    runner = CliRunner()

    result = runner.invoke(cli, ["train", "--now"])
    assert result.exit_code == 0, result.output
    assert "promoted v2" in result.output and "golden_accuracy" in result.output
    assert registry.live() == 2 and buffer.new_count() == 0

    shown = runner.invoke(cli, ["models", "show", "2"])
    assert shown.exit_code == 0 and "label_regression" in shown.output and "parent 1" in shown.output
    listed = runner.invoke(cli, ["models"])
    assert listed.exit_code == 0 and "passed" in listed.output and "promote" in listed.output

    assert runner.invoke(cli, ["training", "pause", "--reason", "incident 42"]).exit_code == 0
    document = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    training = document["training"]
    assert document["live_version"] == 2 and training["paused"] and training["reason"] == "incident 42"
    assert document["rounds"][-1]["version"] == 2 and document["rounds"][-1]["gate_passed"] is True
    assert document["buffer"]["samples"] == buffer.size() and "alerts" in document["drift"]
    stats = json.loads(runner.invoke(cli, ["buffer", "stats", "--json"]).output)
    assert {r["label"] for r in stats["labels"]} >= {"travel"} and stats["capacity"] == s.buffer_capacity
    held = json.loads(runner.invoke(cli, ["quarantine", "list", "--json"]).output)
    assert held["held_count"] == len(held["held"]) and isinstance(held["sources"], list)
    status = runner.invoke(cli, ["status"])
    assert status.exit_code == 0, status.output
    assert "live version: 2" in status.output and "incident 42" in status.output and "last rounds" in status.output
    assert runner.invoke(cli, ["training", "resume"]).exit_code == 0
    assert "running" in runner.invoke(cli, ["training", "status"]).output
    assert runner.invoke(cli, ["train", "--now"]).exit_code == 0  # nothing new: an idle round


def test_version_models_list_show_json_and_rollback_under_models(settings, tmp_path, monkeypatch):
    from online import __version__

    s = helpers.keyword_round_settings(settings, tmp_path)
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    registry = Stores.from_settings(s).registry
    model, v1 = helpers.train_v1(s, registry)
    model.grow(["travel"])
    v2 = registry.publish(model, parent=v1.version).version
    registry.promote(v2)
    runner = CliRunner()

    version = runner.invoke(cli, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"online {__version__}" and __version__ != "0+unknown"

    listed = json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)
    assert listed["live"] == v2 and [v["version"] for v in listed["versions"]] == [v1.version, v2]
    assert listed["versions"][0]["gate_passed"] is True and listed["versions"][1]["labels"] == 4
    shown = json.loads(runner.invoke(cli, ["models", "show", str(v1.version), "--json"]).output)
    assert shown["version"] == v1.version and shown["gate"]["passed"] and shown["live"] is False

    rolled = runner.invoke(cli, ["models", "rollback", "--reason", "cli test"])
    assert rolled.exit_code == 0 and f"live: version {v1.version}" in rolled.output
    assert registry.live() == v1.version and registry.history()[-1].reason == "cli test"
    again = runner.invoke(cli, ["rollback"])  # the top-level alias: v1 has no parent
    assert again.exit_code == 1 and "no parent" in again.output


def test_admin_commands_against_a_remote_api(kafka_settings, monkeypatch):
    """`--api URL` drives a deployment through its HTTP API with the admin token, as an operator of the
    compose stack does from their laptop: no Redis or model volume of its own."""
    from pydantic import SecretStr

    from services.supervisor import api_process

    s = kafka_settings.model_copy(update={"admin_token": SecretStr("op-token")})
    registry = Stores.from_settings(s).registry
    first = helpers.live_untrained(s, ("refund", "delivery"))
    second = registry.publish(TextClassifier.from_base(s.base_model, ["refund", "delivery"]), parent=first).version
    runner = CliRunner()
    with api_process(s) as url:
        for key in [k for k in list(os.environ) if k.startswith("ONLINE_")]:
            monkeypatch.delenv(key)  # nothing local: only the URL and the token
        monkeypatch.setenv("ONLINE_ADMIN_TOKEN", "op-token")
        remote = ["--api", url]

        promoted = runner.invoke(cli, ["models", "promote", str(second), "--reason", "remote", *remote])
        assert promoted.exit_code == 0 and f"live: version {second} (was {first})" in promoted.output
        listed = json.loads(runner.invoke(cli, ["models", "list", "--json", *remote]).output)
        assert listed["live"] == second and [v["version"] for v in listed["versions"]] == [first, second]
        assert listed["history"][-1]["reason"] == "remote"
        shown = json.loads(runner.invoke(cli, ["models", "show", str(first), "--json", *remote]).output)
        assert shown["version"] == first and sorted(shown["label_names"]) == ["delivery", "refund"]
        monkeypatch.setenv("ONLINE_API_URL", url)  # the environment names the API just as well
        rolled = runner.invoke(cli, ["rollback", "--reason", "remote undo"])
        assert rolled.exit_code == 0 and f"live: version {first}" in rolled.output
        assert registry.live() == first and registry.history()[-1].reason == "remote undo"

        assert runner.invoke(cli, ["training", "pause", "--reason", "incident 7"]).exit_code == 0
        assert "incident 7" in runner.invoke(cli, ["training", "status"]).output
        assert "running" in runner.invoke(cli, ["training", "resume"]).output
        held = json.loads(runner.invoke(cli, ["quarantine", "list", "--json"]).output)
        assert held == {"held": [], "sources": [], "held_count": 0}
        assert "released 0" in runner.invoke(cli, ["quarantine", "release", "--source", "nobody"]).output
        assert "'returns' approved;" in runner.invoke(cli, ["labels", "approve", "returns"]).output
        assert "returns" in runner.invoke(cli, ["labels", "pending"]).output.split("approved so far:")[1]
        buffer = json.loads(runner.invoke(cli, ["buffer", "stats", "--json"]).output)
        assert buffer["labels"] == [] and buffer["capacity"] == s.buffer_capacity
        bare = runner.invoke(cli, ["models"])  # the bare group lists remotely too
        assert bare.exit_code == 0 and "live alias history" in bare.output
        status = runner.invoke(cli, ["status"])  # reads Redis: refused rather than answered from elsewhere
        assert status.exit_code == 2 and "/dashboard" in status.output
        monkeypatch.delenv("ONLINE_ADMIN_TOKEN")
        tokenless = runner.invoke(cli, ["training", "pause"])
        assert tokenless.exit_code == 1 and "set ONLINE_ADMIN_TOKEN" in tokenless.output

        monkeypatch.setenv("ONLINE_ADMIN_TOKEN", "wrong")
        refused = runner.invoke(cli, ["rollback"])
        assert refused.exit_code == 1 and "HTTP 403" in refused.output and registry.live() == first
    gone = runner.invoke(cli, ["models", "list"])
    assert gone.exit_code == 2 and "cannot reach" in gone.output


def test_serve_binds_the_host_and_port_given_on_the_command_line(settings, monkeypatch):
    import uvicorn

    for key, value in settings_env(settings.model_copy(update={"api_host": "127.0.0.1", "api_port": 8000})).items():
        monkeypatch.setenv(key, value)
    bound = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: bound.append((app.state.settings, kw)))
    runner = CliRunner()

    assert runner.invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "8123"]).exit_code == 0
    assert runner.invoke(cli, ["serve"]).exit_code == 0  # the environment's, when no flag is given
    (flagged, kw), (default, kw_default) = bound
    assert (kw["host"], kw["port"]) == ("0.0.0.0", 8123) and (flagged.api_host, flagged.api_port) == ("0.0.0.0", 8123)
    assert (kw_default["host"], kw_default["port"]) == ("127.0.0.1", 8000)
    assert runner.invoke(cli, ["serve", "--port", "http"]).exit_code == 2  # not a port: a usage error
