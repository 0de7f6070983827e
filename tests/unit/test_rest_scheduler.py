"""The REST scheduler against slurmrestd's answers: recorded from Slurm 22.05 (v0.0.38), written
from the data_parser definitions for v0.0.40 (23.11) and v0.0.41 (24.05). See
tests/fixtures/slurmrestd/README.md. The same scheduler on a real slurmrestd is in
tests/integration (mode "rest")."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from interlink_slurm.api import create_app
from interlink_slurm.config import load_settings
from interlink_slurm.errors import SchedulerError, SchedulerUnavailable, SubmitRejected
from interlink_slurm.service import Service
from interlink_slurm.slurm import factory
from interlink_slurm.slurm.remote_settings import RestSettings
from interlink_slurm.slurm.rest import RestScheduler
from interlink_slurm.slurm.transport import LocalTransport
from interlink_slurm.store import Store
from tests import podgen

T = TypeVar("T")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurmrestd"
URL = "http://slurmrestd.example:6820"
VERSIONS = ["v0.0.38", "v0.0.40", "v0.0.41"]
NEW_VERSIONS = ["v0.0.40", "v0.0.41"]
# Job ids of the fixtures: running, pending, failed (v0.0.38 recorded; v0.0.4x written).
JOB_IDS = {
    "v0.0.38": {"running": "116", "pending": "117", "failed": "115"},
    "v0.0.40": {"running": "4101", "pending": "4102", "failed": "4103"},
    "v0.0.41": {"running": "4101", "pending": "4102", "failed": "4103"},
}
SCRIPT = """#!/bin/bash
#SBATCH --job-name=train
#SBATCH --comment=interlink-slurm:3f6c2b1e-8d4a-4c1e-9b7a-2a5d0e6f1c01
#SBATCH --output=/scratch/pods/default/train-3f6c/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/scratch/pods/default/train-3f6c
#SBATCH --partition=boost_usr_prod
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32768M
#SBATCH --gres=gpu:a100:2
#SBATCH --time=0-01:30:00
#SBATCH --account=proj_ai
#SBATCH --qos=boost_qos_dbg
#SBATCH --exclusive
#SBATCH --constraint=ib
#
# pod default/train
set -o nounset
echo hello
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def answer(version: str, name: str) -> Any:
    return json.loads((FIXTURES / version / name).read_text())


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("SLURM_JWT=eyJhbGciOiJIUzI1NiJ9.first\n")
    return path


def make(version: str, token: Path, **settings: Any) -> RestScheduler:
    rest = RestSettings(
        url=URL, api_version=version, user_name="svc-interlink", token_file=token, **settings
    )
    return RestScheduler(rest, LocalTransport())


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


def path(version: str, rest: str) -> str:
    return f"/slurm/{version}/{rest}"


