"""`online training pause|resume|status`."""

from __future__ import annotations

import typer

from services import views
from services.commands.common import ApiUrl, admin, console

app = typer.Typer(help="Pause or resume continual training.", no_args_is_help=True)


@app.command("pause")
def training_pause(
    reason: str = typer.Option("", help="Why, shown in `online training status`."), api: str | None = ApiUrl
) -> None:
    """No new round starts until resumed (a running round finishes)."""
    with admin(api) as backend:
        views.training(console, backend.pause(reason or "paused (CLI)"))


@app.command("resume")
def training_resume(api: str | None = ApiUrl) -> None:
    with admin(api) as backend:
        views.training(console, backend.resume())


@app.command("status")
def training_status(api: str | None = ApiUrl) -> None:
    with admin(api) as backend:
        views.training(console, backend.training())
