"""Every admin view of the CLI, rendered once from the API's typed models (``online.contract``),
whichever backend produced them (``services.admin``): the local stores or a remote API."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from online.contract import (
    BufferResponse,
    CanaryResponse,
    ForgetResult,
    LabelApproved,
    LiveChangeOut,
    ModelDetail,
    ModelsResponse,
    QuarantineResponse,
    ScreeningSummary,
    Signal,
    StatusReport,
    TrainingState,
)
from online.reports import GateReport, RoundStats

if TYPE_CHECKING:
    from online.evaluation import EvalReport


def when(ts: float | None) -> str:
    """A timestamp as operators read it, local time ("" for none)."""
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def print_json(model: BaseModel) -> None:
    """Machine-readable output of a read command (``--json``): the model as one JSON document on stdout."""
    print(json.dumps(model.model_dump(mode="json"), indent=2, ensure_ascii=False))


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _gate_cell(passed: bool | None, failed: list[str]) -> str:
    if passed is None:
        return ""
    return "passed" if passed else "failed: " + ", ".join(failed)


def gate_table(gate: GateReport) -> Table:
    table = Table("check", "passed", "value", "threshold", "detail", title="gate")
    for c in gate.checks:
        table.add_row(c.name, "[green]yes[/]" if c.passed else "[red]no[/]", _num(c.value), _num(c.threshold), c.detail)
    engine = gate.engine
    if engine:  # informational: a version whose artifact failed is served by torch, not refused
        floor = (
            None if engine.fp32_accuracy is None or engine.max_drop is None else engine.fp32_accuracy - engine.max_drop
        )
        table.add_row(
            "int8 engine",
            "[green]yes[/]" if engine.passed else "[yellow]no: torch serves[/]",
            _num(engine.accuracy),
            _num(floor),
            engine.detail,
        )
    change = gate.golden_label_change
    if change:  # which golden labels the round moved, worst first: what it hurt and what it helped
        hurt = [kv for kv in change.items() if kv[1] < 0][:5]  # sorted worst first
        helped = [kv for kv in change.items() if kv[1] > 0][-3:]
        cells = ", ".join(f"{k} {v:+.2f}" for k, v in hurt + helped)
        table.caption = f"golden accuracy per label against the parent ({len(change)} changed): {cells}"
    return table


def models(console: Console, out: ModelsResponse) -> None:
    """Every version (the live one marked), then the history of the live alias."""
    if out.canary is not None:
        c = out.canary
        console.print(f"canary: version {c.version} on {c.share:.0%} of traffic beside live {c.parent}")
    table = Table("version", "live", "parent", "status", "created", "labels", "gate", "golden", "live acc (n)")
    for m in out.versions:
        table.add_row(
            str(m.version),
            "●" if m.live else "",
            str(m.parent or ""),
            m.status,
            when(m.created_at),
            str(m.labels),
            _gate_cell(m.gate_passed, m.failed_checks),
            f"{m.metrics['golden_accuracy']:.4f}" if "golden_accuracy" in m.metrics else "",
            f"{m.live_accuracy:.3f} ({m.judged})" if m.judged and m.live_accuracy is not None else "",
        )
    console.print(table)
    history = Table("when", "action", "version", "previous", "reason", title="live alias history")
    for ch in out.history[-15:]:
        style = {"auto_rollback": "bold red", "rollback": "yellow", "canary_rollback": "red"}.get(ch.action, "")
        action = f"[{style}]{ch.action}[/]" if style else ch.action
        history.add_row(when(ch.at), action, str(ch.version), str(ch.previous or ""), ch.reason)
    console.print(history)


def model(console: Console, m: ModelDetail) -> None:
    """One version: manifest, how it was made and the gate report, check by check."""
    console.print(
        f"[bold]version {m.version}[/] ({m.status}{', live' if m.live else ''}), parent {m.parent}, "
        f"created {when(m.created_at)}, {m.labels} labels, sha256 {m.sha256[:16]}"
    )
    console.print(f"metrics: {', '.join(f'{k}={v:.4f}' for k, v in m.metrics.items())}")
    if m.judged and m.live_accuracy is not None:
        console.print(f"live accuracy from feedback: {m.live_accuracy:.4f} over {m.judged} judged predictions")
    if m.round:
        stats = m.round
        added = stats.added_labels if isinstance(stats, RoundStats) else []
        fields = stats.model_dump(exclude={"added_labels", "head"})
        console.print(
            "round: "
            + ", ".join(f"{k}={v}" for k, v in fields.items())
            + (f", added labels={len(added)}" if added else "")
        )
        head = getattr(stats, "head", None)
        base = m.base_model.rstrip("/").rsplit("/", 1)[-1]
        console.print(
            (head.describe() if head else "head linear (recorded before head modes were, or imported)")
            + f"; base encoder {base}"
        )
    if m.gate:
        console.print(gate_table(m.gate))


def live_change(console: Console, change: LiveChangeOut) -> None:
    if change.action.startswith("canary_"):
        what = change.action.removeprefix("canary_")
        console.print(f"canary: version {change.version} (live {change.previous}) {what}: {change.reason}")
        return
    console.print(f"live: version {change.version} (was {change.previous})")


def canary(console: Console, out: CanaryResponse) -> None:
    """The canary in progress: share and steps, each arm's evidence, the decision due and why."""
    slot = out.canary
    if slot is None:
        console.print("no canary is running")
        return
    steps = " -> ".join(f"{x:.0%}" for x in [slot.share, *slot.steps]) + " -> promoted"
    paused = " [yellow](paused)[/]" if slot.paused else ""
    console.print(
        f"[bold]canary:[/] version {slot.version} on {slot.share:.0%} of traffic beside live {slot.parent}{paused}, "
        f"since {when(slot.since)}; steps {steps}"
    )
    table = Table("", "version", "judged", "accuracy", "thumbs down", "sources", "requests", "errors", "p95 ms")
    for name, arm in (("live", out.live), ("canary", out.candidate)):
        if arm is None:
            continue
        acc = "" if arm.accuracy is None else f"{arm.accuracy:.3f}"
        down = "" if arm.thumbs_down_rate is None else f"{arm.thumbs_down_rate:.1%} of {arm.thumbs}"
        p95 = "" if arm.p95_ms is None else f"{arm.p95_ms:.0f}"
        table.add_row(
            name, str(arm.version), str(arm.judged), acc, down, str(arm.sources), str(arm.requests), str(arm.errors), p95
        )
    console.print(table)
    style = {"rollback": "red", "step": "green", "promote": "green"}.get(out.decision or "", "yellow")
    console.print(f"decision now ({out.decided_by}): [{style}]{out.decision}[/]: {out.reason}")


