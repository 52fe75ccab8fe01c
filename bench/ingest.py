"""`online bench ingest`: events from a producer into the replay buffer, against the broker's raw rate.

Both runs use the same broker, payloads and producer settings (acks=all), with the consumer in its own
process, timed from the first send to the last record consumed (raw) or stored in Redis (end to end).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from online.bus import ensure_topics, make_producer
from online.data import Clinc150
from online.events import LabelEvent, encode_event
from online.settings import Settings
from online.wiring.stores import Stores
from services.embedded import start_redis, start_tansu
from services.supervisor import child_env, stop_processes


def _produce(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings, linger_ms=10, batch_size=256 * 1024, max_in_flight_requests_per_connection=5)
    for key, value in values:
        producer.send(topic, value, key=key)
    producer.flush(300)
    producer.close()


def raw_consume(bootstrap: str, topic: str, partitions: int, n: int) -> None:
    """Child process: read ``n`` records with a plain kafka-python consumer; print when done."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=2000)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    print("ready", flush=True)
    seen = 0
    while seen < n:
        seen += sum(len(b) for b in consumer.poll(200).values())
    print(f"done {time.time()}", flush=True)


def _wait(condition, timeout: float) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return time.time()
        time.sleep(0.02)
    raise TimeoutError("benchmark did not complete in time")


def run_bench_ingest(settings: Settings, n: int, console: Console) -> None:
    train = Clinc150.open(settings.data_dir).split("train")
    events = [
        # every text distinct (the worst case: each event becomes a stored sample)
        LabelEvent(kind="label", event_id=uuid.uuid4().hex, text=f"{train[i % len(train)][0]} #{i // len(train)}",
                   label=train[i % len(train)][1], source="bench")
        for i in range(n)
    ]  # fmt: skip
    values = [(e.event_id.encode(), encode_event(e)) for e in events]
    with tempfile.TemporaryDirectory(prefix="online-bench-ingest-") as tmp:
        broker = start_tansu(Path(tmp))
        rds = start_redis(Path(tmp) / "redis")
        env = settings.model_copy(
            update={
                "kafka_bootstrap": f"127.0.0.1:{broker.port}",
                "redis_url": f"redis://127.0.0.1:{rds.port}/0",
                "buffer_capacity": max(settings.buffer_capacity, n),
                "key_prefix": "bench",
            }
        )
        procs: list[subprocess.Popen] = []
        try:
            # raw: the same payloads produced and read back by a plain consumer process
            raw_topic = "bench.raw"
            ensure_topics(env.model_copy(update={"feedback_topic": raw_topic}))
            reader = subprocess.Popen(
                [sys.executable, "-m", "bench.ingest", env.kafka_bootstrap, raw_topic,
                 str(env.feedback_partitions), str(n)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(reader)
            assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
            t0 = time.time()
            _produce(env, raw_topic, values)
            raw_s = float(reader.stdout.readline().split()[1]) - t0
            reader.wait(30)

            # end to end: `online consume` (validate, dedupe, PII-mask, Lua write, commit) into Redis
            ensure_topics(env)
            buffer = Stores.from_settings(env).buffer
            consumer = subprocess.Popen(
                [sys.executable, "-m", "services", "consume"],
                env=child_env(env),
            )
            procs.append(consumer)
            warm = LabelEvent(kind="label", text="warm up", label="warmup", source="bench")
            _produce(env, env.feedback_topic, [(warm.event_id.encode(), encode_event(warm))])
            _wait(lambda: buffer.size() >= 1, 120)  # the consumer has joined its group
            t0 = time.time()
            _produce(env, env.feedback_topic, values)
            produced_s = time.time() - t0
            e2e_s = _wait(lambda: sum(s.total for s in buffer.stats()) >= n + 1, 600) - t0
            stats = buffer.stats()
        finally:
            stop_processes(procs)
            rds.stop()
            broker.stop()

    table = Table(title=f"online bench ingest: {n} events, Tansu broker, 4 partitions, 1 consumer process")
    for col in ("path", "seconds", "events/s", "vs raw"):
        table.add_column(col, justify="right")
    table.add_row("raw produce+consume (limit)", f"{raw_s:.2f}", f"{n / raw_s:,.0f}", "1.00x")
    table.add_row("producer -> replay buffer", f"{e2e_s:.2f}", f"{n / e2e_s:,.0f}", f"{raw_s / e2e_s:.2f}x")
    console.print(table)
    console.print(
        f"producer alone finished in {produced_s:.2f}s; buffer: {sum(s.stored for s in stats):,} samples stored, "
        f"{sum(s.duplicates for s in stats):,} duplicates counted, {len(stats)} labels"
    )


if __name__ == "__main__":
    raw_consume(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
