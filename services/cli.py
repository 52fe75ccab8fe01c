"""The `online` command line (typer + rich): the command groups of ``services.commands``, assembled.

Commands read Settings once per invocation (``services.wiring``). Other packages add command groups
through the ``online.commands`` entry point group (``bench`` adds `online bench ...`), so this package
never imports them: an image without ``bench/`` simply has no `online bench`.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

import typer
from rich.console import Console

from services.commands import feedback, forget, labels, models, quarantine, serve, status, training
from services.commands.common import console
from services.wiring import Wiring

log = logging.getLogger("online.cli")

app = typer.Typer(
    help="online: a continual-learning text classifier server with a feedback loop.", no_args_is_help=True
)
PLUGINS = "online.commands"


def _version(show: bool) -> None:
    if show:
        from online import __version__

        console.print(f"online {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """online: a continual-learning text classifier server with a feedback loop."""
    if not isinstance(ctx.obj, Wiring):
        ctx.obj = Wiring()  # Settings from the environment once, the stores once, on first use
        ctx.call_on_close(ctx.obj.close)


for name, command in [
    ("up", serve.up),
    ("stack", serve.stack),
    ("serve", serve.serve),
    ("consume", serve.consume),
    ("train", serve.train),
    ("status", status.status),
    ("eval", models.eval_),
]:
    app.command(name)(command)
app.add_typer(models.app, name="models")
app.command("rollback", help="Point the live alias back (same as `online models rollback`).")(models.models_rollback)
app.add_typer(training.app, name="training")
app.add_typer(labels.app, name="labels")
app.add_typer(quarantine.app, name="quarantine")
app.command("forget")(forget.forget)
app.add_typer(feedback.app, name="feedback")
app.add_typer(feedback.buffer_app, name="buffer")


def _plugins(target: typer.Typer) -> None:
    """Command groups other installed packages declare under the ``online.commands`` entry points, e.g.
    ``bench = "bench.cli:app"``. A plugin whose package is absent (the Docker image without ``bench/``
    of an older build) is skipped; any other import error is raised."""
    for ep in entry_points(group=PLUGINS):
        try:
            plugin = ep.load()
        except ModuleNotFoundError as exc:
            if exc.name and ep.value.split(":")[0].startswith(exc.name):
                log.debug("command plugin %s skipped: %s", ep.name, exc)
                continue
            raise
        target.add_typer(plugin, name=ep.name)


_plugins(app)


def main() -> None:
    """Console-script entry: configuration mistakes end with one clear line, not a traceback."""
    from online.connections import NotConfigured
    from online.data import DataNotFound
    from online.labelled_file import DataError
    from online.lifecycle.store import StoreUnavailable
    from services.embedded import ServerError

    try:
        app(prog_name="online")
    except (NotConfigured, DataNotFound, DataError, ServerError, StoreUnavailable) as exc:
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise SystemExit(2) from None
