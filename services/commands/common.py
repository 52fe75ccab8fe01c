"""What every command group shares: the console, the common options, the admin backend of a command."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from online.settings import Settings
from services.admin.backend import AdminBackend, NotFound, Refused, Unreachable
from services.wiring import current

console = Console(soft_wrap=True)  # messages never wrap mid-path; tables still fit the width

ApiUrl = typer.Option(
    None,
    "--api",
    envvar="ONLINE_API_URL",
    metavar="URL",
    help="Run against this API (with ONLINE_ADMIN_TOKEN) instead of the local Redis and model store.",
)
JsonFlag = typer.Option(False, "--json", help="Print JSON instead of tables.")
TextColumn = typer.Option(None, "--text-column", help="Text column of your file (default: text).")
LabelColumn = typer.Option(None, "--label-column", help="Label column of your file (default: label).")


@contextlib.contextmanager
def admin(api: str | None) -> Iterator[AdminBackend]:
    """The command's admin backend: the API at ``api`` (with ``ONLINE_ADMIN_TOKEN``), else the local
    stores. A refusal prints its reason and exits 1, an unreachable API exits 2."""
    from services.admin.local import LocalAdmin

    try:
        if not api:
            yield LocalAdmin(current().stores)
            return
        from online.client import Client
        from services.admin.remote import RemoteAdmin

        token = current().settings.admin_token
        with Client(api, admin_token=token.get_secret_value() if token else None, retries=2) as client:
            yield RemoteAdmin(client)
    except Unreachable as exc:
        console.print(f"[red]cannot reach {exc.by}:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except Refused as exc:
        if exc.by:
            console.print(f"[red]refused by {exc.by}:[/] {escape(str(exc))}")
        else:
            console.print(
                f"[red]{escape(str(exc))}[/]" if isinstance(exc, NotFound) else f"[red]refused:[/] {escape(str(exc))}"
            )
        raise typer.Exit(1) from None


def data_options(settings: Settings, **given: object) -> Settings:
    """Settings with the command line's data options (paths made absolute: child processes inherit them)."""
    update = {k: (Path(v).resolve() if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    return settings.model_copy(update=update)


def stop_event() -> threading.Event:
    """Set by SIGINT or SIGTERM: long-running commands stop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