# --- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_ping_reads_the_controller_as_up_in_every_version(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    api.get(path(version, "ping")).respond(200, json=answer(version, "ping.json"))
    run(make(version, token).ping())


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_ping_of_a_down_controller_is_unavailable(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    api.get(path(version, "ping")).respond(200, json=answer(version, "ping_down.json"))
    with pytest.raises(SchedulerUnavailable, match="controller is not up"):
        run(make(version, token).ping())


@pytest.mark.parametrize("version", VERSIONS)
def test_jobs_states_reasons_and_comments_are_read_in_every_version(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    api.get(path(version, "jobs")).respond(200, json=answer(version, "jobs.json"))
    ids = JOB_IDS[version]

    jobs = run(make(version, token).query([*ids.values(), "999999"]))

    assert set(jobs) == set(ids.values())
    running, pending, failed = jobs[ids["running"]], jobs[ids["pending"]], jobs[ids["failed"]]
    assert (running.state, running.reason) == ("RUNNING", "")
    assert (pending.state, pending.reason) == ("PENDING", "Resources")
    assert (failed.state, failed.reason) == ("FAILED", "NonZeroExitCode")
    assert running.comment == "interlink-slurm:22222222-2222-2222-2222-222222222222"


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_a_state_flag_names_the_state_as_squeue_does(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    api.get(path(version, "jobs")).respond(200, json=answer(version, "jobs.json"))

    jobs = run(make(version, token).query(["4104", "4105"]))

    assert jobs["4104"].state == "COMPLETING"  # ["COMPLETED", "COMPLETING"]
    assert jobs["4105"].state == "CANCELLED"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_job_is_found_by_its_comment(version: str, token: Path, api: respx.MockRouter) -> None:
    api.get(path(version, "jobs")).respond(200, json=answer(version, "jobs.json"))
    scheduler = make(version, token)

    found = run(scheduler.find_by_comment("interlink-slurm:33333333-3333-3333-3333-333333333333"))
    missing = run(scheduler.find_by_comment("interlink-slurm:nobody"))

    assert found is not None and found.job_id == JOB_IDS[version]["pending"]
    assert missing is None


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_resources_count_the_usable_nodes_of_the_partitions(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    api.get(path(version, "nodes")).respond(200, json=answer(version, "nodes.json"))
    scheduler = make(version, token)

    gpu = run(scheduler.resources(["boost_usr_prod"]))
    cpu = run(scheduler.resources(["dcgp_usr_prod"]))
    both = run(scheduler.resources([]))

    # lrdn0003 is drained and lrdc0002 down: neither counts.
    assert (gpu.nodes, gpu.cpus, gpu.memory_mb, gpu.gpus) == (2, 64, 988000, {"a100": 8})
    assert (cpu.nodes, cpu.cpus, cpu.gpus) == (1, 112, {})
    assert both.nodes == 3


def test_resources_of_the_recorded_22_05_node(token: Path, api: respx.MockRouter) -> None:
    api.get(path("v0.0.38", "nodes")).respond(200, json=answer("v0.0.38", "nodes.json"))

    res = run(make("v0.0.38", token).resources(["boost_usr_prod"]))

    assert (res.nodes, res.cpus, res.memory_mb, res.gpus) == (1, 32, 20000, {"a100": 4})


# --- submitting ----------------------------------------------------------------------------------


def submit(version: str, token: Path, tmp_path: Path, script: str = SCRIPT) -> str:
    job = tmp_path / "job.sh"
    job.write_text(script)
    return run(make(version, token).submit(str(job), "/scratch/pods/default/train-3f6c"))


def sent(route: respx.Route) -> Any:
    return json.loads(route.calls.last.request.content)


def test_v0_0_38_submission_carries_the_script_and_plain_properties(
    token: Path, tmp_path: Path, api: respx.MockRouter
) -> None:
    route = api.post(path("v0.0.38", "job/submit")).respond(
        200, json=answer("v0.0.38", "submit.json")
    )

    job_id = submit("v0.0.38", token, tmp_path)

    assert job_id == "116"
    body = sent(route)
    assert body["script"] == SCRIPT
    assert body["job"] == {
        "current_working_directory": "/scratch/pods/default/train-3f6c",
        "environment": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        "name": "train",
        "comment": "interlink-slurm:3f6c2b1e-8d4a-4c1e-9b7a-2a5d0e6f1c01",
        "standard_output": "/scratch/pods/default/train-3f6c/job.out",
        "open_mode": "append",
        "partition": "boost_usr_prod",
        "nodes": "1-1",
        "tasks": 1,
        "cpus_per_task": 8,
        "memory_per_node": 32768,
        "gres": "gpu:a100:2",
        "time_limit": 90,
        "account": "proj_ai",
        "qos": "boost_qos_dbg",
        "exclusive": "exclusive",
        "constraints": "ib",
    }


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_v0_0_4x_submission_uses_the_data_parser_shapes(
    version: str, token: Path, tmp_path: Path, api: respx.MockRouter
) -> None:
    route = api.post(path(version, "job/submit")).respond(200, json=answer(version, "submit.json"))

    job_id = submit(version, token, tmp_path)

    assert job_id == "4242"
    body = sent(route)
    assert "script" not in body
    job = body["job"]
    assert job["script"] == SCRIPT
    assert job["environment"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ]
    assert job["open_mode"] == ["APPEND"]
    assert (job["minimum_nodes"], job["maximum_nodes"]) == (1, 1)
    assert job["memory_per_node"] == {"set": True, "infinite": False, "number": 32768}
    assert job["time_limit"] == {"set": True, "infinite": False, "number": 90}
    assert job["tres_per_node"] == "gres/gpu:a100:2"
    assert "gres" not in job
    assert job["shared"] == ["none"]
    assert (job["partition"], job["cpus_per_task"], job["constraints"]) == (
        "boost_usr_prod",
        8,
        "ib",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_slurm_refusing_the_job_is_submit_rejected_with_its_reason(
    version: str, token: Path, tmp_path: Path, api: respx.MockRouter
) -> None:
    api.post(path(version, "job/submit")).respond(
        500, json=answer(version, "submit_invalid_partition.json")
    )
    jobs = api.get(path(version, "jobs")).respond(200, json=answer(version, "jobs.json"))

    with pytest.raises(SubmitRejected, match="Invalid partition name specified"):
        submit(version, token, tmp_path)
    assert jobs.called  # no job carries the pod's comment: the refusal stands


def test_a_job_slurm_queued_despite_the_error_is_taken_not_refused(
    token: Path, tmp_path: Path, api: respx.MockRouter
) -> None:
    # Seen on 22.05 while a node came back: "Required node not available" with HTTP 500, and
    # the job queued all the same. Refusing it would leave a job without its pod directory.
    api.post(path("v0.0.38", "job/submit")).respond(
        500,
        json={"errors": [{"error_code": 2019, "error": "Required node not available"}]},
    )
    jobs = answer("v0.0.38", "jobs.json")
    jobs["jobs"][1]["comment"] = "interlink-slurm:3f6c2b1e-8d4a-4c1e-9b7a-2a5d0e6f1c01"
    api.get(path("v0.0.38", "jobs")).respond(200, json=jobs)

    assert submit("v0.0.38", token, tmp_path) == str(jobs["jobs"][1]["job_id"])


def test_a_missing_environment_refused_by_22_05_is_named(
    token: Path, tmp_path: Path, api: respx.MockRouter
) -> None:
    api.post(path("v0.0.38", "job/submit")).respond(
        400, json=answer("v0.0.38", "submit_no_environment.json")
    )
    api.get(path("v0.0.38", "jobs")).respond(200, json=answer("v0.0.38", "jobs.json"))

    with pytest.raises(SubmitRejected, match="environment must be set"):
        submit("v0.0.38", token, tmp_path)


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_slurmrestd_warnings_are_logged(
    version: str,
    token: Path,
    tmp_path: Path,
    api: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api.post(path(version, "job/submit")).respond(
        200, json=answer(version, "submit_unknown_field.json")
    )

    with caplog.at_level(logging.WARNING):
        assert submit(version, token, tmp_path) == "4242"

    assert 'Ignoring unknown field "gres"' in caplog.text


def test_an_option_without_a_rest_translation_stops_the_submission_naming_it(
    token: Path, tmp_path: Path, api: respx.MockRouter
) -> None:
    route = api.post(path("v0.0.41", "job/submit")).respond(200, json={})
    script = SCRIPT.replace("#SBATCH --constraint=ib", "#SBATCH --array=1-4")

    with pytest.raises(SchedulerError, match="--array") as err:
        submit("v0.0.41", token, tmp_path, script)

    assert not isinstance(err.value, SubmitRejected)
    assert not route.called


def test_a_missing_script_is_a_scheduler_error(token: Path, tmp_path: Path) -> None:
    with pytest.raises(SchedulerError, match="does not exist"):
        run(make("v0.0.41", token).submit(str(tmp_path / "nope.sh"), str(tmp_path)))


# --- cancel and signal ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_cancelling_a_job_slurm_no_longer_knows_is_fine(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    api.delete(path(version, "job/999999")).respond(
        500, json=answer(version, "cancel_invalid_job.json")
    )

    run(make(version, token).cancel("999999"))


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_signal_reaches_the_batch_script_too(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    route = api.delete(path(version, "job/4101")).respond(200, json=answer(version, "cancel.json"))

    run(make(version, token).signal("4101", "TERM"))

    assert dict(route.calls.last.request.url.params) == {"signal": "TERM", "flags": "FULL_JOB"}


def test_v0_0_38_signal_is_a_delete_with_the_signal(token: Path, api: respx.MockRouter) -> None:
    route = api.delete(path("v0.0.38", "job/116")).respond(200, json={"errors": []})

    run(make("v0.0.38", token).signal("116", "TERM"))

    assert dict(route.calls.last.request.url.params) == {"signal": "TERM"}


# --- credentials ---------------------------------------------------------------------------------


def test_requests_carry_the_user_name_and_the_token(token: Path, api: respx.MockRouter) -> None:
    route = api.get(path("v0.0.41", "ping")).respond(200, json=answer("v0.0.41", "ping.json"))

    run(make("v0.0.41", token).ping())

    headers = route.calls.last.request.headers
    assert headers["X-SLURM-USER-NAME"] == "svc-interlink"
    assert headers["X-SLURM-USER-TOKEN"] == "eyJhbGciOiJIUzI1NiJ9.first"


def test_a_renewed_token_file_is_read_again(token: Path, api: respx.MockRouter) -> None:
    route = api.get(path("v0.0.41", "ping")).respond(200, json=answer("v0.0.41", "ping.json"))
    scheduler = make("v0.0.41", token)

    async def twice() -> None:
        await scheduler.ping()
        token.write_text("eyJhbGciOiJIUzI1NiJ9.renewed-by-cron\n")
        stat = token.stat()
        os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        await scheduler.ping()

    run(twice())

    tokens = [c.request.headers["X-SLURM-USER-TOKEN"] for c in route.calls]
    assert tokens == ["eyJhbGciOiJIUzI1NiJ9.first", "eyJhbGciOiJIUzI1NiJ9.renewed-by-cron"]


def test_an_unreadable_token_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SchedulerUnavailable, match=r"rest.token_file: cannot read .*/gone"):
        run(make("v0.0.41", tmp_path / "gone").ping())


def test_refused_credentials_name_the_token_settings(token: Path, api: respx.MockRouter) -> None:
    api.get(path("v0.0.41", "jobs")).respond(401, text="Authentication failure")

    with pytest.raises(SchedulerUnavailable, match=r"rest\.user_name and rest\.token_file"):
        run(make("v0.0.41", token).query(["1"]))


# --- slurmrestd or slurmctld out of reach ---------------------------------------------------------


def test_a_version_slurmrestd_does_not_serve_names_api_version(
    token: Path, api: respx.MockRouter
) -> None:
    api.get(path("v0.0.41", "ping")).respond(
        404, text="Unable find requested URL. Please view /openapi/v3 for API reference."
    )

    with pytest.raises(SchedulerError, match=r"rest.api_version") as err:
        run(make("v0.0.41", token).ping())

    assert not isinstance(err.value, SchedulerUnavailable)


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_a_controller_slurmrestd_cannot_reach_is_unavailable(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    api.get(path(version, "jobs")).respond(500, json=answer(version, "jobs_controller_down.json"))

    with pytest.raises(SchedulerUnavailable, match="Unable to contact slurm controller"):
        run(make(version, token).query(["4101"]))


@pytest.mark.parametrize(
    ("method", "rest", "name", "call"),
    [
        ("GET", "jobs", "jobs_controller_down.json", lambda s: s.query(["1"])),
        ("GET", "nodes", "nodes_controller_down.json", lambda s: s.resources([])),
        ("GET", "ping", "ping_controller_down.json", lambda s: s.ping()),
        ("DELETE", "job/1", "cancel_controller_down.json", lambda s: s.cancel("1")),
    ],
)
def test_22_05_answers_with_slurmctld_stopped_are_unavailable(
    method: str, rest: str, name: str, call: Any, token: Path, api: respx.MockRouter
) -> None:
    # Recorded: reads say only "Failed while looking for jobs" or "Unspecified error" (-1).
    api.route(method=method, path=path("v0.0.38", rest)).respond(500, json=answer("v0.0.38", name))

    with pytest.raises(SchedulerUnavailable, match="Slurm is not reachable through slurmrestd"):
        run(call(make("v0.0.38", token)))


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("[Errno 111] Connection refused"), httpx.ReadTimeout("timed out")],
)
def test_slurmrestd_out_of_reach_is_unavailable(
    error: Exception, token: Path, api: respx.MockRouter
) -> None:
    api.get(path("v0.0.41", "jobs")).mock(side_effect=error)

    with pytest.raises(SchedulerUnavailable, match=f"slurmrestd at {URL}"):
        run(make("v0.0.41", token).query(["1"]))


def test_a_gateway_error_without_slurm_errors_is_unavailable(
    token: Path, api: respx.MockRouter
) -> None:
    api.get(path("v0.0.41", "nodes")).respond(502, text="<html>Bad Gateway</html>")

    with pytest.raises(SchedulerUnavailable, match="Bad Gateway"):
        run(make("v0.0.41", token).resources([]))


def test_a_unix_socket_url_is_reached_over_that_socket(tmp_path: Path) -> None:
    rest = RestSettings(url=f"unix://{tmp_path}/slurmrestd.sock", api_version="v0.0.41")
    scheduler = RestScheduler(rest, LocalTransport())

    with pytest.raises(SchedulerUnavailable, match=r"slurmrestd\.sock is not reachable"):
        run(scheduler.ping())


# --- through the HTTP API: what interLink sees ---------------------------------------------------


@pytest.fixture
def plugin(tmp_path: Path, token: Path) -> Iterator[TestClient]:
    settings = load_settings(
        None,
        data_root=str(tmp_path / "data"),
        runtime="apptainer",
        scheduler="rest",
        rest={"url": URL, "api_version": "v0.0.41", "token_file": str(token)},
    )
    transport, scheduler = factory.build(settings)
    store = Store(settings.state_db_path)
    store.open()
    client = TestClient(create_app(Service(settings, scheduler, transport, store), None))
    with client:
        yield client
    store.close()


def create(client: TestClient) -> httpx.Response:
    pod = podgen.pod("refused", [podgen.container("main", "print(1)")])
    return client.post("/create", content=json.dumps(podgen.retrieved(pod)))


def test_create_refused_by_slurm_answers_422_with_slurms_reason(
    plugin: TestClient, tmp_path: Path
) -> None:
    with respx.mock(base_url=URL, assert_all_called=False) as api:
        api.get(path("v0.0.41", "jobs")).respond(200, json={"jobs": []})
        api.post(path("v0.0.41", "job/submit")).respond(
            500, json=answer("v0.0.41", "submit_invalid_partition.json")
        )
        r = create(plugin)

    assert r.status_code == 422
    assert r.text == "Slurm refused the job: Invalid partition name specified"
    assert not list((tmp_path / "data" / "default").iterdir())  # nothing left behind


def test_create_while_slurmrestd_is_down_answers_503_naming_it(plugin: TestClient) -> None:
    with respx.mock(base_url=URL) as api:
        api.route().mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
        r = create(plugin)
        ready = plugin.get("/readyz")

    assert r.status_code == 503
    assert f"slurmrestd at {URL} is not reachable" in r.text
    assert r.headers["Retry-After"]
    assert ready.status_code == 503


# --- held jobs (images pulled on the submit host first) ------------------------------------------


def test_a_held_submission_is_a_job_not_an_error(
    token: Path, tmp_path: Path, api: respx.MockRouter
) -> None:
    held = answer("v0.0.38", "submit_held.json")
    route = api.post(path("v0.0.38", "job/submit")).respond(200, json=held)

    job_id = submit("v0.0.38", token, tmp_path, SCRIPT.replace("#\n", "#SBATCH --hold\n#\n", 1))

    assert job_id == str(held["job_id"])
    assert sent(route)["job"]["hold"] is True


@pytest.mark.parametrize("version", VERSIONS)
def test_release_lifts_the_hold_with_a_job_update(
    version: str, token: Path, api: respx.MockRouter
) -> None:
    route = api.post(path(version, "job/4102")).respond(200, json=answer("v0.0.38", "release.json"))

    run(make(version, token).release("4102"))

    assert sent(route) == {"hold": False}


@pytest.mark.parametrize("name", ["release_done.json", "release_invalid_job.json"])
def test_releasing_a_job_that_ended_or_is_gone_is_fine(
    name: str, token: Path, api: respx.MockRouter
) -> None:
    api.post(path("v0.0.38", "job/17818")).respond(500, json=answer("v0.0.38", name))

    run(make("v0.0.38", token).release("17818"))


def test_a_release_slurm_refuses_is_an_error(token: Path, api: respx.MockRouter) -> None:
    api.post(path("v0.0.38", "job/17818")).respond(
        500, json={"errors": [{"error_number": 2002, "error": "Access/permission denied"}]}
    )

    with pytest.raises(SchedulerError, match="permission denied"):
        run(make("v0.0.38", token).release("17818"))
