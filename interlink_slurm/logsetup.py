"""Structured logs: one JSON object per line, carrying the request ID, the pod UID and the job ID
of whatever the line is about, without every call site passing them along.

The HTTP middleware sets the request ID, the service sets the pod and job it works on; they live
in context variables, which asyncio copies into each task, so concurrent requests keep theirs.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
pod_uid: contextvars.ContextVar[str | None] = contextvars.ContextVar("pod_uid", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

CONTEXT = {"request_id": request_id, "pod_uid": pod_uid, "job_id": job_id}
# Attributes every LogRecord has; anything else given with extra= is the caller's field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with colours
}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, with the request, pod and job ids of the context."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in CONTEXT.items():
            value = var.get()
            if value:
                entry[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ContextTextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the same context at the end."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, the context's ids in brackets at the end."""
        line = super().format(record)
        context = " ".join(f"{k}={v.get()}" for k, v in CONTEXT.items() if v.get())
        return f"{line} [{context}]" if context else line


def configure(level: str, fmt: str) -> None:
    """Log to stderr at ``level``, as JSON or text (``fmt``)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            ContextTextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers go through the same handler (its access log is replaced by ours).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def bind(uid: str | None = None, job: str | None = None) -> None:
    """Say which pod (and job) the current task works on, for every line it logs next."""
    if uid is not None:
        pod_uid.set(uid)
    if job is not None:
        job_id.set(job)
