"""`online models ...` (list, show, promote, canary, rollback, import) and `online eval`."""

from __future__ import annotations

from pathlib import Path

import typer

from online.contract import CanaryRequest
from services import views
from services.commands.common import ApiUrl, JsonFlag, LabelColumn, TextColumn, admin, console, data_options
from services.wiring import current

app = typer.Typer(help="Model versions: list, show, promote (or canary), rollback, import.", invoke_without_command=True)


@app.callback()
def models(ctx: typer.Context, api: str | None = ApiUrl) -> None:
    """Model versions: `online models` alone lists them (as `online models list`)."""
    if not ctx.invoked_subcommand:
        models_list(as_json=False, api=api)


@app.command("list")
def models_list(as_json: bool = JsonFlag, api: str | None = ApiUrl) -> None:
    """Every version (the live one marked), then the history of the live alias."""
    with admin(api) as backend:
        out = backend.models()
    if as_json:
        return views.print_json(out)
    views.models(console, out)


@app.command("show")
def models_show(
    version: int = typer.Argument(..., help="Version to show."), as_json: bool = JsonFlag, api: str | None = ApiUrl
) -> None:
    """One version: manifest, round statistics and the gate report, check by check."""
    with admin(api) as backend:
        out = backend.model(version)
    if as_json:
        return views.print_json(out)
    views.model(console, out)


def _share(value: str) -> float:
    """``10%`` or ``0.1``."""
    try:
        share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: a share such as 10% or 0.1") from None
    if not 0 < share < 1:
        raise typer.BadParameter(f"{value!r}: a share between 0% and 100% (exclusive)")
    return share


@app.command("promote")
def models_promote(
    version: int = typer.Argument(..., help="A published version."),
    canary_share: str | None = typer.Option(
        None, "--canary", help="Not at once: first on this share of traffic (e.g. 10%), stepped up on live evidence."
    ),
    reason: str = typer.Option("", help="Why, for the history."),
    api: str | None = ApiUrl,
) -> None:
    """Make a published version live (its weights are checked first); every API replica swaps to it.
    With --canary, it answers that share of users first and the trainer steps it up (or rolls it back)
    on their feedback: `online models canary` follows it."""
    share = _share(canary_share) if canary_share is not None else None
    with admin(api) as backend:
        if share is None:
            views.live_change(console, backend.promote(version, reason or "manual promotion (CLI)"))
            return
        request = CanaryRequest(action="start", version=version, share=share, reason=reason or "canary (CLI)")
        views.live_change(console, backend.canary_action(request))


@app.command("canary")
def models_canary(
    action: str | None = typer.Argument(
        None, help="pause, resume, promote (to 100% now) or abort; none: show the canary in progress."
    ),
    reason: str = typer.Option("", help="Why, for the history."),
    as_json: bool = JsonFlag,
    api: str | None = ApiUrl,
) -> None:
    """The canary in progress: its share, its evidence against live, the decision due now; or an
    operator's move on it."""
    with admin(api) as backend:
        if action is None:
            out = backend.canary()
            return views.print_json(out) if as_json else views.canary(console, out)
        if action not in ("pause", "resume", "promote", "abort"):
            raise typer.BadParameter(f"{action!r}: one of pause, resume, promote, abort")
        views.live_change(console, backend.canary_action(CanaryRequest(action=action, reason=reason)))  # type: ignore[arg-type]


@app.command("rollback")
def models_rollback(
    to: int | None = typer.Option(None, "--to", help="Version to go back to (default: the live version's parent)."),
    reason: str = typer.Option("", help="Why, for the history."),
    api: str | None = ApiUrl,
) -> None:
    """Point the live alias back; every API replica swaps to it (also `online rollback`)."""
    with admin(api) as backend:
        views.live_change(console, backend.rollback(to, reason or "manual rollback (CLI)"))


@app.command("import")
def models_import(
    path: Path = typer.Argument(..., help="A local AutoModelForSequenceClassification directory (with its tokenizer)."),
    test: Path | None = typer.Option(
        None, "--test", help="Labelled texts of its labels (needed when nothing is live)."
    ),
    text_column: str | None = TextColumn,
    label_column: str | None = LabelColumn,
    reason: str = typer.Option("", help="Why, for the history."),
) -> None:
    """Import a classifier you fine-tuned: its id2label becomes the label set; it goes through the gate
    (against live when one is) and, when it passes, goes live on every replica (or first in shadow when
    ONLINE_SHADOW_SHARE > 0, as a round's candidate does)."""
    from online.labelled_file import Columns, read_labelled
    from online.lifecycle.importer import ImportRefused, import_classifier

    stores = current().stores
    settings = data_options(stores.settings, text_column=text_column, label_column=label_column)
    examples = read_labelled(test, Columns.of(settings)) if test else []
    try:
        manifest, report = import_classifier(settings, stores.registry, path, examples, reason)
    except ImportRefused as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(views.gate_table(report))
    if not report.passed:
        console.print(
            f"[red]refused by the gate:[/] version {manifest.version} rejected ({', '.join(report.failed())})"
        )
        raise typer.Exit(1)
    registry = stores.registry
    if registry.live() == manifest.version:
        console.print(f"live: version {manifest.version} ({len(manifest.labels)} labels, from {path})")
    elif (slot := registry.shadow()) and slot.version == manifest.version:
        console.print(f"in shadow: version {manifest.version} answers {slot.share:.0%} of traffic beside live (ONLINE_SHADOW_SHARE)")
    else:
        console.print(f"[yellow]published, not live:[/] version {manifest.version} (live moved to {registry.live()} meanwhile)")
        raise typer.Exit(1)


def eval_(
    data: Path = typer.Option(..., "--data", help="Labelled file (CSV, TSV, JSONL, Parquet)."),
    version: int | None = typer.Option(None, "--version", help="Version to measure (default: live)."),
    text_column: str | None = TextColumn,
    label_column: str | None = LabelColumn,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Measure a version on your own labelled file: accuracy, macro-F1, per-label precision and recall,
    the most confused pairs."""
    from online.evaluation import evaluate
    from online.labelled_file import Columns, read_labelled

    stores = current().stores
    settings = data_options(stores.settings, text_column=text_column, label_column=label_column)
    examples = read_labelled(data, Columns.of(settings))
    version = version if version is not None else stores.registry.live()
    if version is None:
        console.print("[red]nothing is live yet[/]: name a version with --version")
        raise typer.Exit(1)
    try:
        model, _ = stores.registry.load(version)
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(1) from None
    report = evaluate(model, examples, settings, version)
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    views.evaluation(console, report, version, data.name)
