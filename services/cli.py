"""The `online` command line (typer + rich)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from online.logs import configure_logging
from online.settings import Settings
from services import cli_remote
from services.cli_remote import ApiUrl, gate_table
from services.supervisor import running_stack

if TYPE_CHECKING:  # bench/ is a development tool: not in the Docker image
    from bench.report import BenchConsole

app = typer.Typer(
    help="online: a continual-learning text classifier server with a feedback loop.", no_args_is_help=True
)
bench_app = typer.Typer(help="Benchmarks (ratios measured side by side in one run).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
feedback_app = typer.Typer(help="Send feedback events.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
buffer_app = typer.Typer(help="Inspect the replay buffer.", no_args_is_help=True)
app.add_typer(buffer_app, name="buffer")
console = Console(soft_wrap=True)  # messages never wrap mid-path; tables still fit the width


def _version(show: bool) -> None:
    if show:
        from online import __version__

        console.print(f"online {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """online: a continual-learning text classifier server with a feedback loop."""


def _print_json(data: object) -> None:
    """Machine-readable output of a read command (``--json``): one JSON document on stdout."""
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


JsonFlag = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _settings() -> Settings:
    """Settings from the environment; server addresses of a running `online up` fill the gaps."""
    return running_stack(Settings())


def _logging(level: str = "INFO") -> None:
    """Console output on a terminal, JSON lines otherwise (``ONLINE_LOG_FORMAT``): ``online.logs``."""
    configure_logging(Settings().log_format, level)


def wide_console() -> Console:
    """Benchmark tables are wide; keep them readable when output goes to a file or a pipe."""
    return Console(width=max(console.width, 160))


JsonOut = typer.Option(None, "--json", metavar="PATH", help="Also write the results as JSON rows to PATH.")


def _save(bench_console: BenchConsole, path: Path | None) -> None:
    if path is not None:
        bench_console.write(path)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


TextColumn = typer.Option(None, "--text-column", help="Text column of your file (default: text).")
LabelColumn = typer.Option(None, "--label-column", help="Label column of your file (default: label).")


def _data_options(settings: Settings, **given: object) -> Settings:
    """Settings with the command line's data options (paths made absolute: child processes inherit them)."""
    update = {k: (Path(v).resolve() if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    return settings.model_copy(update=update)


@app.command()
def up(
    replicas: int = typer.Option(1, "--replicas", min=1, help="API processes, on ONLINE_API_PORT and the next ports."),
    data: Path | None = typer.Option(
        None, "--data", help="Your labelled file (CSV, TSV, JSONL, Parquet) for version 1."
    ),
    test: Path | None = typer.Option(None, "--test", help="Its test file (default: a stratified split of --data)."),
    text_column: str | None = TextColumn,
    label_column: str | None = LabelColumn,
    base_model: str | None = typer.Option(None, "--base-model", help="Local Hugging Face encoder directory."),
    model: Path | None = typer.Option(None, "--model", help="Your fine-tuned classifier directory, as version 1."),
) -> None:
    """Start everything: local broker + Redis (unless configured), API, feedback consumer, trainer;
    restart whatever dies. Version 1 is trained on --data (default: the CLINC150 demo) or imported (--model)."""
    from online.learning.version_one import seed_data
    from services.supervisor import run_up

    _logging()
    settings = _data_options(
        Settings(), seed_data=data, seed_test=test, text_column=text_column, label_column=label_column,
        base_model=str(Path(base_model).resolve()) if base_model else None, seed_model=model,
    )  # fmt: skip
    if settings.seed_model:  # a classifier that cannot be served as it is fails here, before anything starts
        from online.lifecycle.importer import ImportRefused, convert

        if not (settings.seed_test or settings.seed_data or settings.golden_path):
            raise typer.BadParameter("--model needs labelled test texts of its labels: --test FILE (or --data)")
        try:
            console.print(
                f"imported classifier: {len(convert(settings.seed_model, settings.models_dir).labels)} labels"
            )
        except ImportRefused as exc:
            console.print(f"[red]refused:[/] {exc}")
            raise typer.Exit(2) from None
    if settings.seed_data:
        train, held = seed_data(settings)  # a bad file fails here, before anything starts
        console.print(
            f"seed data: {len(train)} examples, {len({lab for _, lab in train})} labels, {len(held)} test examples"
        )
    raise typer.Exit(run_up(settings, replicas=replicas))


@app.command()
def stack() -> None:
    """Run only the embedded Tansu broker and Redis, for running the other parts by hand."""
    from services.supervisor import EmbeddedStack

    _logging()
    stop = _stop_event()
    s = EmbeddedStack.start(Settings())
    console.print(f"export ONLINE_KAFKA_BOOTSTRAP={s.settings.kafka_bootstrap}")
    console.print(f"export ONLINE_REDIS_URL={s.settings.redis_url}")
    try:
        stop.wait()
    finally:
        s.stop()


@app.command()
def serve(
    host: str | None = typer.Option(None, "--host", help="Bind address (default: ONLINE_API_HOST)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: ONLINE_API_PORT)."),
) -> None:
    """Run the HTTP API (one replica)."""
    import uvicorn

    from services.api.app import create_app

    _logging()
    settings = _settings()
    given = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    settings = settings.model_copy(update=given) if given else settings
    from online.learning.fit import configure_threads

    configure_threads(settings.num_threads)
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")


@app.command()
def consume() -> None:
    """Run the feedback consumer (Kafka -> replay buffer)."""
    from consumers.feedback import run_consumer

    _logging()
    run_consumer(_settings(), _stop_event())


@app.command()
def train(
    now: bool = typer.Option(False, "--now", help="Run one round at once (waiting for the leader lock) and exit."),
) -> None:
    """Run the trainer scheduler (version 1 on an empty registry, then continual rounds)."""
    from services.trainer import run_trainer, train_now

    _logging()
    if not now:
        run_trainer(_settings(), _stop_event())
        return
    report = train_now(_settings(), _stop_event())
    if report is None:
        console.print("[red]no round:[/] stopped, or the leader lock was not free in time")
        raise typer.Exit(1)
    console.print(report.summary())
    if report.gate is not None:
        console.print(gate_table(report.gate.model_dump()))
    raise typer.Exit(0 if report.status in ("promoted", "idle") else 3)


models_app = typer.Typer(help="Model versions: list, show, promote, rollback, import.", invoke_without_command=True)
app.add_typer(models_app, name="models")


def _stores():
    """The stores of the running stack (``online.stores``), as every other process builds them."""
    from online.wiring.stores import Stores

    return Stores.from_settings(_settings())


@models_app.callback()
def models(ctx: typer.Context, api: str | None = ApiUrl) -> None:
    """Model versions: `online models` alone lists them (as `online models list`)."""
    if not ctx.invoked_subcommand:
        models_list(as_json=False, api=api)


@models_app.command("list")
def models_list(as_json: bool = JsonFlag, api: str | None = ApiUrl) -> None:
    """Every version (the live one marked), then the history of the live alias."""
    if api:
        return cli_remote.models_list(api, as_json, console)
    stores = _stores()
    registry, live_acc = stores.registry, stores.live_accuracy
    live = registry.live()
    manifests, history = registry.list(), registry.history()
    if as_json:
        _print_json(
            {
                "live": live,
                "versions": [
                    m.model_dump(exclude={"labels", "gate"})
                    | {"labels": len(m.labels), "gate_passed": (m.gate or {}).get("passed"),
                       "live_accuracy": live_acc.get(m.version).accuracy, "live_judged": live_acc.get(m.version).n}
                    for m in manifests
                ],
                "history": [ch.model_dump() for ch in history],
            }
        )  # fmt: skip
        return
    table = Table("version", "live", "parent", "status", "created", "labels", "gate", "golden", "live acc (n)")
    for m in manifests:
        acc = live_acc.get(m.version)
        gate = (
            ""
            if m.gate is None
            else (
                "passed"
                if m.gate.get("passed")
                else "failed: " + ", ".join(c["name"] for c in m.gate.get("checks", []) if not c["passed"])
            )
        )
        table.add_row(
            str(m.version),
            "●" if m.version == live else "",
            str(m.parent or ""),
            m.status,
            cli_remote.when(m.created_at),
            str(len(m.labels)),
            gate,
            f"{m.metrics['golden_accuracy']:.4f}" if "golden_accuracy" in m.metrics else "",
            f"{acc.accuracy:.3f} ({acc.n})" if acc.n else "",
        )
    console.print(table)
    history_table = Table("when", "action", "version", "previous", "reason", title="live alias history")
    for ch in history[-15:]:
        style = {"auto_rollback": "bold red", "rollback": "yellow"}.get(ch.action, "")
        history_table.add_row(
            cli_remote.when(ch.at),
            f"[{style}]{ch.action}[/]" if style else ch.action,
            str(ch.version),
            str(ch.previous or ""),
            ch.reason,
        )
    console.print(history_table)


@models_app.command("import")
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
    (against live when one is) and, when it passes, goes live on every replica."""
    from online.labelled_file import Columns, read_labelled
    from online.lifecycle.importer import ImportRefused, import_classifier

    stores = _stores()
    settings = _data_options(stores.settings, text_column=text_column, label_column=label_column)
    examples = read_labelled(test, Columns.of(settings)) if test else []
    try:
        manifest, report = import_classifier(settings, stores.registry, path, examples, reason)
    except ImportRefused as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(gate_table(report.model_dump()))
    if not report.passed:
        console.print(
            f"[red]refused by the gate:[/] version {manifest.version} rejected ({', '.join(report.failed())})"
        )
        raise typer.Exit(1)
    console.print(f"live: version {manifest.version} ({len(manifest.labels)} labels, from {path})")


@app.command("eval")
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

    stores = _stores()
    settings = _data_options(stores.settings, text_column=text_column, label_column=label_column)
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
    console.print(
        f"[bold]version {version}[/] on {data.name}: accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f} "
        f"({report.examples} texts, {len(report.per_label)} labels)"
    )
    if report.unknown_labels:
        console.print(f"[yellow]labels the model does not have[/] (always wrong): {', '.join(report.unknown_labels)}")
    table = Table("label", "precision", "recall", "f1", "support", title="per label, worst first")
    for label, sc in sorted(report.per_label.items(), key=lambda kv: (kv[1].f1, kv[0])):
        table.add_row(label, f"{sc.precision:.3f}", f"{sc.recall:.3f}", f"{sc.f1:.3f}", str(sc.support))
    console.print(table)
    if report.confused:
        pairs = Table("label", "predicted as", "times", title="most confused")
        for c in report.confused:
            pairs.add_row(c.label, c.predicted, str(c.count))
        console.print(pairs)


@models_app.command("promote")
def models_promote(
    version: int = typer.Argument(..., help="A published version."),
    reason: str = typer.Option("", help="Why, for the history."),
    api: str | None = ApiUrl,
) -> None:
    """Make a published version live (its weights are checked first); every API replica swaps to it."""
    if api:
        return cli_remote.live_change(api, console, promote=version, reason=reason or "manual promotion (CLI)")
    from online.lifecycle import promotion
    from online.lifecycle.registry import IntegrityError, LiveMoved

    try:
        change = promotion.promote(_stores().registry, version, reason or "manual promotion (CLI)")
    except (KeyError, ValueError, IntegrityError, LiveMoved) as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"live: version {change.version} (was {change.previous})")


@models_app.command("show")
def models_show(
    version: int = typer.Argument(..., help="Version to show."), as_json: bool = JsonFlag, api: str | None = ApiUrl
) -> None:
    """One version: manifest, round statistics and the gate report, check by check."""
    if api:
        return cli_remote.models_show(api, version, as_json, console)
    stores = _stores()
    registry, live_acc = stores.registry, stores.live_accuracy
    try:
        m = registry.get(version)
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(1) from None
    acc = live_acc.get(version)
    if as_json:
        _print_json(
            m.model_dump() | {"live": registry.live() == m.version, "live_accuracy": acc.accuracy, "live_judged": acc.n}
        )
        return
    console.print(
        f"[bold]version {m.version}[/] ({m.status}{', live' if registry.live() == m.version else ''}), "
        f"parent {m.parent}, created {cli_remote.when(m.created_at)}, {len(m.labels)} labels, sha256 {m.sha256[:16]}"
    )
    console.print(f"metrics: {', '.join(f'{k}={v:.4f}' for k, v in m.metrics.items())}")
    if acc.n:
        console.print(f"live accuracy from feedback: {acc.accuracy:.4f} over {acc.n} judged predictions")
    if m.round:
        console.print(
            "round: "
            + ", ".join(f"{k}={v}" for k, v in m.round.items() if k != "added_labels")
            + (f", added labels={len(m.round.get('added_labels', []))}" if m.round.get("added_labels") else "")
        )
    if m.gate:
        console.print(gate_table(m.gate))


def _memory_cells(memory: dict[str, int] | None) -> tuple[str, str]:
    """A replica's correction memory: entries by state, and its hit rate (answers from memory)."""
    if memory is None:
        return "off", "-"
    states = f"{memory.get('active', 0)} active, {memory.get('absorbed', 0)} absorbed, " + (
        f"{memory.get('held', 0)} held, {memory.get('pending', 0)} pending"
    )
    answered = memory.get("answers_model", 0) + memory.get("answers_memory", 0)
    hits = memory.get("answers_memory", 0)
    return states, f"{hits} of {answered}" + (f" ({100 * hits / answered:.1f}%)" if answered else "")


@app.command()
def status(as_json: bool = JsonFlag, api: str | None = ApiUrl) -> None:
    """Everything at a glance: live version, replicas, buffer, last rounds, drift signals and alerts."""
    if api:  # refused, not silently answered from whatever local stack there is
        console.print(
            f"[red]status reads the stack's Redis directly.[/] Against {api}: `online models list --api`, "
            f"`online buffer stats --api`, GET {api}/v1/drift, or the dashboard at {api}/dashboard"
        )
        raise typer.Exit(2)
    from services.admin.drift import drift_report

    stores = _stores()
    settings, registry = stores.settings, stores.registry
    live = registry.live()
    paused = stores.control.paused()
    if as_json:
        _print_json(_status_document(stores, live, paused, drift_report(stores)))
        return
    console.print(
        f"[bold]live version:[/] {live}   training: "
        + ("running" if paused is None else f"[yellow]paused[/] ({paused.get('reason', '')})")
    )

    replicas = Table(
        "replica", "serves", "engine", "last seen", "memory", "from memory", "load error", title="API replicas"
    )
    for beat in stores.replicas.all():
        age = beat.age_s()
        stale = age > 3 * settings.model_poll_s + 5
        replicas.add_row(
            beat.replica,
            str(beat.version),
            beat.engine or "",
            f"{age:.0f} s ago" + (" [red](stale)[/]" if stale else ""),
            *_memory_cells(beat.memory),
            beat.last_load_error or "",
        )
    console.print(replicas)
    console.print(f"[bold]correction log:[/] {stores.corrections.size()} taught corrections (memory states above)")
    _print_supervised(settings)

    buffer = stores.buffer
    stats = buffer.stats()
    console.print(
        f"[bold]buffer:[/] {buffer.size()} samples, {buffer.new_count()} new since the last round, "
        f"{len([s for s in stats if s.stored])} labels, {sum(s.dead_lettered for s in stats)} dead-lettered"
    )
    _print_screening(stores)

    rounds = Table("version", "parent", "status", "new", "rehearsed", "gate", "train s", "created", title="last rounds")
    for m in [m for m in registry.list() if m.round.get("kind") == "continual"][-5:]:
        gate = (
            "passed"
            if (m.gate or {}).get("passed")
            else "failed: " + ", ".join(c["name"] for c in (m.gate or {}).get("checks", []) if not c["passed"])
        )
        rounds.add_row(
            str(m.version),
            str(m.parent),
            m.status,
            str(m.round.get("new")),
            str(m.round.get("rehearsed")),
            gate,
            f"{m.round.get('train_s', 0):.1f}",
            cli_remote.when(m.created_at),
        )
    console.print(rounds)

    report = drift_report(stores)
    drift = Table("replica", "signal", "value", "threshold", "alert", title=f"drift (window {settings.drift_window})")
    for snap in report["replicas"]:
        for name, sig in snap["signals"].items():
            drift.add_row(
                snap["replica"],
                name,
                f"{sig['value']:.4g}",
                f"{sig['threshold']:.4g}",
                "[red]ALERT[/]" if sig["alert"] else "ok",
            )
    for name, sig in report["feedback"].items():
        drift.add_row(
            "(feedback)",
            name,
            f"{sig['value']:.4g}",
            f"{sig['threshold']:.4g}",
            "[red]ALERT[/]" if sig["alert"] else "ok",
        )
    console.print(drift)
    accs = Table("version", "judged", "live accuracy", "vs parent", title="live accuracy from feedback")
    for e in report["live_accuracy"]:
        vs = e.get("vs_parent")
        accs.add_row(
            f"{e['version']}" + (" (live)" if e["live"] else ""),
            str(e["n"]),
            "" if e["accuracy"] is None else f"{e['accuracy']:.3f}",
            "" if not vs or vs["drop"] is None else f"{-vs['drop']:+.3f} (p={vs['p_value']:.2g})",
        )
    console.print(accs)
    vol = report["feedback_volume"]
    console.print(
        f"[bold]feedback:[/] {sum(n for _, n in vol[-10:])} events in the last 10 min, "
        f"{sum(n for _, n in vol)} in the last hour"
    )
    alerts = report["alerts"]
    console.print(
        "[bold]alerts:[/] "
        + ("[green]none[/]" if not alerts else ", ".join(f"[red]{a['signal']}[/]={a['value']:.3g}" for a in alerts))
    )


def _status_document(stores, live: int | None, paused: dict | None, report: dict) -> dict:
    """What `online status` shows, as one JSON document (a monitoring script's input)."""
    from dataclasses import asdict

    buffer = stores.buffer
    stats = buffer.stats()
    rounds = [m for m in stores.registry.list() if m.round.get("kind") == "continual"][-5:]
    return {
        "live_version": live,
        "training": {"paused": paused is not None, "reason": (paused or {}).get("reason")},
        "replicas": [asdict(b) | {"age_s": b.age_s()} for b in stores.replicas.all()],
        "correction_log": stores.corrections.size(),
        "buffer": {
            "samples": buffer.size(),
            "new": buffer.new_count(),
            "labels": len([st for st in stats if st.stored]),
            "dead_lettered": sum(st.dead_lettered for st in stats),
            "held": buffer.held_count(),
        },
        "rounds": [
            {
                "version": m.version,
                "parent": m.parent,
                "status": m.status,
                "created_at": m.created_at,
                "gate_passed": (m.gate or {}).get("passed"),
                **{k: m.round.get(k) for k in ("new", "rehearsed", "train_s")},
            }
            for m in rounds
        ],  # fmt: skip
        "drift": {k: report[k] for k in ("replicas", "feedback", "live_accuracy", "alerts")},
        "feedback_volume": report["feedback_volume"],
    }


def _print_screening(stores) -> None:
    """Held feedback per source and reason, pending new labels, quarantined sources: never silent."""
    from online.feedback.quarantine import screening_summary

    summary = screening_summary(stores.buffer, stores.sources, stores.labels.approved())
    held = summary["held"]
    if not held["total"] and not summary["quarantined_sources"]:
        console.print("[bold]screening:[/] nothing held")
        return
    table = Table("source", "held", "why", title=f"feedback held by the screen ({held['total']})")
    for source, kinds in held["by_source"].items():
        table.add_row(source, str(sum(kinds.values())), ", ".join(f"{k}: {n}" for k, n in kinds.items()))
    console.print(table)
    if summary["pending_labels"]:
        pending = ", ".join(f"{p['label']} ({p['examples']})" for p in summary["pending_labels"])
        console.print(f"[bold]pending new labels:[/] {pending}  -> `online labels approve LABEL`")
    if summary["quarantined_sources"]:
        bad = ", ".join(summary["quarantined_sources"])
        console.print(f"[bold]quarantined sources:[/] [red]{bad}[/]  -> `online quarantine release --source SOURCE`")


def _print_supervised(settings: Settings) -> None:
    """The processes a running `online up` supervises in this state dir, with their restart counts."""
    from services.supervisor import STACK_FILE

    try:
        info = json.loads((settings.state_dir / STACK_FILE).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return
    procs = info.get("processes", {})
    if procs:
        table = Table("process", "pid", "restarts", title=f"supervised by `online up` (pid {info['pid']})")
        for name, p in procs.items():
            table.add_row(name, str(p["pid"]), f"[yellow]{p['restarts']}[/]" if p["restarts"] else "0")
        console.print(table)


@models_app.command("rollback")
def models_rollback(
    to: int | None = typer.Option(None, "--to", help="Version to go back to (default: the live version's parent)."),
    reason: str = typer.Option("", help="Why, for the history."),
    api: str | None = ApiUrl,
) -> None:
    """Point the live alias back; every API replica swaps to it (also `online rollback`)."""
    if api:
        return cli_remote.live_change(api, console, to=to, reason=reason or "manual rollback (CLI)")
    from online.lifecycle import promotion
    from online.lifecycle.registry import IntegrityError, LiveMoved

    try:
        change = promotion.rollback(_stores().registry, to, reason or "manual rollback (CLI)")
    except (KeyError, ValueError, IntegrityError, LiveMoved) as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"live: version {change.version} (was {change.previous})")


app.command("rollback", help="Point the live alias back (same as `online models rollback`).")(models_rollback)

labels_app = typer.Typer(help="New labels: which wait to go live, and approving them.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("pending")
def labels_pending(api: str | None = ApiUrl) -> None:
    """New labels whose examples are held until the label may go live (ONLINE_LABEL_POLICY)."""
    if api:
        return cli_remote.labels_pending(api, console)
    from online.feedback.quarantine import screening_summary

    stores = _stores()
    summary = screening_summary(stores.buffer, stores.sources, stores.labels.approved())
    table = Table("label", "examples", "sources", "why it waits", title="pending new labels")
    for p in summary["pending_labels"]:
        table.add_row(p["label"], str(p["examples"]), ", ".join(p["sources"]), p["reason"])
    console.print(table)
    console.print(f"approved so far: {', '.join(summary['approved_labels']) or 'none'}")


@labels_app.command("approve")
def labels_approve(
    label: str = typer.Argument(..., help="The new label to let go live."), api: str | None = ApiUrl
) -> None:
    """Let a new label go live (remembered); its held examples are trained by the next round."""
    if api:
        return cli_remote.approve_label(api, label, console)
    from online.feedback.quarantine import approve_label

    stores = _stores()
    new, released = approve_label(stores.labels, stores.buffer, label)
    console.print(f"{label!r} {'approved' if new else 'was already approved'}; {released} held examples released")


training_app = typer.Typer(help="Pause or resume continual training.", no_args_is_help=True)
app.add_typer(training_app, name="training")


def _control():
    return _stores().control


@training_app.command("pause")
def training_pause(
    reason: str = typer.Option("", help="Why, shown in `online training status`."), api: str | None = ApiUrl
) -> None:
    """No new round starts until resumed (a running round finishes)."""
    if api:
        return cli_remote.training(api, console, "pause", reason or "paused (CLI)")
    _control().pause(reason or "paused (CLI)")
    console.print("training paused")


@training_app.command("resume")
def training_resume(api: str | None = ApiUrl) -> None:
    if api:
        return cli_remote.training(api, console, "resume")
    _control().resume()
    console.print("training resumed")


@training_app.command("status")
def training_status(api: str | None = ApiUrl) -> None:
    if api:
        return cli_remote.training(api, console, "status")
    state = _control().paused()
    console.print(
        "running" if state is None else f"paused since {cli_remote.when(state['at'])}: {state.get('reason', '')}"
    )


quarantine_app = typer.Typer(help="Feedback held as possible poisoning: list, release, drop.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(
    limit: int = typer.Option(50, help="Held samples to show."), as_json: bool = JsonFlag, api: str | None = ApiUrl
) -> None:
    """Held samples and per-source statistics."""
    from dataclasses import asdict

    if api:
        return cli_remote.quarantine_list(api, limit, as_json, console)

    stores = _stores()
    buffer, ledger = stores.buffer, stores.sources
    if as_json:
        _print_json(
            {
                "held_count": buffer.held_count(),
                "held": [asdict(h) for h in buffer.held(limit)],
                "sources": ledger.stats(),
            }
        )
        return
    held = Table("sid", "source", "sources", "label", "text", "reason", "since", title=f"held ({buffer.held_count()})")
    for h in buffer.held(limit):
        held.add_row(h.sid, h.source, str(h.sources), h.label, h.text[:60], h.reason, cli_remote.when(h.at))
    console.print(held)
    sources = Table("source", "events", "judged", "contradicted", "rate", "quarantined", title="sources")
    for name, st in ledger.stats().items():
        rate = f"{st['contradicted'] / st['judged']:.2f}" if st["judged"] else ""
        sources.add_row(
            name,
            str(st["events"]),
            str(st["judged"]),
            str(st["contradicted"]),
            rate,
            "[red]yes[/]" if st["quarantined"] else "",
        )
    console.print(sources)


@quarantine_app.command("release")
def quarantine_release(
    sids: list[str] = typer.Argument(None, help="Held sample ids (from `online quarantine list`)."),
    source: str | None = typer.Option(None, help="Trust this source again and release all it sent."),
    api: str | None = ApiUrl,
) -> None:
    """Release held samples: the next round trains on them."""
    from online.feedback import quarantine

    if api:
        return cli_remote.quarantine_change(api, console, "release", sids or [], source)

    stores = _stores()
    console.print(f"released {quarantine.release(stores.buffer, stores.sources, sids or [], source)}")


@quarantine_app.command("drop")
def quarantine_drop(
    sids: list[str] = typer.Argument(None, help="Held sample ids."),
    source: str | None = typer.Option(None, help="Drop everything held from this source."),
    api: str | None = ApiUrl,
) -> None:
    """Delete held samples for good."""
    from online.feedback import quarantine

    if api:
        return cli_remote.quarantine_change(api, console, "drop", sids or [], source)

    stores = _stores()
    console.print(f"dropped {quarantine.drop(stores.buffer, stores.corrections, sids or [], source)}")


@feedback_app.command("send")
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
    from pydantic import ValidationError

    from online.events import EVENT_ADAPTER
    from services.cli_feedback import SendFailed, read_jsonl, send

    settings = Settings()
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
        send(url, events, batch, console)
    except (SendFailed, OSError) as exc:
        console.print(f"[red]failed:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"accepted {len(events)} event(s)" + (f", skipped {len(errors)} bad line(s)" if errors else ""))
    if errors:
        raise typer.Exit(1)


@buffer_app.command("stats")
def buffer_stats(as_json: bool = JsonFlag, api: str | None = ApiUrl) -> None:
    """Per label: stored, total events, new since the last round, duplicates, dead-lettered, evicted."""
    if api:
        return cli_remote.buffer_stats(api, as_json, console)
    from dataclasses import asdict

    from services.cli_feedback import buffer_table

    buffer = _stores().buffer
    if as_json:
        _print_json(
            {"cursor": buffer.cursor(), "capacity": buffer.capacity, "labels": [asdict(r) for r in buffer.stats()]}
        )
        return
    console.print(buffer_table(buffer))


@bench_app.command("ingest")
def bench_ingest(
    events: int = typer.Option(50_000, help="Events to push through."),
    json_out: Path | None = JsonOut,
) -> None:
    """Producer -> Kafka -> consumer -> replay buffer, against the broker's raw produce+consume rate."""
    from bench.ingest import run_bench_ingest
    from bench.report import BenchConsole

    _logging("WARNING")
    console = BenchConsole("ingest")
    run_bench_ingest(Settings(), events, console)
    _save(console, json_out)


@bench_app.command("serve")
def bench_serve(
    requests: int = typer.Option(600, help="Requests per concurrency level and server."),
    concurrency: str = typer.Option("1,8,32", help="Comma-separated concurrency levels."),
    eval_limit: int = typer.Option(0, help="CLINC150 test texts for the accuracy check (0: all 4500)."),
    json_out: Path | None = JsonOut,
) -> None:
    """HTTP API vs a naive server vs the raw in-process batched forward, side by side."""
    from bench.report import BenchConsole
    from bench.serve import run_bench_serve

    _logging("WARNING")
    console = BenchConsole("serve")
    run_bench_serve(Settings(), requests, [int(c) for c in concurrency.split(",")], eval_limit, console)
    _save(console, json_out)


@bench_app.command("swap")
def bench_swap(
    versions: int = typer.Option(5, help="Versions promoted one after another (then one rollback)."),
    steady_requests: int = typer.Option(3000, help="Requests of the steady phase."),
    concurrency: int = typer.Option(32, help="Concurrent clients, spread over the two replicas."),
    interval: float = typer.Option(3.0, help="Seconds between swaps."),
    json_out: Path | None = JsonOut,
) -> None:
    """Hot swaps under load on two API processes: errors, p99 against steady, time to swap."""
    from bench.report import BenchConsole
    from bench.swap import run_bench_swap

    _logging("WARNING")
    console = BenchConsole("swap")
    run_bench_swap(
        Settings(),
        console,
        versions=versions,
        steady_requests=steady_requests,
        concurrency=concurrency,
        interval_s=interval,
    )
    _save(console, json_out)


@bench_app.command("freshness")
def bench_freshness(
    trials: int = typer.Option(5, help="New intents taught, one after another (one per later domain)."),
    per_intent: int = typer.Option(20, help="Label events that teach each intent."),
    timeout: float = typer.Option(300.0, help="Give up on a trial after this many seconds."),
    json_out: Path | None = JsonOut,
) -> None:
    """Feedback teaching a new intent -> first answer by a version trained on it (whole system)."""
    from bench.freshness import run_bench_freshness
    from bench.report import BenchConsole

    _logging("WARNING")
    console = BenchConsole("freshness")
    run_bench_freshness(Settings(), console, trials=trials, per_intent=per_intent, timeout_s=timeout)
    _save(console, json_out)


@bench_app.command("memory")
def bench_memory(
    similarities: str = typer.Option("0.8,0.85,0.9,0.95", help="Comma-separated similarity thresholds to compare."),
    requests: int = typer.Option(500, help="Single-text requests per memory size for the latency rows."),
    json_out: Path | None = JsonOut,
) -> None:
    """Corrections in memory (0 to 10,000): untouched-traffic and paraphrase accuracy, predict p99."""
    from bench.memory import run_bench_memory
    from bench.report import BenchConsole
    from online.learning.fit import configure_threads

    _logging("WARNING")
    settings = Settings()
    configure_threads(settings.num_threads)
    console = BenchConsole("memory")
    run_bench_memory(
        settings, console, similarities=[float(x) for x in similarities.split(",") if x.strip()],
        latency_requests=requests,
    )  # fmt: skip
    _save(console, json_out)


@bench_app.command("drift")
def bench_drift(
    windows: int = typer.Option(100, help="In-domain windows before the switch."),
    after: int = typer.Option(10, help="Windows after the switch to out-of-scope traffic."),
    json_out: Path | None = JsonOut,
) -> None:
    """In-domain traffic, then out-of-scope: false alarms and windows to alarm for every drift signal."""
    from bench.drift import run_bench_drift
    from bench.report import BenchConsole

    _logging("WARNING")
    console = BenchConsole("drift")
    run_bench_drift(Settings(), console, windows=windows, after=after)
    _save(console, json_out)


@bench_app.command("chaos")
def bench_chaos(
    steady: float = typer.Option(20.0, help="Seconds of steady load before the first fault."),
    settle: float = typer.Option(5.0, help="Seconds of load after each recovery, counted in the fault's row."),
    timeout: float = typer.Option(180.0, help="Longest wait for a recovery (and for the final drain)."),
    json_out: Path | None = JsonOut,
) -> None:
    """Kill -9 Redis, the broker, the consumer, the trainer mid-round and an API replica under load."""
    from bench.chaos import run_bench_chaos
    from bench.report import BenchConsole

    _logging()
    console = BenchConsole("chaos")
    run_bench_chaos(Settings(), console, steady_s=steady, settle_s=settle, timeout_s=timeout)
    _save(console, json_out)


@bench_app.command("poison")
def bench_poison(
    shares: str = typer.Option("0.1,0.3", help="Comma-separated shares of events from hostile sources."),
    per_intent: int = typer.Option(50, help="Feedback events per intent per round."),
    memory_per_intent: int = typer.Option(20, help="Remembered examples per intent for rehearsal."),
    epochs: int = typer.Option(2, help="Epochs a round."),
    rounds: int = typer.Option(3, help="Domains streamed after the seed domains."),
    journeys: bool = typer.Option(True, help="Also the honest-teaching, correction and label-attack rows."),
    json_out: Path | None = JsonOut,
) -> None:
    """Flipped labels from hostile sources, honest teaching and label-space attacks, quarantine on and off."""
    from bench.poison import run_bench_poison
    from bench.report import BenchConsole

    _logging("WARNING")
    console = BenchConsole("poison")
    run_bench_poison(
        Settings(),
        console,
        shares=[float(x) for x in shares.split(",") if x.strip()],
        per_intent=per_intent,
        memory_per_intent=memory_per_intent,
        epochs=epochs,
        rounds=rounds,
        journeys=journeys,
    )
    _save(console, json_out)


@bench_app.command("review")
def bench_review(
    budgets: str = typer.Option("75,150,300,600", help="Comma-separated label budgets."),
    per_intent: int = typer.Option(50, help="Seed-domain train examples per intent for the starting model."),
    epochs: int = typer.Option(2, help="Epochs of the round trained on the bought labels."),
    json_out: Path | None = JsonOut,
) -> None:
    """Active learning: labels for the review queue's picks against random picks, same budget."""
    from bench.report import BenchConsole
    from bench.review import run_bench_review

    _logging("WARNING")
    console = BenchConsole("review")
    run_bench_review(
        Settings(), console, budgets=[int(b) for b in budgets.split(",")], per_intent=per_intent, epochs=epochs
    )
    _save(console, json_out)


@bench_app.command("learn")
def bench_learn(
    methods: str = typer.Option("", help="Comma-separated methods, or all (default: replay-balanced, default, joint)."),
    start: str = typer.Option("first", help="first: version 1 knows domain 1; seed: version 1's seed domains."),
    per_intent: int = typer.Option(100, help="Train examples per intent arriving as feedback (CLINC150 has 100)."),
    memory_per_intent: int = typer.Option(20, help="Remembered examples per intent that rehearsal picks from."),
    epochs: int = typer.Option(2, help="Epochs a round."),
    joint: str = typer.Option("final", help="Joint upper bound: after every round (every), the last (final), off."),
    rounds: int = typer.Option(0, help="Stop after this many rounds (0: the whole stream)."),
    seeds: int = typer.Option(3, min=1, help="Runs of every method, one per seed: mean and spread."),
    out: Path | None = typer.Option(
        Path(".online/bench/learn.json"), "--json", "--out", help="Write the results as JSON here."
    ),
    data: Path | None = typer.Option(None, "--data", help="Your labelled file instead of CLINC150."),
    test: Path | None = typer.Option(None, "--test", help="Its test file (default: a stratified split of --data)."),
    groups: int = typer.Option(
        5, "--groups", help="With --data: label groups; the first starts, each other is a round."
    ),
    text_column: str | None = TextColumn,
    label_column: str | None = LabelColumn,
) -> None:
    """Continual learning on the CLINC150 domain stream (or your labels in --groups groups): our strategies
    against joint and naive training, so you can pick rehearsal settings on your data."""
    from bench.learn import run_bench_learn

    _logging("WARNING")
    if start not in ("seed", "first") or joint not in ("every", "final", "off"):
        raise typer.BadParameter("--start is seed or first; --joint is every, final or off")
    run_bench_learn(
        _data_options(Settings(), text_column=text_column, label_column=label_column),
        wide_console(),
        data=data,
        test=test,
        groups=groups,
        names=[m for m in methods.split(",") if m] or None,
        start=start,
        per_intent=per_intent,
        memory_per_intent=memory_per_intent,
        epochs=epochs,
        joint=joint,
        rounds=rounds or None,
        out=out,
        seeds=seeds,
    )


def main() -> None:
    """Console-script entry: configuration mistakes end with one clear line, not a traceback."""
    from online.connections import NotConfigured
    from online.data import DataNotFound
    from online.labelled_file import DataError
    from services.embedded import ServerError

    try:
        app(prog_name="online")
    except (NotConfigured, DataNotFound, DataError, ServerError) as exc:
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise SystemExit(2) from None
