"""`online quarantine list|release|drop`: feedback held as possible poisoning."""

from __future__ import annotations

import typer

from services import views
from services.commands.common import ApiUrl, JsonFlag, admin, console

app = typer.Typer(help="Feedback held as possible poisoning: list, release, drop.", no_args_is_help=True)


@app.command("list")
def quarantine_list(
    limit: int = typer.Option(50, help="Held samples to show."), as_json: bool = JsonFlag, api: str | None = ApiUrl
) -> None:
    """Held samples and per-source statistics."""
    with admin(api) as backend:
        out = backend.quarantine(limit)
    if as_json:
        return views.print_json(out)
    views.quarantine(console, out)


@app.command("release")
def quarantine_release(
    sids: list[str] = typer.Argument(None, help="Held sample ids (from `online quarantine list`)."),
    source: str | None = typer.Option(
        None,
        help="Release all this source sent (a source name, or an origin such as addr:10.0.0.7), and trust its"
        " feedback key from now on.",
    ),
    api: str | None = ApiUrl,
) -> None:
    """Release held samples: the next round trains on them."""
    with admin(api) as backend:
        console.print(f"released {backend.release(sids or [], source).changed}")


@app.command("drop")
def quarantine_drop(
    sids: list[str] = typer.Argument(None, help="Held sample ids."),
    source: str | None = typer.Option(None, help="Drop everything held from this source."),
    api: str | None = ApiUrl,
) -> None:
    """Delete held samples for good."""
    with admin(api) as backend:
        console.print(f"dropped {backend.drop(sids or [], source).changed}")
