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


SETTLED = ("held", "memory", "trained", "dead_lettered", "recorded")


def print_fate(api: Client, event_id: str, wait: float, grace: float = 2.0) -> None:
    """Poll the event's status until it settles (held, answered by memory, ...) or ``wait`` runs out; a
    plain "stored" gets ``grace`` seconds more for the correction memory's verdict."""
    import time

    deadline = time.monotonic() + wait
    status = api.feedback_status(event_id)
    while status.state not in SETTLED and time.monotonic() < deadline:
        if status.state == "stored":
            deadline = min(deadline, time.monotonic() + grace)
        time.sleep(0.25)
        status = api.feedback_status(event_id)
    console.print(f"event {event_id}: [bold]{status.state}[/] ({status.detail})")
    if status.release:
        console.print(f"  released by: {status.release}")
    console.print(f"  later: online feedback status {event_id}  (GET /v1/feedback/{event_id})")


def send(api: Client, events: list[Event], batch: int, as_admin: bool = False) -> None:
    """``batch`` events a request, with a progress bar; the client retries 429/503 with the same event ids."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]feedback"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("send", total=len(events))
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            api.feedback(chunk, as_admin=as_admin)
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
    as_admin: bool = typer.Option(
        False, "--admin", help="Send with the admin token (ONLINE_ADMIN_TOKEN): trusted, never held by the screen."
    ),
    api_key: str | None = typer.Option(None, envvar="ONLINE_API_KEY", help="Feedback key (X-API-Key)."),
    wait: float = typer.Option(10.0, min=0, help="One event: seconds to wait for its fate (0: do not wait)."),
) -> None:
    """Send one event, or every event of a JSONL file (with a progress bar), through the API; for one
    event, print what became of it (stored, held and why, answered by the correction memory, ...)."""
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
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    if as_admin and not token:
        raise typer.BadParameter("--admin needs ONLINE_ADMIN_TOKEN")
    try:
        with Client(url, timeout=30, retries=10, admin_token=token, api_key=api_key) as client:
            send(client, events, batch, as_admin)
            console.print(
                f"accepted {len(events)} event(s)" + (f", skipped {len(errors)} bad line(s)" if errors else "")
            )
            if len(events) == 1 and wait > 0:
                print_fate(client, events[0].event_id, wait)
    except (ApiError, httpx.TransportError, OSError) as exc:
        console.print(f"[red]failed:[/] {exc}")
        raise typer.Exit(2) from None
    if errors:
        raise typer.Exit(1)


@app.command("status")
def feedback_status(
    event_id: str = typer.Argument(..., help="The event id `online feedback send` printed."),
    api: str | None = typer.Option(None, envvar="ONLINE_API_URL", help="API base URL."),
    api_key: str | None = typer.Option(None, envvar="ONLINE_API_KEY", help="Feedback key (X-API-Key)."),
    as_json: bool = JsonFlag,
) -> None:
    """What became of a feedback event."""
    from online.client import ApiError, Client

    settings = current().settings
    url = api or f"http://{settings.api_host}:{settings.api_port}"
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    try:
        with Client(url, timeout=10, admin_token=token, api_key=api_key) as client:
            status = client.feedback_status(event_id)
    except ApiError as exc:
        console.print(f"[red]failed:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        return views.print_json(status)
    console.print(f"event {event_id}: [bold]{status.state}[/] ({status.detail})")
    if status.release:
        console.print(f"  released by: {status.release}")


@buffer_app.command("stats")
def buffer_stats(as_json: bool = JsonFlag, api: str | None = ApiUrl) -> None:
    """Per label: stored, total events, new since the last round, duplicates, dead-lettered, evicted."""
    with admin(api) as backend:
        out = backend.buffer()
    if as_json:
        return views.print_json(out)
    views.buffer(console, out)
