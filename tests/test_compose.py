"""docker-compose.yml is valid (checked by `docker-compose config`; no Docker engine needed) and runs
real `online` subcommands, with healthchecks, restart policies and Prometheus scraping every part."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from services.cli import app

ROOT = Path(__file__).resolve().parents[1]
ENV = {"ONLINE_ADMIN_TOKEN": "test-token", "GRAFANA_ADMIN_PASSWORD": "test-password"}


def _compose() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        message = "docker-compose not found: apt-get install docker-compose (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return tool


def _config(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ENV}
    return subprocess.run(
        [_compose(), "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    run = _config(ENV)
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)


def test_every_online_service_runs_a_real_subcommand(config):
    commands = set(typer.main.get_command(app).commands)
    online = {name: svc for name, svc in config["services"].items() if svc.get("image") == "online:latest"}
    assert set(online) == {"api", "consumer", "trainer"}
    for name, svc in online.items():
        assert svc["command"][0] in commands, (name, svc["command"])
        env = svc["environment"]
        assert env["ONLINE_KAFKA_BOOTSTRAP"] == "kafka:9092" and env["ONLINE_REDIS_URL"].startswith("redis://redis")
        assert all(key.startswith("ONLINE_") for key in env)


def test_topology_healthchecks_and_restart_policies(config):
    services = config["services"]
    assert {"kafka", "kafka-init", "redis", "api", "consumer", "trainer", "proxy", "prometheus", "grafana"} <= set(
        services
    )
    assert services["api"]["deploy"]["replicas"] == 2 and services["consumer"]["deploy"]["replicas"] == 2
    assert "--appendonly" in services["redis"]["command"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    for name, svc in services.items():
        if name == "kafka-init":
            continue  # a one-shot job
        assert svc.get("restart") == "unless-stopped", name
        assert "healthcheck" in svc, name
    binds = []
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("/") and "clinc150" not in source:  # named volumes have no path
                binds.append(source)
    assert binds, "no bind-mounted configuration found"
    for source in binds:  # every mounted config file exists in the repository
        assert Path(source).exists(), source


def test_prometheus_scrapes_every_part_on_its_metrics_port(config):
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {job["job_name"]: job["dns_sd_configs"][0] for job in scrape}
    env = config["services"]["trainer"]["environment"]
    assert targets["api"]["port"] == 8000
    assert targets["trainer"]["port"] == int(env["ONLINE_TRAINER_METRICS_PORT"])
    assert targets["consumer"]["port"] == int(env["ONLINE_CONSUMER_METRICS_PORT"])
    dashboard = (ROOT / "deploy" / "grafana" / "dashboards" / "online.json").read_text()
    for metric in (
        "online_predictions_total",
        "online_drift_signal",
        "online_consumer_records_total",
        "online_trainer_rounds_total",
        "online_live_accuracy",
    ):
        assert metric in dashboard


def test_the_stack_refuses_to_start_without_an_admin_token():
    run = _config({"GRAFANA_ADMIN_PASSWORD": "x"})
    assert run.returncode != 0 and "ONLINE_ADMIN_TOKEN" in run.stderr
