"""`online status`: everything at a glance, read from the stack's Redis."""

from __future__ import annotations

import typer

from services import views
from services.commands.common import ApiUrl, JsonFlag, console
from services.wiring import current


def status(as_json: bool = JsonFlag, api: str | None = ApiUrl) -> None:
    """Everything at a glance: live version, replicas, buffer, last rounds, drift signals and alerts."""
    if api:  # refused, not silently answered from whatever local stack there is
        console.print(
            f"[red]status reads the stack's Redis directly.[/] Against {api}: `online models list --api`, "
            f"`online buffer stats --api`, GET {api}/v1/drift, or the dashboard at {api}/dashboard"
        )
        raise typer.Exit(2)
    from services.admin.local import LocalAdmin

    report = LocalAdmin(current().stores).status()
    if as_json:
        return views.print_json(report)
    views.status(console, report)
