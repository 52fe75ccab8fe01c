"""The `online` command line (typer + rich)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from online.settings import Settings
from services.supervisor import running_stack

app = typer.Typer(help="online: a continual-learning text classifier server with a feedback loop.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (ratios measured side by side in one run).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
feedback_app = typer.Typer(help="Send feedback events.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
buffer_app = typer.Typer(help="Inspect the replay buffer.", no_args_is_help=True)
app.add_typer(buffer_app, name="buffer")
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


@app.command()
def rollback(
    to: int | None = typer.Option(None, "--to", help="Version to go back to (default: the live version's parent)."),
    reason: str = typer.Option("", help="Why, for the history."),
) -> None:
    """Point the live alias back; every API replica swaps to it."""
    from online.connections import redis_client
    from online.registry import ModelRegistry

    settings = _settings()
    registry = ModelRegistry(redis_client(settings), settings.models_dir, settings.key_prefix)
    try:
        change = registry.rollback(to, reason or "manual rollback (CLI)")
    except (KeyError, ValueError) as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"live: version {change.version} (was {change.previous})")


@feedback_app.command("send")
def feedback_send(
    file: Path | None = typer.Option(None, "--file", "-f", help="JSONL file, one event per line."),
    text: str | None = typer.Option(None, help="Label event: the text..."),
    label: str | None = typer.Option(None, help="...and its correct label (or the right label for a thumbs down)."),
    prediction_id: str | None = typer.Option(None, help="Thumbs event: the prediction judged..."),
    vote: str | None = typer.Option(None, help="...up or down."),
    source: str = typer.Option("cli", help="Client id (rate limits are per source)."),
    api: str | None = typer.Option(None, help="API base URL (default: ONLINE_API_HOST:ONLINE_API_PORT)."),
    batch: int = typer.Option(200, min=1, help="Events per request."),
) -> None:
    """Send one event, or every event of a JSONL file (with a progress bar), through the API."""
    from pydantic import ValidationError

    from online.events import EVENT_ADAPTER
    from services.feedback_cli import SendFailed, read_jsonl, send

    settings = Settings()
    url = api or f"http://{settings.api_host}:{settings.api_port}"
    if file is not None:
        events, errors = read_jsonl(file, source)
        for err in errors:
            console.print(f"[red]skipped[/] {err}")
    else:
        raw: dict = {"source": source}
        if prediction_id:
            raw.update(kind="thumbs", prediction_id=prediction_id, vote=vote, label=label)
        else:
            raw.update(kind="label", text=text, label=label)
        try:
            events, errors = [EVENT_ADAPTER.validate_python({k: v for k, v in raw.items() if v is not None})], []
        except ValidationError as exc:
            raise typer.BadParameter(str(exc)) from exc
    try:
        send(url, events, batch, console)
    except (SendFailed, OSError) as exc:
        console.print(f"[red]failed:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"accepted {len(events)} event(s)" + (f", skipped {len(errors)} bad line(s)" if errors else ""))
    if errors:
        raise typer.Exit(1)


@buffer_app.command("stats")
def buffer_stats() -> None:
    """Per label: stored, total events, new since the last round, duplicates, dead-lettered, evicted."""
    from services.feedback_cli import buffer_table

    console.print(buffer_table(_settings()))


@bench_app.command("ingest")
def bench_ingest(events: int = typer.Option(50_000, help="Events to push through.")) -> None:
    """Producer -> Kafka -> consumer -> replay buffer, against the broker's raw produce+consume rate."""
    from services.bench.ingest import run_bench_ingest

    _logging("WARNING")
    run_bench_ingest(Settings(), events, wide_console())


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


def main() -> None:
    """Console-script entry: configuration mistakes end with one clear line, not a traceback."""
    from online.connections import NotConfigured
    from online.data import DataNotFound
    from services.embedded import ServerError

    try:
        app(prog_name="online")
    except (NotConfigured, DataNotFound, ServerError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
