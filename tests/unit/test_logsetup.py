"""Structured logs carry the request, pod and job they are about."""

from __future__ import annotations

import asyncio
import json
import logging

from interlink_slurm import logsetup


def record(message: str, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("interlink_slurm.service", logging.INFO, __file__, 1, message, (), None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_json_lines_carry_the_context_of_the_task_that_logged_them() -> None:
    fmt = logsetup.JsonFormatter()

    async def handle(uid: str, job: str) -> dict[str, object]:
        logsetup.request_id.set(f"req-{uid}")
        logsetup.bind(uid)
        await asyncio.sleep(0)  # let the other request interleave
        logsetup.bind(job=job)
        await asyncio.sleep(0)
        return dict(json.loads(fmt.format(record("submitted", status=200))))

    async def both() -> list[dict[str, object]]:
        return list(await asyncio.gather(handle("a", "1"), handle("b", "2")))

    first, second = asyncio.run(both())
    assert first["request_id"] == "req-a" and first["pod_uid"] == "a" and first["job_id"] == "1"
    assert second["request_id"] == "req-b" and second["job_id"] == "2"
    assert first["message"] == "submitted" and first["level"] == "info"
    assert first["status"] == 200
    assert str(first["time"]).endswith("Z")


def test_lines_outside_any_request_have_no_context() -> None:
    line = json.loads(logsetup.JsonFormatter().format(record("refresh")))
    assert "request_id" not in line and "pod_uid" not in line
