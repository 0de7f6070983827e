"""A delete that cannot reach Slurm is still carried out (interLink #540: interLink may forget
the pod once it has an answer): the intent is kept in the store and retried until Slurm takes
the cancel, across restarts too. Slurm is a scripted fake; tests/integration has the real one."""

from __future__ import annotations

from pathlib import Path

from interlink_slurm.errors import SchedulerUnavailable
from interlink_slurm.slurm.scheduler import JobInfo
from tests.unit.test_api import Harness, simple

DOWN = SchedulerUnavailable("Slurm is not reachable: Unable to contact slurm controller")


def kill_due(h: Harness) -> None:
    """The refresher's pass over due cancels, now."""
    assert h.client.portal is not None
    h.client.portal.call(h.service.janitor.kill_due)


def test_delete_while_slurm_is_down_is_kept_and_done_when_it_answers(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        data = simple("outage")
        job_id = h.post("/create", data).json()["PodJID"]
        uid = data["pod"]["metadata"]["uid"]
        h.scheduler.down = DOWN
        r = h.post("/delete", data["pod"])
        assert r.status_code == 200, r.text
        assert "will be cancelled as soon as Slurm answers" in r.text
        rec = h.store.get(uid)
        assert rec is not None and rec.deleted is not None and rec.kill_at is not None
        kill_due(h)  # still down: kept
        assert h.store.get(uid).kill_at is not None  # type: ignore[union-attr]
        assert h.scheduler.jobs[job_id].state == "PENDING"
        # A second delete while the first waits changes nothing.
        assert h.post("/delete", data["pod"]).status_code == 200
    finally:
        h.close()
    # The plugin restarts; Slurm is back.
    h.scheduler.down = None
    h2 = Harness(tmp_path, scheduler=h.scheduler)
    try:
        kill_due(h2)
        assert h2.scheduler.jobs[job_id].state == "CANCELLED"
        assert h2.store.get(uid).kill_at is None  # type: ignore[union-attr]
    finally:
        h2.close()


def test_delete_of_a_pod_in_flight_while_slurm_is_down_cancels_the_job_it_finds(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    try:
        data = simple("in-flight")
        uid = data["pod"]["metadata"]["uid"]
        h.scheduler.fail_next["submit"] = DOWN
        assert h.post("/create", data).status_code == 503
        # sbatch had reached Slurm before the connection broke: the job exists.
        h.scheduler.jobs["77"] = JobInfo("77", "PENDING", "Priority", f"interlink-slurm:{uid}")
        h.scheduler.down = DOWN
        assert h.post("/delete", data["pod"]).status_code == 200
        h.scheduler.down = None
        kill_due(h)
        assert h.scheduler.jobs["77"].state == "CANCELLED"
    finally:
        h.close()
