"""`online feedback send` (through the API, with ``online.client``) and `online buffer stats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError

from services import views
from services.commands.common import ApiUrl, JsonFlag, admin, console
from services.wiring import current

if TYPE_CHECKING:
    from online.client import Client
    from online.events import AnyEvent as Event

app = typer.Typer(help="Send feedback events.", no_args_is_help=True)
buffer_app = typer.Typer(help="Inspect the replay buffer.", no_args_is_help=True)


def read_jsonl(path: Path, default_source: str) -> tuple[list[Event], list[str]]:
    """Events of a JSONL file, validated here so one bad line does not sink a batch; returns errors."""
    from online.events import EVENT_ADAPTER

    events, errors = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if isinstance(raw, dict):
                raw.setdefault("source", default_source)
            events.append(EVENT_ADAPTER.validate_python(raw))
        except (json.JSONDecodeError, ValidationError) as exc:
            errors.append(f"line {n}: {str(exc).splitlines()[0] if isinstance(exc, ValidationError) else exc}")
    return events, errors


def send(api: Client, events: list[Event], batch: int) -> None:
    """``batch`` events a request, with a progress bar; the client retries 429/503 with the same event ids."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]feedback"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("send", total=len(events))
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            api.feedback(chunk)
            bar.advance(task, len(chunk))


@app.command("send")
def feedback_send(
    file: Path | None = typer.Option(None, "--file", "-f", help="JSONL file, one event per line."),
    text: str | None = typer.Option(None, help="Label event: the text..."),
    label: str | None = typer.Option(None, help="...and its correct label (or the right label for a thumbs down)."),
    prediction_id: str | None = typer.Option(None, help="Thumbs event: the prediction judged..."),
    vote: str | None = typer.Option(None, help="...up or down."),
    source: str = typer.Option("cli", help="Client id (rate limits are per source)."),
    api: str | None = typer.Option(
        None, envvar="ONLINE_API_URL", help="API base URL (default: ONLINE_API_HOST:ONLINE_API_PORT)."
    ),
    batch: int = typer.Option(200, min=1, help="Events per request."),
) -> None:
    """Send one event, or every event of a JSONL file (with a progress bar), through the API."""
    import httpx

    from online.client import ApiError, Client
    from online.events import EVENT_ADAPTER

    settings = current().settings
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
        with Client(url, timeout=30, retries=10) as client:
            send(client, events, batch)
    except (ApiError, httpx.TransportError, OSError) as exc:
        console.print(f"[red]failed:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"accepted {len(events)} event(s)" + (f", skipped {len(errors)} bad line(s)" if errors else ""))
    if errors:
        raise typer.Exit(1)


@buffer_app.command("stats")
def buffer_stats(as_json: bool = JsonFlag, api: str | None = ApiUrl) -> None:
    """Per label: stored, total events, new since the last round, duplicates, dead-lettered, evicted."""
    with admin(api) as backend:
        out = backend.buffer()
    if as_json:
        return views.print_json(out)
    views.buffer(console, out)
