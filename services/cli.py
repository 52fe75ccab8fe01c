"""The `online` command line (typer + rich)."""

from __future__ import annotations

import logging
import signal
import threading
import time

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from online.settings import Settings
from services.supervisor import running_stack

app = typer.Typer(help="online: a continual-learning text classifier server with a feedback loop.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (ratios measured side by side in one run).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()


def _settings() -> Settings:
    """Settings from the environment; server addresses of a running `online up` fill the gaps."""
    return running_stack(Settings())


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    for noisy in ("kafka", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def wide_console() -> Console:
    """Benchmark tables are wide; keep them readable when output goes to a file or a pipe."""
    return Console(width=max(console.width, 160))


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command()
def up() -> None:
    """Start everything: local broker + Redis (unless configured), API, feedback consumer, trainer."""
    from services.supervisor import run_up

    _logging()
    raise typer.Exit(run_up(Settings()))


@app.command()
def stack() -> None:
    """Run only the embedded Tansu broker and Redis, for running the other parts by hand."""
    from services.supervisor import EmbeddedStack

    _logging()
    stop = _stop_event()
    s = EmbeddedStack.start(Settings())
    console.print(f"export ONLINE_KAFKA_BOOTSTRAP={s.settings.kafka_bootstrap}")
    console.print(f"export ONLINE_REDIS_URL={s.settings.redis_url}")
    try:
        stop.wait()
    finally:
        s.stop()


@app.command()
def serve() -> None:
    """Run the HTTP API (one replica)."""
    import uvicorn

    from services.api.app import create_app

    _logging()
    settings = _settings()
    from online.training import configure_threads

    configure_threads(settings.num_threads)
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")


@app.command()
def consume() -> None:
    """Run the feedback consumer (Kafka -> replay buffer)."""
    from consumers.feedback import run_consumer

    _logging()
    run_consumer(_settings(), _stop_event())


@app.command()
def train() -> None:
    """Run the trainer scheduler (version 1 on an empty registry, then continual rounds)."""
    from services.trainer import run_trainer

    _logging()
    run_trainer(_settings(), _stop_event())


@app.command()
def models() -> None:
    """List model versions, the live one marked."""
    from online.connections import redis_client
    from online.registry import ModelRegistry

    settings = _settings()
    registry = ModelRegistry(redis_client(settings), settings.models_dir, settings.key_prefix)
    live = registry.live()
    table = Table("version", "live", "parent", "status", "created", "labels", "metrics")
    for m in registry.list():
        table.add_row(
            str(m.version),
            "●" if m.version == live else "",
            str(m.parent or ""),
            m.status,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at)),
            str(len(m.labels)),
            ", ".join(f"{k}={v:.4f}" for k, v in m.metrics.items()),
        )
    console.print(table)


@bench_app.command("serve")
def bench_serve(
    requests: int = typer.Option(600, help="Requests per concurrency level and server."),
    concurrency: str = typer.Option("1,8,32", help="Comma-separated concurrency levels."),
    eval_limit: int = typer.Option(0, help="CLINC150 test texts for the accuracy check (0: all 4500)."),
) -> None:
    """HTTP API vs a naive server vs the raw in-process batched forward, side by side."""
    from services.bench.serve import run_bench_serve

    _logging("WARNING")
    run_bench_serve(Settings(), requests, [int(c) for c in concurrency.split(",")], eval_limit, wide_console())
