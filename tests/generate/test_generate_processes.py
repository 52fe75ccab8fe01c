"""`online up --task generate` hands its children a generative deployment, and the trainer of one
publishes the base model as version 1 through the release pipeline (then waits: rounds come later)."""

from __future__ import annotations

import threading

from typer.testing import CliRunner

from online.wiring.stores import Stores
from services.cli import app as cli
from services.trainer import run_trainer
from tests.helpers import settings_env, wait_for


def test_up_with_task_generate_passes_the_task_and_the_base(gen_settings, tiny_lm, monkeypatch):
    for key, value in settings_env(gen_settings.model_copy(update={"task": "classify"})).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ONLINE_GENERATE_BASE_MODEL", raising=False)
    started = {}

    def run_up(settings, replicas=1):
        started.update(settings=settings, replicas=replicas)
        return 0

    monkeypatch.setattr("services.supervisor.run_up", run_up)
    result = CliRunner().invoke(cli, ["up", "--task", "generate", "--base-model", tiny_lm])
    assert result.exit_code == 0, result.output
    s = started["settings"]
    assert s.task == "generate" and s.generate_base_model == tiny_lm and s.to_env()["ONLINE_TASK"] == "generate"
    assert "generative base model" in result.output

    refused = CliRunner().invoke(cli, ["up", "--task", "poetry"])
    assert refused.exit_code != 0 and "classify or generate" in refused.output


def test_the_trainer_of_a_generative_deployment_publishes_the_base(gen_settings, tiny_lm, monkeypatch):
    registry = Stores.from_settings(gen_settings).registry
    stop = threading.Event()
    failures: list[BaseException] = []

    def trainer_loop() -> None:
        try:
            run_trainer(gen_settings, stop)
        except BaseException as exc:  # the trainer's thread must live until it is told to stop
            failures.append(exc)

    trainer = threading.Thread(target=trainer_loop, daemon=True)
    trainer.start()
    try:
        wait_for(lambda: registry.live() == 1, what="version 1 published")
        stop.wait(1.0)  # its warm-up and first loop turn follow the publish within milliseconds
    finally:
        stop.set()
        trainer.join(30)
    assert not trainer.is_alive()
    assert not failures, failures  # it died after publishing: a closed-form warm-up on a generative runner
    (manifest,) = registry.list()
    assert manifest.family == "generative" and manifest.base_model == tiny_lm and manifest.round.kind == "import"
    assert manifest.gate.passed and [c.name for c in manifest.gate.checks] == ["baseline"]
    for key, value in settings_env(gen_settings).items():
        monkeypatch.setenv(key, value)
    shown = CliRunner().invoke(cli, ["models", "show", "1"])
    assert shown.exit_code == 0 and "published, live" in shown.output and "baseline" in shown.output, shown.output
    status = CliRunner().invoke(cli, ["status", "--json"])
    assert status.exit_code == 0 and '"live_version": 1' in status.output, status.output


def test_online_serve_generates_over_http_for_the_openai_sdk(gen_settings):
    """A real `online serve` process (uvicorn, TCP): the SDK's plain and streamed calls, the version named."""
    from openai import OpenAI

    from online.learning.generative_version_one import release_base
    from services.supervisor import api_process

    release_base(gen_settings, Stores.from_settings(gen_settings).registry)
    with api_process(gen_settings) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        plain = client.chat.completions.create(model="m", messages=messages, max_tokens=10)
        chunks = list(client.chat.completions.create(model="m", messages=messages, max_tokens=10, stream=True))
    assert plain.model_extra["model_version"] == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