def training(console: Console, state: TrainingState) -> None:
    console.print("running" if not state.paused else f"paused since {when(state.paused_at)}: {state.reason}")


def forgotten(console: Console, out: ForgetResult) -> None:
    """What `online forget` erased, keeps out, cannot reach, and what the weights may still hold."""
    what = f"source {out.source!r}" if out.source is not None else f"text {out.text!r}"
    table = Table("store", "removed", title=f"erased: {what}")
    table.add_row("replay buffer (samples)", f"{out.buffer} ({out.trained} already trained on)")
    table.add_row("correction log and memory", str(out.corrections))
    table.add_row("correction stream records", str(out.stream))
    if out.source is None:
        table.add_row("prediction log", f"{out.predictions} (of {out.predictions_scanned} scanned)")
        table.add_row("review queue", str(out.review))
    else:
        table.add_row("source statistics, created labels", "yes" if out.ledger else "none")
    console.print(table)
    console.print(f"kept out: {out.kept_out}")
    console.print(f"weights: {out.weights}")
    console.print(f"not reached: {out.not_reached}")


def quarantine(console: Console, out: QuarantineResponse) -> None:
    """Held samples and per-source statistics."""
    held = Table("sid", "source", "sources", "label", "text", "reason", "since", title=f"held ({out.held_count})")
    for h in out.held:
        sender = h.source if not h.origin.startswith("addr:") else f"{h.source} ({h.origin})"
        held.add_row(h.sid, sender, str(h.sources), h.label, h.text[:60], h.reason, when(h.at))
    console.print(held)
    sources = Table("source", "events", "judged", "contradicted", "rate", "quarantined", title="sources")
    for s in out.sources:
        rate = "" if s.contradiction_rate is None else f"{s.contradiction_rate:.2f}"
        sources.add_row(
            s.source, str(s.events), str(s.judged), str(s.contradicted), rate, "[red]yes[/]" if s.quarantined else ""
        )
    console.print(sources)


def pending_labels(console: Console, stats: ScreeningSummary) -> None:
    table = Table("label", "examples", "sources", "why it waits", title="pending new labels")
    for p in stats.pending_labels:
        table.add_row(p.label, str(p.examples), ", ".join(p.sources), p.reason)
    console.print(table)
    console.print(f"approved so far: {', '.join(stats.approved_labels) or 'none'}")


def label_approved(console: Console, out: LabelApproved) -> None:
    state = "approved" if out.newly_approved else "was already approved"
    console.print(f"{out.label!r} {state}; {out.released} held examples released")


def buffer(console: Console, out: BufferResponse) -> None:
    """Per label: stored, total events, new since the last round, duplicates, dead-lettered, evicted."""
    fields = ("stored", "total", "new", "duplicates", "dead_lettered", "evicted")
    table = Table("label", title="replay buffer")
    for col in fields:
        table.add_column(col.replace("_", "-"), justify="right")
    for r in out.labels:
        table.add_row(r.label, *(f"{getattr(r, f):,}" for f in fields))
    table.add_section()
    table.add_row("[bold]all", *(f"[bold]{sum(getattr(r, f) for r in out.labels):,}" for f in fields))
    cursor = "" if out.cursor is None else f"cursor at sequence {out.cursor}; "
    table.caption = f"{cursor}capacity {out.capacity:,}"
    console.print(table)
    console.print(
        f"{out.samples} of {out.capacity} samples, {out.new} new, {out.held} held, "
        f"{out.dead_lettered_other} dead-lettered under labels that are not in the buffer"
    )


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


