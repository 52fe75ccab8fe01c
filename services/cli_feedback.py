"""`online feedback send` and `online buffer stats`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from online.events import EVENT_ADAPTER, LabelEvent, ThumbsEvent
from online.feedback.buffer import ReplayBuffer

Event = LabelEvent | ThumbsEvent


class SendFailed(RuntimeError):
    pass


def post_events(client: httpx.Client, events: list[Event], retries: int = 10) -> None:
    """POST a batch; 503/429 are retried with the same event ids (the consumer deduplicates)."""
    body = {"events": [json.loads(e.model_dump_json(exclude_none=True)) for e in events]}
    for attempt in range(retries):
        resp = client.post("/v1/feedback", json=body)
        if resp.status_code == 202:
            return
        if resp.status_code in (429, 503):
            time.sleep(float(resp.headers.get("Retry-After", 1)) * (1 + attempt / 4))
            continue
        raise SendFailed(f"HTTP {resp.status_code}: {resp.text[:500]}")
    raise SendFailed(f"gave up after {retries} tries: HTTP {resp.status_code}: {resp.text[:200]}")


def read_jsonl(path: Path, default_source: str) -> tuple[list[Event], list[str]]:
    """Events of a JSONL file, validated here so one bad line does not sink a batch; returns errors."""
    events, errors = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if isinstance(raw, dict):
                raw.setdefault("source", default_source)
            events.append(EVENT_ADAPTER.validate_python(raw))
        except (json.JSONDecodeError, ValidationError) as exc:
            errors.append(f"line {n}: {str(exc).splitlines()[0] if isinstance(exc, ValidationError) else exc}")
    return events, errors


def send(api: str, events: list[Event], batch: int, console: Console) -> None:
    with (
        httpx.Client(base_url=api, timeout=30) as client,
        Progress(
            TextColumn("[bold]feedback"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar,
    ):
        task = bar.add_task("send", total=len(events))
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            post_events(client, chunk)
            bar.advance(task, len(chunk))


def buffer_table(buffer: ReplayBuffer) -> Table:
    rows = buffer.stats()
    table = Table("label", title="replay buffer")
    for col in ("stored", "total", "new", "duplicates", "dead-lettered", "evicted"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.label, *(f"{v:,}" for v in (r.stored, r.total, r.new, r.duplicates, r.dead_lettered, r.evicted))
        )
    sums = [
        sum(getattr(r, f) for r in rows) for f in ("stored", "total", "new", "duplicates", "dead_lettered", "evicted")
    ]
    table.add_section()
    table.add_row("[bold]all", *(f"[bold]{v:,}" for v in sums))
    table.caption = f"cursor at sequence {buffer.cursor()}; capacity {buffer.capacity:,}"
    return table
