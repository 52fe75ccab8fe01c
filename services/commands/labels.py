"""`online labels pending|approve`: new labels waiting to go live."""

from __future__ import annotations

import typer

from services import views
from services.commands.common import ApiUrl, admin, console

app = typer.Typer(help="New labels: which wait to go live, and approving them.", no_args_is_help=True)


@app.command("pending")
def labels_pending(api: str | None = ApiUrl) -> None:
    """New labels whose examples are held until the label may go live (ONLINE_LABEL_POLICY)."""
    with admin(api) as backend:
        views.pending_labels(console, backend.feedback_stats())


@app.command("approve")
def labels_approve(
    label: str = typer.Argument(..., help="The new label to let go live."), api: str | None = ApiUrl
) -> None:
    """Let a new label go live (remembered); its held examples are trained by the next round."""
    with admin(api) as backend:
        views.label_approved(console, backend.approve_label(label))