def _screening(console: Console, summary: ScreeningSummary) -> None:
    """Held feedback per source and reason, pending new labels, quarantined sources: never silent."""
    held = summary.held
    if not held.total and not summary.quarantined_sources:
        console.print("[bold]screening:[/] nothing held")
        return
    table = Table("source", "held", "why", title=f"feedback held by the screen ({held.total})")
    for source, kinds in held.by_source.items():
        table.add_row(source, str(sum(kinds.values())), ", ".join(f"{k}: {n}" for k, n in kinds.items()))
    console.print(table)
    if summary.pending_labels:
        pending = ", ".join(f"{p.label} ({p.examples})" for p in summary.pending_labels)
        console.print(f"[bold]pending new labels:[/] {pending}  -> `online labels approve LABEL`")
    if summary.quarantined_sources:
        bad = ", ".join(summary.quarantined_sources)
        console.print(f"[bold]quarantined sources:[/] [red]{bad}[/]  -> `online quarantine release --source SOURCE`")


def _signal_row(table: Table, replica: str, name: str, sig: Signal) -> None:
    fmt = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
    table.add_row(replica, name, fmt(sig.value), fmt(sig.threshold), "[red]ALERT[/]" if sig.alert else "ok")


def status(console: Console, st: StatusReport) -> None:
    """Everything at a glance: live version, replicas, buffer, last rounds, drift signals and alerts."""
    training_cell = "running" if not st.training.paused else f"[yellow]paused[/] ({st.training.reason})"
    console.print(f"[bold]live version:[/] {st.live_version}   training: {training_cell}")
    if st.canary is not None:
        canary(console, st.canary)

    replicas = Table(
        "replica", "serves", "engine", "last seen", "memory", "from memory", "load error", title="API replicas"
    )
    for r in st.replicas:
        replicas.add_row(
            r.replica,
            str(r.version),
            r.engine or "",
            f"{r.age_s:.0f} s ago" + (" [red](stale)[/]" if r.stale else ""),
            *_memory_cells(r.memory),
            r.last_load_error or "",
        )
    console.print(replicas)
    console.print(f"[bold]correction log:[/] {st.correction_log} taught corrections (memory states above)")
    if st.supervisor and st.supervisor.processes:
        table = Table("process", "pid", "restarts", title=f"supervised by `online up` (pid {st.supervisor.pid})")
        for name, p in st.supervisor.processes.items():
            table.add_row(name, str(p.pid), f"[yellow]{p.restarts}[/]" if p.restarts else "0")
        console.print(table)

    b = st.buffer
    console.print(
        f"[bold]buffer:[/] {b.samples} samples, {b.new} new since the last round, "
        f"{b.labels} labels, {b.dead_lettered} dead-lettered"
    )
    _screening(console, st.screening)

    rounds = Table("version", "parent", "status", "new", "rehearsed", "gate", "train s", "created", title="last rounds")
    for r in st.rounds:
        rounds.add_row(
            str(r.version),
            str(r.parent),
            r.status,
            str(r.new),
            str(r.rehearsed),
            _gate_cell(r.gate_passed, r.failed_checks),
            f"{r.train_s:.1f}",
            when(r.created_at),
        )
    console.print(rounds)

    report = st.drift
    drift = Table("replica", "signal", "value", "threshold", "alert", title=f"drift (window {report.window_size})")
    for snap in report.replicas:
        for name, sig in snap.signals.items():
            _signal_row(drift, snap.replica, name, sig)
    for name, sig in report.feedback.items():
        _signal_row(drift, "(feedback)", name, sig)
    console.print(drift)
    accs = Table("version", "judged", "live accuracy", "vs parent", title="live accuracy from feedback")
    for e in report.live_accuracy:
        vs = e.vs_parent
        accs.add_row(
            f"{e.version}" + (" (live)" if e.live else ""),
            str(e.n),
            "" if e.accuracy is None else f"{e.accuracy:.3f}",
            "" if not vs or vs.drop is None else f"{-vs.drop:+.3f} (p={vs.p_value:.2g})",
        )
    console.print(accs)
    vol = report.feedback_volume
    console.print(
        f"[bold]feedback:[/] {sum(n for _, n in vol[-10:])} events in the last 10 min, "
        f"{sum(n for _, n in vol)} in the last hour"
    )
    alerts = report.alerts
    listed = ", ".join(f"[red]{a.signal}[/]" + ("" if a.value is None else f"={a.value:.3g}") for a in alerts)
    console.print("[bold]alerts:[/] " + ("[green]none[/]" if not alerts else listed))


def evaluation(console: Console, report: EvalReport, version: int, name: str) -> None:
    """`online eval`: accuracy, macro-F1, per-label precision and recall, the most confused pairs."""
    console.print(
        f"[bold]version {version}[/] on {name}: accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f} "
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
