"""Admin commands against a running API (``--api URL`` or ``ONLINE_API_URL``) instead of Redis and the
model volume: how an operator drives the compose stack, or any deployment, from their own machine.

The admin token comes from ``ONLINE_ADMIN_TOKEN``, as the API checks it; a refusal prints the API's reason
and exits 1, an unreachable API exits 2. ``--json`` prints the API's own response model
(``online.contract``), the documented shape of each endpoint (the local ``--json`` documents are the
stores' own, with a few more fields: ``held_count``, label lists).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import httpx
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from online.client import ApiError, Client
from online.settings import Settings

ApiUrl = typer.Option(
    None,
    "--api",
    envvar="ONLINE_API_URL",
    metavar="URL",
    help="Run against this API (with ONLINE_ADMIN_TOKEN) instead of the local Redis and model store.",
)


@contextlib.contextmanager
def remote(url: str, console: Console) -> Iterator[Client]:
    """A client of ``url`` with the admin token; API errors end the command with their reason."""
    token = Settings().admin_token
    try:
        with Client(url, admin_token=token.get_secret_value() if token else None, retries=2) as client:
            yield client
    except ApiError as exc:
        if exc.status == 401 and token is None:
            console.print(f"[red]this command needs the admin token of {url}:[/] set ONLINE_ADMIN_TOKEN")
        else:
            console.print(f"[red]refused by {url}:[/] HTTP {exc.status}: {exc.detail}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        console.print(f"[red]cannot reach {url}:[/] {exc}")
        raise typer.Exit(2) from None


def print_model(model: BaseModel) -> None:
    print(json.dumps(model.model_dump(mode="json"), indent=2, ensure_ascii=False))


def when(ts: float | None) -> str:
    """A timestamp as operators read it, local time ("" for none)."""
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def gate_table(gate: dict) -> Table:
    table = Table("check", "passed", "value", "threshold", "detail", title="gate")
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for c in gate.get("checks", []):
        table.add_row(
            c["name"],
            "[green]yes[/]" if c["passed"] else "[red]no[/]",
            fmt(c["value"]),
            fmt(c["threshold"]),
            c.get("detail", ""),
        )
    engine = gate.get("engine")
    if engine:  # informational: a version whose artifact failed is served by torch, not refused
        table.add_row(
            "int8 engine",
            "[green]yes[/]" if engine["passed"] else "[yellow]no: torch serves[/]",
            fmt(engine.get("accuracy")),
            "" if engine.get("fp32_accuracy") is None else fmt(engine["fp32_accuracy"] - engine["max_drop"]),
            engine.get("detail", ""),
        )
    change = gate.get("golden_label_change") or {}
    if change:  # which golden labels the round moved, worst first: what it hurt and what it helped
        hurt = [kv for kv in change.items() if kv[1] < 0][:5]  # sorted worst first
        helped = [kv for kv in change.items() if kv[1] > 0][-3:]
        cells = ", ".join(f"{k} {v:+.2f}" for k, v in hurt + helped)
        table.caption = f"golden accuracy per label against the parent ({len(change)} changed): {cells}"
    return table


def models_list(url: str, as_json: bool, console: Console) -> None:
    with remote(url, console) as api:
        out = api.models()
    if as_json:
        return print_model(out)
    table = Table("version", "live", "parent", "status", "created", "labels", "gate", "golden", "live acc (n)")
    for m in out.versions:
        table.add_row(
            str(m.version),
            "●" if m.live else "",
            str(m.parent or ""),
            m.status,
            when(m.created_at),
            str(m.labels),
            "" if m.gate_passed is None else "passed" if m.gate_passed else "failed",
            f"{m.metrics['golden_accuracy']:.4f}" if "golden_accuracy" in m.metrics else "",
            f"{m.live_accuracy:.3f} ({m.judged})" if m.judged and m.live_accuracy is not None else "",
        )
    console.print(table)
    history = Table("when", "action", "version", "previous", "reason", title="live alias history")
    for ch in out.history[-15:]:
        history.add_row(when(ch.at), ch.action, str(ch.version), str(ch.previous or ""), ch.reason)
    console.print(history)


def models_show(url: str, version: int, as_json: bool, console: Console) -> None:
    with remote(url, console) as api:
        m = api.model(version)
    if as_json:
        return print_model(m)
    console.print(
        f"[bold]version {m.version}[/] ({m.status}{', live' if m.live else ''}), parent {m.parent}, "
        f"created {when(m.created_at)}, {m.labels} labels, sha256 {m.sha256[:16]}"
    )
    console.print(f"metrics: {', '.join(f'{k}={v:.4f}' for k, v in m.metrics.items())}")
    if m.judged and m.live_accuracy is not None:
        console.print(f"live accuracy from feedback: {m.live_accuracy:.4f} over {m.judged} judged predictions")
    if m.round:
        console.print("round: " + ", ".join(f"{k}={v}" for k, v in m.round.items() if k != "added_labels"))
    if m.gate:
        console.print(gate_table(m.gate))


def live_change(url: str, console: Console, *, promote: int | None = None, to: int | None = None, reason: str) -> None:
    with remote(url, console) as api:
        change = api.promote(promote, reason) if promote is not None else api.rollback(to, reason)
    console.print(f"live: version {change.version} (was {change.previous})")


def training(url: str, console: Console, action: str, reason: str = "") -> None:
    with remote(url, console) as api:
        state = {"pause": lambda: api.pause(reason), "resume": api.resume, "status": api.training}[action]()
    console.print("running" if not state.paused else f"paused since {when(state.paused_at)}: {state.reason}")


def quarantine_list(url: str, limit: int, as_json: bool, console: Console) -> None:
    with remote(url, console) as api:
        out = api.quarantine(limit)
    if as_json:
        return print_model(out)
    held = Table("sid", "source", "sources", "label", "text", "reason", "since", title=f"held (oldest {len(out.held)})")
    for h in out.held:
        held.add_row(h.sid, h.source, str(h.sources), h.label, h.text[:60], h.reason, when(h.at))
    console.print(held)
    sources = Table("source", "events", "judged", "contradicted", "rate", "quarantined", title="sources")
    for s in out.sources:
        rate = "" if s.contradiction_rate is None else f"{s.contradiction_rate:.2f}"
        sources.add_row(
            s.source, str(s.events), str(s.judged), str(s.contradicted), rate, "[red]yes[/]" if s.quarantined else ""
        )
    console.print(sources)


def quarantine_change(url: str, console: Console, action: str, sids: list[str], source: str | None) -> None:
    with remote(url, console) as api:
        result = (api.release if action == "release" else api.drop)(sids, source)
    console.print(f"{'released' if action == 'release' else 'dropped'} {result.changed}")


def approve_label(url: str, label: str, console: Console) -> None:
    with remote(url, console) as api:
        out = api.approve_label(label)
    console.print(
        f"{label!r} {'approved' if out.newly_approved else 'was already approved'}; {out.released} held examples released"
    )


def labels_pending(url: str, console: Console) -> None:
    with remote(url, console) as api:
        out = api.feedback_stats()
    table = Table("label", "examples", "sources", "why it waits", title="pending new labels")
    for p in out.pending_labels:
        table.add_row(p.label, str(p.examples), ", ".join(p.sources), p.reason)
    console.print(table)
    console.print(f"approved so far: {', '.join(out.approved_labels) or 'none'}")


def buffer_stats(url: str, as_json: bool, console: Console) -> None:
    with remote(url, console) as api:
        out = api.buffer()
    if as_json:
        return print_model(out)
    table = Table("label", "stored", "total", "new", "duplicates", "dead-lettered", "evicted", title="replay buffer")
    for r in out.labels:
        table.add_row(r.label, *(str(v) for v in (r.stored, r.total, r.new, r.duplicates, r.dead_lettered, r.evicted)))
    console.print(table)
    console.print(
        f"{out.samples} of {out.capacity} samples, {out.new} new, {out.held} held, "
        f"{out.dead_lettered_other} dead-lettered under labels that are not in the buffer"
    )
