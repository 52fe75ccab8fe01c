"""docker-compose.yml is valid (checked by `docker-compose config`; no Docker engine needed) and lays out
what a multi-host deployment runs on: a 3-broker KRaft Kafka cluster with replication factor 3 and
min.insync.replicas 2, Redis with a replica and 3 Sentinels, S3-compatible object storage (not MinIO) for the
model versions, volumes the image's user can write, nginx with a request rate limit as the only published
port; every `online` service runs a real subcommand, with healthchecks, restart policies and Prometheus
scraping every part. The nginx configuration is also run (when an nginx binary is installed) to show the
rate limit answering 429."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import typer.main
import yaml

from online.settings import Settings
from services.cli import app

ROOT = Path(__file__).resolve().parents[1]
ENV = {"ONLINE_ADMIN_TOKEN": "test-token", "GRAFANA_ADMIN_PASSWORD": "test-password", "S3_SECRET_KEY": "test-s3-key"}
ONLINE_SERVICES = {"api", "consumer", "trainer"}
ONE_SHOT = {"s3-init"}  # jobs that run to completion: no restart policy, no healthcheck


def _tool(name: str, package: str) -> str:
    tool = shutil.which(name) or shutil.which(name, path="/usr/sbin")  # nginx lives in sbin
    if tool is None:
        message = f"{name} not found: apt-get install {package} (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return tool


def _config(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ENV}
    return subprocess.run(
        [_tool("docker-compose", "docker-compose"), "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        env={**clean, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    run = _config(ENV)
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)


def _volumes(svc: dict) -> list[tuple[str, str]]:
    """(source, target) of each mount, in docker-compose v1's string form or v2's long form."""
    out = []
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            out.append((volume.get("source", ""), volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            out.append((source, target))
    return out


def _command(svc: dict) -> str:
    command = svc.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_every_online_service_runs_a_real_subcommand_with_known_settings(config):
    commands = set(typer.main.get_command(app).commands)
    settings = {f"ONLINE_{name.upper()}" for name in Settings.model_fields}
    online = {name: svc for name, svc in config["services"].items() if svc.get("image") == "online:latest"}
    assert set(online) == ONLINE_SERVICES
    for name, svc in online.items():
        assert svc["command"][0] in commands, (name, svc["command"])
        env = svc["environment"]
        # ONLINE_ settings (each a real one: a typo would be silently ignored) and the standard AWS_ variables
        assert {k for k in env if k.startswith("ONLINE_")} <= settings, name
        assert all(k.startswith(("ONLINE_", "AWS_")) for k in env), name
        assert "ONLINE_REDIS_URL" not in env or "ONLINE_REDIS_SENTINELS" not in env  # the URL's host would be unused


def test_kafka_is_three_kraft_brokers_and_topics_get_rf3_isr2(config):
    services = config["services"]
    brokers = {name: svc for name, svc in services.items() if re.fullmatch(r"kafka-\d", name)}
    assert len(brokers) == 3
    voters = {svc["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for svc in brokers.values()}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({svc["environment"]["CLUSTER_ID"] for svc in brokers.values()}) == 1  # one cluster
    assert sorted(int(svc["environment"]["KAFKA_NODE_ID"]) for svc in brokers.values()) == [1, 2, 3]
    for name, svc in brokers.items():
        env = svc["environment"]
        assert svc["image"].startswith("apache/kafka:")
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3 and int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3  # committed offsets survive a broker too
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2
        assert str(env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"]).lower() == "false"
        # the data lives on the volume (the image's default log.dirs is under /tmp)
        assert (name, env["KAFKA_LOG_DIRS"]) in _volumes(svc)
    for name in ONLINE_SERVICES:
        env = services[name]["environment"]
        assert env["ONLINE_KAFKA_REPLICATION_FACTOR"] == "3" and env["ONLINE_KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert set(env["ONLINE_KAFKA_BOOTSTRAP"].split(",")) == {f"{b}:9092" for b in brokers}
        for broker in brokers:
            assert services[name]["depends_on"][broker]["condition"] == "service_healthy"


def test_redis_has_a_replica_and_three_sentinels_the_app_connects_through(config):
    services = config["services"]
    assert "--appendonly" in services["redis"]["command"]
    replica = services["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1 : replica.index("--replicaof") + 3] == ["redis", "6379"]
    assert "--appendonly" in replica
    for command in (services["redis"]["command"], replica):  # a memory budget that never evicts the buffer
        assert command[command.index("--maxmemory-policy") + 1] == "volatile-ttl" and "--maxmemory" in command
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert len(sentinels) == 3
    for name in ONLINE_SERVICES:
        env = services[name]["environment"]
        assert env["ONLINE_REDIS_SENTINELS"].split(",") == [f"{s}:26379" for s in sentinels]
        master = env["ONLINE_REDIS_SENTINEL_MASTER"]
    for name in sentinels:
        command = _command(services[name])
        assert f"sentinel monitor {master} redis 6379 2" in command  # quorum 2 of 3
        assert "redis-server /data/sentinel.conf --sentinel" in command and "port 26379" in command
        assert (name, "/data") in _volumes(services[name])  # Sentinel rewrites its file: kept per sentinel


def test_versions_live_in_s3_compatible_storage_that_is_not_minio(config):
    services = config["services"]
    store = services["api"]["environment"]["ONLINE_MODEL_STORE"]
    assert store.startswith("s3://")
    bucket = urlparse(store).netloc
    endpoint = urlparse(services["api"]["environment"]["AWS_ENDPOINT_URL"])
    server = services[endpoint.hostname]
    assert "minio" not in server["image"].lower()
    assert server["image"].split(":")[0] in {
        "chrislusf/seaweedfs",
        "adobe/s3mock",
        "zenko/cloudserver",
        "motoserver/moto",
    }
    assert f"-s3.port={endpoint.port}" in _command(server)
    init = services["s3-init"]
    assert f"create-bucket --bucket {bucket}" in _command(init)
    assert init["environment"]["AWS_ENDPOINT_URL"] == services["api"]["environment"]["AWS_ENDPOINT_URL"]
    for name in ONLINE_SERVICES:
        env = services[name]["environment"]
        assert env["ONLINE_MODEL_STORE"] == store
        assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
        assert env["AWS_SECRET_ACCESS_KEY"] == ENV["S3_SECRET_KEY"]  # from the environment, never in the file
        assert services[name]["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"
    assert server["environment"]["S3_SECRET_KEY"] == ENV["S3_SECRET_KEY"]


def test_only_nginx_publishes_a_port(config):
    published = {name: svc["ports"] for name, svc in config["services"].items() if svc.get("ports")}
    assert set(published) == {"proxy"}, published
    (port,) = published["proxy"]
    assert int(port["target"] if isinstance(port, dict) else port.split(":")[-1]) == 80


def test_named_volumes_are_writable_by_the_images_user(config):
    """Docker fills an empty named volume from the image's directory, ownership included: every named
    volume an `online` service mounts is at a directory the Dockerfile creates and chowns to its user."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"useradd --uid (\d+)", dockerfile).group(1)
    assert re.search(rf"^USER ({uid}|online)\b", dockerfile, re.MULTILINE), "the image runs as the user it creates"
    chowned = {p for paths in re.findall(r"chown online(?::online)? ([^\n&\\]+)", dockerfile) for p in paths.split()}
    state_dir = re.search(r"ONLINE_STATE_DIR=(\S+)", dockerfile).group(1)
    assert state_dir in chowned
    named = set(config.get("volumes", {}))
    mounted = 0
    for name in ONLINE_SERVICES:
        for source, target in _volumes(config["services"][name]):
            if source in named:
                assert target in chowned, (name, source, target)
                mounted += 1
    assert mounted, "the trainer keeps its state on a named volume"


