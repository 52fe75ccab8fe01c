"""The process commands: `online up`, `stack`, `serve`, `consume`, `train`."""

from __future__ import annotations

from pathlib import Path

import typer

from services import views
from services.commands.common import LabelColumn, TextColumn, console, data_options, stop_event
from services.wiring import current


def up(
    replicas: int = typer.Option(1, "--replicas", min=1, help="API processes, on ONLINE_API_PORT and the next ports."),
    data: Path | None = typer.Option(
        None, "--data", help="Your labelled file (CSV, TSV, JSONL, Parquet) for version 1."
    ),
    test: Path | None = typer.Option(None, "--test", help="Its test file (default: a stratified split of --data)."),
    text_column: str | None = TextColumn,
    label_column: str | None = LabelColumn,
    base_model: str | None = typer.Option(
        None,
        "--base-model",
        help="Local Hugging Face encoder directory (--task generate: causal LM directory or .gguf).",
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        help="classify (default: ONLINE_TASK) or generate: a causal LM answering prompts (docs/generate.md).",
    ),
    model: Path | None = typer.Option(None, "--model", help="Your fine-tuned classifier directory, as version 1."),
    store: str | None = typer.Option(
        None, "--store", help="Where versions live: a folder or s3://bucket/prefix (default: ONLINE_MODEL_STORE)."
    ),
) -> None:
    """Start everything: local broker + Redis (unless configured), API, feedback consumer, trainer;
    restart whatever dies. Version 1 is trained on --data (default: the CLINC150 demo) or imported (--model)."""
    from online.learning.version_one import seed_data
    from services.supervisor import run_up

    wiring = current()
    wiring.logging()
    if task not in (None, "classify", "generate"):
        raise typer.BadParameter(f"--task {task!r}: classify or generate")
    generating = (task or wiring.settings.task) == "generate"
    base = str(Path(base_model).resolve()) if base_model else None
    settings = data_options(
        wiring.settings, seed_data=data, seed_test=test, text_column=text_column, label_column=label_column,
        base_model=None if generating else base, seed_model=model,
    )  # fmt: skip
    if generating:
        from online.learning.generative_version_one import generative_base

        settings = settings.model_copy(
            update={"task": "generate", "generate_base_model": base or settings.generate_base_model}
        )
        try:
            console.print(f"generative base model: {generative_base(settings)}")
        except RuntimeError as exc:  # no base given and the default wheel is not installed
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
    if store:
        settings = settings.model_copy(update={"model_store": store if store.startswith("s3://") else Path(store)})
    if settings.seed_model:  # a classifier that cannot be served as it is fails here, before anything starts
        from online.lifecycle.importer import ImportRefused, convert

        if not (settings.seed_test or settings.seed_data or settings.golden_path):
            raise typer.BadParameter("--model needs labelled test texts of its labels: --test FILE (or --data)")
        try:
            console.print(
                f"imported classifier: {len(convert(settings.seed_model, settings.models_dir).labels)} labels"
            )
        except ImportRefused as exc:
            console.print(f"[red]refused:[/] {exc}")
            raise typer.Exit(2) from None
    if settings.seed_data:
        train, held = seed_data(settings)  # a bad file fails here, before anything starts
        console.print(
            f"seed data: {len(train)} examples, {len({lab for _, lab in train})} labels, {len(held)} test examples"
        )
    raise typer.Exit(run_up(settings, replicas=replicas))


def stack() -> None:
    """Run only the embedded Tansu broker and Redis, for running the other parts by hand."""
    from services.supervisor import EmbeddedStack

    wiring = current()
    wiring.logging()
    stop = stop_event()
    s = EmbeddedStack.start(wiring.settings)
    console.print(f"export ONLINE_KAFKA_BOOTSTRAP={s.settings.kafka_bootstrap}")
    console.print(f"export ONLINE_REDIS_URL={s.settings.redis_url}")
    try:
        stop.wait()
    finally:
        s.stop()


def serve(
    host: str | None = typer.Option(None, "--host", help="Bind address (default: ONLINE_API_HOST)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: ONLINE_API_PORT)."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Worker processes on the one port, each a replica (default: ONLINE_API_WORKERS)."
    ),
) -> None:
    """Run the HTTP API (one replica, or one per worker process on the same port)."""
    import os

    # The replica's thread budget: the forward lanes (ONNX Runtime's intra-op pool, or torch, sized by
    # ONLINE_NUM_THREADS, split between workers), the event loop, the side-effect thread. numpy's BLAS
    # (the drift window's statistics, the review picks) runs on one thread: with a pool per core it spun
    # beside the forward pass (measured: 12x the CPU of one thread for the drift window's statistics on 2
    # busy cores). Set before numpy is first imported, which is below (and inherited by workers).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import uvicorn

    from services.api.http_protocol import HttpProtocol
    from services.api.main import prepare_process, serve_workers

    wiring = current()
    wiring.logging()
    given = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    settings = wiring.stack.model_copy(update=given) if given else wiring.stack
    workers = workers or settings.api_workers
    # access_log=False: uvicorn's own line per request stays off (services.api.access writes one, with the id)
    options = {
        "host": settings.api_host, "port": settings.api_port, "log_level": "warning", "access_log": False,
        "proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips, "http": HttpProtocol,
    }  # fmt: skip
    if workers > 1:  # the port is bound here (a socket per worker); the workers read their settings anew
        raise typer.Exit(serve_workers(settings, workers, **options))
    from services.api.app import create_app

    settings = settings.model_copy(update={"api_workers": 1})  # --workers 1 over ONLINE_API_WORKERS=2
    prepare_process(settings)
    uvicorn.run(create_app(settings), **options)


def consume() -> None:
    """Run the feedback consumer (Kafka -> replay buffer)."""
    from consumers.feedback import run_consumer

    wiring = current()
    wiring.logging()
    run_consumer(wiring.stack, stop_event())


def train(
    now: bool = typer.Option(False, "--now", help="Run one round at once (waiting for the leader lock) and exit."),
) -> None:
    """Run the trainer scheduler (version 1 on an empty registry, then continual rounds)."""
    from services.trainer import run_trainer, train_now

    wiring = current()
    wiring.logging()
    if not now:
        run_trainer(wiring.stack, stop_event())
        return
    report = train_now(wiring.stack, stop_event())
    if report is None:
        console.print("[red]no round:[/] stopped, or the leader lock was not free in time")
        raise typer.Exit(1)
    console.print(report.summary())
    if report.gate is not None:
        console.print(views.gate_table(report.gate))
    raise typer.Exit(0 if report.status in ("promoted", "idle") else 3)
