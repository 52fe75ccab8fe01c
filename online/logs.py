"""One logging setup for every process: human output on a terminal, one JSON object per line otherwise.

A log pipeline (Loki, ELK, ``jq``) reads the JSON lines as they are: ``timestamp``, ``level``,
``logger``, ``message``, plus every structured field a call passes in ``extra`` (a training round's
record is a ``round`` object, not a string) and, inside an API request, its ``request_id``. A person
at a terminal gets Rich's console output as before. ``ONLINE_LOG_FORMAT`` picks: auto | json | console.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["auto", "json", "console"]

# The id of the API request being served, for every line logged while serving it (set by the API's
# request-id middleware; contextvars follow the request across awaits and into to_thread calls).
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

QUIET_LIBRARIES = ("kafka", "httpx", "transformers", "faiss")  # the ONNX exporter's: silenced where it runs


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


def resolve_format(fmt: LogFormat, stream=None) -> Literal["json", "console"]:
    """``auto``: console when the stream is a terminal, JSON lines when it goes to a file or a pipe."""
    if fmt != "auto":
        return fmt
    stream = stream or sys.stderr
    return "console" if hasattr(stream, "isatty") and stream.isatty() else "json"


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,  # ISO 8601, UTC
        json_ensure_ascii=False,  # Chinese intents stay readable
    )


def progress_bars() -> bool:
    """Whether this process draws progress bars: only for a person at a terminal."""
    return sys.stderr.isatty()


def configure_logging(fmt: LogFormat = "auto", level: str = "INFO") -> Literal["json", "console"]:
    """Set up the root logger for this process (replacing any earlier setup); returns the format used."""
    chosen = resolve_format(fmt)
    if chosen == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
        # Progress bars are for people: in a JSON stream they are unparseable lines. Hugging Face's
        # (weights loading) read this switch when they start; the trainer's bar checks `progress_bars`.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(_RequestId())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return chosen
