"""A job Slurm shows FAILED in its first minute, before its script started (as Leonardo briefly
does for new jobs): the pod is not ended until Slurm's record confirms it. The scheduler's
answers are scripted; the clock is the submission time the store keeps."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.slurm.scheduler import JobInfo
from interlink_slurm.slurm.states import UNCONFIRMED_REASON, doubtful_failure
from tests.unit.test_api import Harness, simple

T = 1_000_000.0


@pytest.mark.parametrize(
    ("state", "age", "started", "doubtful"),
    [
        ("FAILED", 5, False, True),
        ("FAILED", 59, False, True),
        ("FAILED", 60, False, False),  # a minute on: the queue is believed again
        ("FAILED", 5, True, False),  # its script ran: a real failure of the pod
        ("CANCELLED", 5, False, False),
        ("RUNNING", 5, False, False),
    ],
)
def test_a_failure_is_doubtful_only_young_and_before_the_script(
    state: str, age: float, started: bool, doubtful: bool
) -> None:
    assert doubtful_failure(JobInfo("7", state), T - age, T, started) is doubtful


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def created(api: Harness) -> tuple[dict[str, Any], str]:
    data = simple("young")
    r = api.post("/create", data)
    assert r.status_code == 200, r.text
    return data, r.json()["PodJID"]


def script(api: Harness, job_id: str, state: str, reason: str = "") -> None:
    """What the queue (squeue) says of the job from now on."""
    api.scheduler.jobs[job_id] = JobInfo(job_id, state, reason, api.scheduler.jobs[job_id].comment)


def container_state(api: Harness, data: dict[str, Any]) -> dict[str, Any]:
    [status] = api.get("/status", [data["pod"]]).json()
    return dict(status["containers"][0]["state"])


def test_a_young_failure_with_no_record_is_held_and_the_job_then_runs(api: Harness) -> None:
    data, job_id = created(api)
    script(api, job_id, "FAILED", "NonZeroExitCode")
    api.refresh()
    state = container_state(api, data)
    assert state["waiting"]["reason"] == UNCONFIRMED_REASON
    assert "confirms" in state["waiting"]["message"]
    assert api.store.get(data["pod"]["metadata"]["uid"]).final_state is None  # type: ignore[union-attr]
    assert "final_states" in api.scheduler.calls  # Slurm's record was asked
    script(api, job_id, "RUNNING")  # it was the site's passing glitch
    api.refresh()
    assert "terminated" not in container_state(api, data)
    assert api.store.get(data["pod"]["metadata"]["uid"]).final_state is None  # type: ignore[union-attr]


def test_a_young_failure_the_record_confirms_ends_the_pod(api: Harness) -> None:
    data, job_id = created(api)
    script(api, job_id, "FAILED", "JobLaunchFailure")
    api.scheduler.accounting[job_id] = JobInfo(job_id, "FAILED")
    api.refresh()
    terminated = container_state(api, data)["terminated"]
    assert terminated["reason"] == "JobLaunchFailure"  # the queue's reason is kept


def test_a_young_failure_the_record_contradicts_follows_the_record(api: Harness) -> None:
    data, job_id = created(api)
    script(api, job_id, "FAILED")
    api.scheduler.accounting[job_id] = JobInfo(job_id, "RUNNING")
    api.refresh()
    state = container_state(api, data)
    assert "terminated" not in state
    assert state["waiting"]["reason"] == "PodInitializing"  # running, no container yet


def test_a_failure_after_the_script_started_is_believed_at_once(api: Harness) -> None:
    data, job_id = created(api)
    meta = data["pod"]["metadata"]
    pod_dir = api.data_root / "default" / f"young-{meta['uid']}"
    (pod_dir / "job.out").write_text(
        f"interlink-slurm: pod {meta['uid']} starts as job {job_id} on n1\n"
    )
    script(api, job_id, "FAILED")
    api.refresh()
    assert "terminated" in container_state(api, data)
    assert "final_states" not in api.scheduler.calls


def test_a_failure_shown_after_the_first_minute_is_believed(api: Harness) -> None:
    data, job_id = created(api)
    with sqlite3.connect(api.settings.state_db_path) as db:
        db.execute("UPDATE pods SET created = created - 61")
    api.store.close()  # the rows in memory are read again, as at a restart
    api.store.open()
    script(api, job_id, "FAILED")
    api.refresh()
    assert container_state(api, data)["terminated"]["reason"] == "JobFailed"
