"""Many hosts (issue 32): every part on a "host" of its own, each host a network namespace on a private
bridge (tests/netns.py), or, without root, all on loopback ports (and the test says so).

Hosts: ``s3`` (moto's S3 server), ``redis-1`` (master + sentinel), ``redis-2`` (replica + sentinel),
``redis-3`` (sentinel), ``broker`` (Tansu), ``trainer`` (`online train` and `online consume`), ``api-1`` and
``api-2`` (`online serve`, empty state directories), and ``client``, where the test's own requests come
from. Every process finds Redis through the sentinels and the versions in the bucket.

It shows, in order: version 1, trained and published on the trainer host, is served by both API hosts
(each fetched it from the bucket into its own cache); a SIGKILLed API host leaves the other answering
every request; a SIGKILLed Redis master is failed over by the sentinels to the replica while predictions
and feedback keep coming, with no prediction error and every accepted feedback event in the replay
buffer (on the new master) afterwards, every process still running; the object store gone (killed, and
its host cut off the network) leaves the remaining API host serving its cached live version, and the
killed API host, restarted with its cache, serves it again without the store.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
import uuid
import warnings
from pathlib import Path

import httpx
import pytest

from online.settings import Settings
from online.wiring.stores import Stores
from services.embedded import tansu_binary
from services.supervisor import child_env
from tests.helpers import DATA_DIR, wait_for
from tests.netns import Host, Network, Proc, namespaces_unavailable
from tests.sentinel import (
    master_address,
    replica_in_sync,
    role,
    sentinel_addresses,
    sentinel_view,
    start_redis_node,
    start_sentinel,
)

BUCKET = "versions"
why_no_namespaces = functools.cache(namespaces_unavailable)


def _moto_server() -> str:
    return shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")


def _create_bucket(aws: dict[str, str]) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=BUCKET)


def _bucket_keys(aws: dict[str, str]) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_DEFAULT_REGION"],
    )
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


@pytest.mark.parametrize("mode", ["namespaces", "loopback"])
def test_many_hosts(mode, tiny_base, tmp_path, monkeypatch):
    why = why_no_namespaces()
    if mode == "namespaces" and why:
        pytest.skip(f"network namespaces unavailable ({why}): the loopback variant runs this scenario")
    if mode == "loopback":
        if not why and not os.environ.get("ONLINE_TEST_LOOPBACK"):
            pytest.skip("network namespaces are available, so the namespaces variant runs this scenario "
                        "(ONLINE_TEST_LOOPBACK=1 runs it on loopback ports as well)")  # fmt: skip
        warnings.warn(
            f"many-host test on loopback ports, not network namespaces ({why or 'ONLINE_TEST_LOOPBACK=1'}): "
            "every host is 127.0.0.1, and the object store can only be killed, not cut off",
            stacklevel=1,
        )
    timings: dict[str, float] = {}
    started = time.monotonic()

    def mark(what: str) -> None:
        timings[what] = round(time.monotonic() - started, 1)

    with Network(isolated=mode == "namespaces", log_dir=tmp_path / "logs") as net:
        try:
            _scenario(net, tiny_base, tmp_path, monkeypatch, mark)
        except BaseException:
            print(f"many hosts on {net.mode}; timings {timings}; logs in {net.log_dir}")
            for proc in net.procs:
                if proc.name.startswith(("api", "train", "consume")):
                    print(f"--- {proc.name} (pid {proc.pid}, alive {proc.alive()}) ---\n{proc.log_tail(2500)}")
            raise
    mark("cleaned up")
    print(f"many hosts on {net.mode}: {timings}")


def _scenario(net: Network, tiny_base: str, tmp_path: Path, monkeypatch, mark) -> None:
    hosts = {n: net.add_host(n) for n in ("s3", "redis-1", "redis-2", "redis-3", "broker", "trainer", "api-1", "api-2")}
    s3_host, broker, trainer_host = hosts["s3"], hosts["broker"], hosts["trainer"]

    # -- infrastructure: object store, Redis master + replica + 3 sentinels, broker ---------------------------
    s3_port = s3_host.port(5000)
    moto = net.start(s3_host, "s3", [_moto_server(), "-H", s3_host.bind, "-p", str(s3_port)], port=s3_port)
    aws = {
        "AWS_ENDPOINT_URL": f"http://{s3_host.ip}:{s3_port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask a metadata service for credentials
    }
    for name, value in aws.items():  # the test's own clients (the client host) see the same store
        monkeypatch.setenv(name, value)
    net.call(_create_bucket, aws)

    master = start_redis_node(net, hosts["redis-1"], tmp_path / "redis-1")
    replica = start_redis_node(net, hosts["redis-2"], tmp_path / "redis-2", replica_of=master)
    sentinels = [start_sentinel(net, hosts[h], tmp_path / h, master) for h in ("redis-1", "redis-2", "redis-3")]
    wait_for(lambda: net.call(replica_in_sync, replica), timeout=30, what="the replica in sync")

    def sentinels_ready() -> bool:  # each sees the other two and the replica: a failover can happen
        views = [net.call(sentinel_view, s) for s in sentinels]
        return all(int(v.get("num-other-sentinels", 0)) == 2 and int(v.get("num-slaves", 0)) == 1 for v in views)

    wait_for(sentinels_ready, timeout=60, interval=0.2, what="three sentinels that see each other and the replica")
    assert net.call(master_address, sentinels) == (master.host.ip, master.port)

    kafka_port = broker.port(9092)
    tansu_env = {k: v for k, v in os.environ.items() if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL")}
    tansu = net.start(
        broker, "tansu",
        [tansu_binary(), "broker",
         "--listener-url", f"tcp://{broker.bind}:{kafka_port}",
         "--advertised-listener-url", f"tcp://{broker.ip}:{kafka_port}",
         "--storage-engine", "memory://tansu/"],
        env=tansu_env, port=kafka_port,
    )  # fmt: skip
    mark("infrastructure up")

    # -- the application: one trainer host, two API hosts, all with empty state directories ------------------
    base = Settings(
        _env_file=None,
        state_dir=tmp_path / "client" / "state",
        model_store=f"s3://{BUCKET}/prod",
        data_dir=DATA_DIR,
        redis_sentinels=sentinel_addresses(sentinels),
        redis_sentinel_master="online",
        kafka_bootstrap=f"{broker.ip}:{kafka_port}",
        key_prefix="many",
        base_model=tiny_base,
        seed_domains=1,
        seed_per_label=20,
        seed_epochs=2,
        head_learning_rate=1e-2,
        learning_rate=1e-3,
        precision="fp32",
        engine="torch",
        num_threads=1,  # nine processes on a small machine
        model_poll_s=0.5,
        feedback_partitions=2,
        train_min_new=1_000_000,  # no continual round: this test is about hosts, not learning
        train_max_wait_s=3600.0,
        log_format="json",
    )

    def env(host: Host, **update) -> dict[str, str]:
        settings = base.model_copy(update={"state_dir": tmp_path / host.name / "state", **update})
        return child_env(settings, **aws, PYTHONUNBUFFERED="1")

    def online(host: Host, part: str, name: str, **update) -> Proc:
        return net.start(host, name, [sys.executable, "-m", "services", part], env=env(host, **update))

    api_hosts = [hosts["api-1"], hosts["api-2"]]
    api_ports = {h.name: h.port(8000) for h in api_hosts}
    urls = {h.name: f"http://{h.ip}:{api_ports[h.name]}" for h in api_hosts}

    def start_api(host: Host) -> Proc:
        return online(host, "serve", host.name, api_host=host.bind, api_port=api_ports[host.name])

    train = online(trainer_host, "train", "train")
    consume = online(trainer_host, "consume", "consume")
    apis = {h.name: start_api(h) for h in api_hosts}
    stores = Stores.from_settings(base)  # the client host's view of Redis (through the sentinels) and the store
    http = net.call(lambda: httpx.Client(timeout=10.0, trust_env=False))

    def get(url: str) -> httpx.Response:
        return net.call(http.get, url)

    def post(url: str, body: dict) -> httpx.Response:
        return net.call(http.post, url, json=body)

    def served(name: str) -> int | None:
        try:
            return get(f"{urls[name]}/readyz").json().get("model_version")
        except httpx.HTTPError:
            return None

    v1 = wait_for(
        lambda: net.call(stores.registry.live), timeout=240, interval=0.5,
        what="version 1 from the trainer host", alive=[train.popen, consume.popen],
    )  # fmt: skip
    mark("version 1 published")
    assert f"prod/v{v1}/manifest.json" in net.call(_bucket_keys, aws)
    wait_for(
        lambda: all(served(n) == v1 for n in apis), timeout=180, interval=0.3,
        what=f"both API hosts serving version {v1}", alive=[p.popen for p in apis.values()],
    )  # fmt: skip
    mark("both API hosts serve version 1")
    for h in api_hosts:  # each pulled it from the bucket into its own, formerly empty, cache
        cache = base.model_copy(update={"state_dir": tmp_path / h.name / "state"}).models_dir
        assert (cache / f"v{v1}" / "manifest.json").is_file(), f"{h.name} has no cached copy of v{v1}"
    labels = net.call(stores.registry.get, v1).labels
    texts = [f"please tell me about the {w} today" for w in ("weather", "balance", "song", "flight", "hotel")]

    def predict(name: str, i: int) -> httpx.Response | Exception:
        try:
            return post(f"{urls[name]}/v1/predict", {"text": texts[i % len(texts)]})
        except httpx.HTTPError as exc:
            return exc

    def ok(answer) -> bool:
        return isinstance(answer, httpx.Response) and answer.status_code == 200 and answer.json()["model_version"] == v1

    # -- one API host crashes: the other answers every request ------------------------------------------------------
    for i in range(10):
        assert all(ok(predict(n, i)) for n in apis)
    net.kill(apis["api-1"])
    assert served("api-1") is None
    answers = [predict("api-2", i) for i in range(50)]
    assert [a for a in answers if not ok(a)] == [], "api-2 failed requests while api-1 was down"
    mark("api-1 killed; api-2 answered 50 of 50")

    # -- the Redis master crashes under load: failover, no prediction error, no accepted event lost ---------------
    accepted: list[tuple[str, str]] = []  # (source, event_id): the buffer's dedup key
    retried = 0

    def send_feedback(i: int) -> None:
        """Five label events; a 503 is retried with the same event ids (as a client does), until 202."""
        nonlocal retried
        events = [
            {"kind": "label", "text": f"{texts[(i + k) % len(texts)]} number {i} {k}", "label": labels[(i + k) % len(labels)],
             "source": "many-hosts", "event_id": uuid.uuid4().hex}
            for k in range(5)
        ]  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = post(f"{urls['api-2']}/v1/feedback", {"events": events})
                if resp.status_code == 202:
                    accepted.extend((e["source"], e["event_id"]) for e in events)
                    return
                assert resp.status_code == 503, resp.text
                pause = min(float(resp.headers.get("Retry-After", "1")), 1.0)
            except httpx.HTTPError:
                pause = 0.2
            retried += 1
            assert time.monotonic() < deadline, "feedback not accepted within 30 s"
            time.sleep(pause)

    errors: list[object] = []
    killed_at = promoted_at = None
    after = 0
    new_master = (replica.host.ip, replica.port)
    deadline = time.monotonic() + 120
    i = 0
    while after < 40:
        i += 1
        answer = predict("api-2", i)
        if not ok(answer):
            errors.append(answer if isinstance(answer, Exception) else (answer.status_code, answer.text[:200]))
        if i % 2 == 0:
            send_feedback(i)
        if i == 20:
            net.kill(master.proc)  # SIGKILL: the master is gone, its sentinel stays
            killed_at = time.monotonic()
        if killed_at and promoted_at is None and i % 5 == 0 and net.call(master_address, sentinels) == new_master:
            promoted_at = time.monotonic()
        if promoted_at:
            after += 1  # keep going after the failover: feedback must flow again through the new master
        assert time.monotonic() < deadline, f"no failover to {new_master} within 120 s of the loop's start"
        time.sleep(0.02)
    mark(f"redis master killed; failover in {promoted_at - killed_at:.1f} s")
    assert errors == [], f"{len(errors)} of {i} predictions failed across the Redis failover: {errors[:3]}"
    assert net.call(role, replica) == "master"
    wait_for(
        lambda: all(net.call(master_address, [s]) == new_master for s in sentinels),
        timeout=30, interval=0.2, what="all three sentinels naming the new master",
    )  # fmt: skip

    def missing() -> list[tuple[str, str]]:
        return [e for e, seen in zip(accepted, net.call(stores.buffer.seen, accepted)) if not seen]

    wait_for(lambda: not missing(), timeout=90, interval=0.5, what="every accepted event in the buffer",
             alive=[consume.popen])  # fmt: skip
    assert not missing()
    mark(f"{len(accepted)} accepted events all in the buffer ({retried} feedback retries)")
    down = [
        p.name
        for p in (train, consume, apis["api-2"], replica.proc, *[s.proc for s in sentinels], tansu)
        if not p.alive()
    ]
    assert down == [], f"did not survive the failover: {down}"

    # -- the object store goes away: the cached live version keeps serving, even across a restart ----------------
    net.kill(moto)
    net.cut(s3_host)  # in namespaces the host is unreachable too, not just refusing connections
    assert not net.reachable(s3_host, s3_port)
    answers = [predict("api-2", i) for i in range(30)]
    assert [a for a in answers if not ok(a)] == [], "api-2 failed requests without the object store"
    mark("store gone: api-2 answered 30 of 30")
    apis["api-1"] = start_api(hosts["api-1"])  # same state directory: its cache is intact
    wait_for(lambda: served("api-1") == v1, timeout=180, interval=0.3, what="api-1 back on its cached version",
             alive=[apis["api-1"].popen])  # fmt: skip
    answers = [predict(n, i) for i in range(15) for n in apis]
    assert [a for a in answers if not ok(a)] == [], "failed requests without the object store after a restart"
    mark("api-1 restarted without the store serves its cached version")
    down = [p.name for p in (train, consume, *apis.values()) if not p.alive()]
    assert down == [], f"exited without the object store: {down}"
    net.call(http.close)