def test_topology_healthchecks_and_restart_policies(config):
    services = config["services"]
    assert {"api", "consumer", "trainer", "proxy", "prometheus", "grafana", "redis", "s3", "s3-init"} <= set(services)
    assert services["api"]["deploy"]["replicas"] == 2 and services["consumer"]["deploy"]["replicas"] == 2
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert "restart" not in svc, name
            continue
        assert svc.get("restart") == "unless-stopped", name
        assert "healthcheck" in svc, name
    binds = []
    for svc in services.values():
        for source, _ in _volumes(svc):
            if source.startswith("/") and "clinc150" not in source:  # named volumes have no path
                binds.append(source)
    assert binds, "no bind-mounted configuration found"
    for source in binds:  # every mounted config file exists in the repository
        assert Path(source).exists(), source


def test_grafana_is_served_by_nginx_under_a_sub_path(config):
    env = config["services"]["grafana"]["environment"]
    assert env["GF_SERVER_ROOT_URL"].endswith("/grafana/") and env["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    assert "location /grafana/" in (ROOT / "deploy" / "nginx.conf").read_text()


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


@pytest.mark.parametrize("missing", ["ONLINE_ADMIN_TOKEN", "S3_SECRET_KEY"])
def test_the_stack_refuses_to_start_without_its_secrets(missing):
    run = _config({k: v for k, v in ENV.items() if k != missing})
    assert run.returncode != 0 and missing in run.stderr


# --- the nginx configuration, run ------------------------------------------------------------------------


def test_the_nginx_config_declares_a_rate_limit():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    zones = dict(re.findall(r"limit_req_zone \$binary_remote_addr zone=(\w+):\S+ rate=(\d+r/s);", conf))
    assert "api" in zones
    assert "limit_req zone=api" in conf and "limit_req_status 429;" in conf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Backend(http.server.BaseHTTPRequestHandler):
    """Stands in for the API replicas and Grafana: 200 to everything."""

    def _ok(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = f"backend {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _ok

    def log_message(self, *args):
        pass


@pytest.fixture
def nginx(tmp_path):
    binary = _tool("nginx", "nginx")
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    upstream = f"http://127.0.0.1:{backend.server_address[1]}"
    port = _free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    # the compose names become the stand-in backend, the listener a free local port; temp files in tmp_path
    conf = conf.replace("http://api:8000", upstream).replace("http://grafana:3000", upstream)
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    temp = " ".join(
        f"{kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = conf.replace("http {", f"http {{\n    access_log off; {temp}", 1)
    assert f"listen 127.0.0.1:{port};" in conf and upstream in conf
    (tmp_path / "nginx.conf").write_text(conf)
    process = subprocess.Popen(
        [
            binary,
            "-e",
            "stderr",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-g",
            f"daemon off; pid {tmp_path / 'nginx.pid'};",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/nginx-health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start: {process.stdout.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        backend.shutdown()


def test_nginx_answers_429_above_the_rate_and_hides_metrics(nginx):
    with httpx.Client(base_url=nginx, timeout=5) as client:
        # a burst far above 50 requests/s from one address: the first 100 (the burst) pass, then 429s
        statuses = [client.post("/v1/predict", json={"texts": ["hi"]}).status_code for _ in range(300)]
        assert set(statuses) == {200, 429}, set(statuses)
        assert statuses[:100] == [200] * 100
        assert statuses.count(429) >= 50
        # the admin endpoints have their own, tighter limit (token guessing)
        admin = [client.post("/v1/models/rollback").status_code for _ in range(30)]
        assert admin[:10] == [200] * 10 and admin.count(429) >= 10
        assert client.get("/metrics").status_code == 404  # Prometheus scrapes replicas directly
        grafana = client.get("/grafana/api/health")
        assert grafana.status_code == 200 and grafana.text == "backend /grafana/api/health"  # prefix kept
