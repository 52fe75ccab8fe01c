"""`online forget --source S | --text T`: erase one source's or one text's data."""

from __future__ import annotations

import typer

from services import views
from services.commands.common import ApiUrl, JsonFlag, admin, console


def forget(
    source: str | None = typer.Option(None, "--source", help="Erase everything this source sent: a source name, or an origin such as addr:10.0.0.7 (one keyless client, whatever names it used)."),
    text: str | None = typer.Option(None, "--text", help="Erase this text (any label, any source)."),
    as_json: bool = JsonFlag,
    api: str | None = ApiUrl,
) -> None:
    """Erase a source's or a text's data from the replay buffer, the prediction log, the review queue,
    the correction memory and its log; keep it out of future rounds; say what the weights still hold."""
    if (source is None) == (text is None):
        raise typer.BadParameter("give exactly one of --source or --text")
    with admin(api) as backend:
        out = backend.forget(source, text)
    if as_json:
        return views.print_json(out)
    views.forgotten(console, out)
