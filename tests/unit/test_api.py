"""The HTTP API's error paths: bad input, auth, limits, Slurm failures. Slurm is a scripted fake
here; the same API on real Slurm is in tests/integration."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from interlink_slurm import jobdir
from interlink_slurm.api import create_app
from interlink_slurm.config import load_settings
from interlink_slurm.errors import SchedulerUnavailable, SubmitRejected
from interlink_slurm.logsetup import JsonFormatter
from interlink_slurm.service import Service
from interlink_slurm.slurm.cli import CliScheduler
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.slurm.scheduler import ClusterResources, JobInfo
from interlink_slurm.slurm.transport import CommandResult, LocalTransport
from interlink_slurm.store import Store
from tests import podgen

TOKEN = "s3cret-token"


class Harness:
    def __init__(
        self,
        root: Path,
        *,
        enter: bool = True,
        scheduler: FakeScheduler | None = None,
        **config: Any,
    ) -> None:
        self.root = root
        self.data_root = root / "data"
        self.settings = load_settings(
            None,
            data_root=str(self.data_root),
            runtime="apptainer",
            partition="cpu",
            gpu_partition="gpu",
            gpu_type="a100",
            **config,
        )
        self.scheduler = scheduler or FakeScheduler()
        self.store = Store(self.settings.state_db_path)
        self.store.open()
        self.service = Service(self.settings, self.scheduler, LocalTransport(), self.store)
        self.app = create_app(self.service, self.settings.token())
        self.client = TestClient(self.app)
        self.entered = enter
        if enter:  # runs the app's lifespan (the status refresher) in the client's loop
            self.client.__enter__()

    def refresh(self) -> None:
        """One pass of the status refresher, now (it otherwise runs every few seconds)."""
        portal = self.client.portal
        assert portal is not None
        portal.call(self.service.refresh)

    def close(self) -> None:
        if self.entered:
            self.client.__exit__(None, None, None)
        self.store.close()

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        content = body if isinstance(body, str | bytes) else json.dumps(body)
        return self.client.post(path, content=content, **kw)

    def get(self, path: str, body: Any, **kw: Any) -> Any:
        content = body if isinstance(body, str | bytes) else json.dumps(body)
        return self.client.request("GET", path, content=content, **kw)

    def files(self) -> set[str]:
        """Every file under the test's root, relative to it."""
        out = set()
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                out.add(os.path.relpath(os.path.join(dirpath, n), self.root))
        return out


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def simple(name: str = "p", **kw: Any) -> dict[str, Any]:
    return podgen.retrieved(podgen.pod(name, [podgen.container("c", "print(1)")], **kw))


def test_create_answers_pod_uid_and_job_id(api: Harness) -> None:
    data = simple()
    r = api.post("/create", data)
    assert r.status_code == 200, r.text
    assert r.json() == {"PodUID": data["pod"]["metadata"]["uid"], "PodJID": "1001"}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("{not json", 400, ["not valid JSON", "line 1"]),
        ("", 400, ["empty"]),
        ("[1, 2]", 400, ["array of 2"]),
        ('"a string"', 400, ["RetrievedPodData"]),
        (json.dumps({"container": []}), 400, ["pod", "Field required"]),
    ],
)
def test_malformed_create_bodies_are_refused_with_the_reason(
    api: Harness, body: str, status: int, words: list[str]
) -> None:
    r = api.post("/create", body)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/plain")
    for w in words:
        assert w in r.text


def _without_uid() -> dict[str, Any]:
    data = simple()
    del data["pod"]["metadata"]["uid"]
    return data


def _with_meta(**meta: Any) -> dict[str, Any]:
    data = simple()
    data["pod"]["metadata"].update(meta)
    return data


def _with_nfs() -> dict[str, Any]:
    data = simple()
    data["pod"]["spec"]["volumes"] = [{"name": "shared", "nfs": {"server": "x", "path": "/"}}]
    data["pod"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "shared", "mountPath": "/mnt/shared"}
    ]
    return data


def _with_container_name(name: str) -> dict[str, Any]:
    data = simple()
    data["pod"]["spec"]["containers"][0]["name"] = name
    return data


def _with_config_key(key: str) -> dict[str, Any]:
    data = simple()
    data["pod"]["spec"]["volumes"] = [
        {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "k", "path": key}]}}
    ]
    data["pod"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "cfg", "mountPath": "/etc/cfg"}
    ]
    for c in data["container"]:
        c["configMaps"] = [podgen.config_map("cm", {"k": "v"})]
    return data


def _with_host_alias(ip: str, *names: str) -> dict[str, Any]:
    data = simple()
    data["pod"]["spec"]["hostAliases"] = [{"ip": ip, "hostnames": list(names)}]
    return data


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (_without_uid(), 400, ["metadata.uid", "missing"]),
        (_with_host_alias("10.0.0.1; rm -rf /", "db"), 400, ["hostAliases", "not an IP address"]),
        (_with_host_alias("10.0.0.1", "db\n1.2.3.4 evil"), 400, ["hostnames", "not a DNS"]),
        (_with_meta(uid="not-a-uuid"), 400, ["metadata.uid", "not a UUID"]),
        (_with_meta(name="../x"), 400, ["metadata.name", "'../x'"]),
        (_with_meta(name="UPPER"), 400, ["metadata.name"]),
        (_with_meta(namespace="../../etc"), 400, ["metadata.namespace"]),
        (_with_container_name("../evil"), 400, ["containers", "not a DNS label"]),
        (_with_nfs(), 422, ["spec.volumes[0]", "'nfs'", "not support"]),
        (_with_config_key("../../escape"), 400, ["path", "'..'"]),
        (_with_config_key("/etc/passwd"), 400, ["relative path"]),
    ],
)
def test_bad_pods_are_refused_naming_the_field_and_nothing_is_written(
    api: Harness, data: dict[str, Any], status: int, words: list[str]
) -> None:
    before = api.files()

    r = api.post("/create", data)

    assert r.status_code == status, r.text
    for w in words:
        assert w in r.text
    assert api.files() == before
    assert api.scheduler.calls == []


def test_status_of_a_new_pod_waits_for_the_next_refresh(api: Harness) -> None:
    data = simple("fresh")
    api.post("/create", data)
    [status] = api.get("/status", [data["pod"]]).json()
    waiting = status["containers"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"
    assert status["JID"] == "1001"


def test_status_is_served_from_the_refreshed_snapshot(api: Harness) -> None:
    data = simple("watched")
    api.post("/create", data)
    api.refresh()
    r = api.get("/status", [data["pod"]])
    assert r.status_code == 200
    [status] = r.json()
    assert status["JID"] == "1001"
    waiting = status["containers"][0]["state"]["waiting"]
    assert waiting["reason"] == "Priority"
    assert "pending" in waiting["message"]

    r = api.get("/status", data["pod"])  # a single object is read as a list of one
    assert r.status_code == 200 and len(r.json()) == 1


def test_status_says_where_the_job_runs_and_ran(api: Harness) -> None:
    data = simple("placed")
    api.post("/create", data)
    api.refresh()
    [status] = api.get("/status", [data["pod"]]).json()
    assert "NodeName" not in status  # pending: placed nowhere yet
    comment = f"interlink-slurm:{data['pod']['metadata']['uid']}"
    api.scheduler.jobs["1001"] = JobInfo("1001", "RUNNING", "", comment, "lrdn[0001-0002]")
    api.refresh()
    [status] = api.get("/status", [data["pod"]]).json()
    assert status["NodeName"] == "lrdn[0001-0002]"
    waiting = status["containers"][0]["state"]["waiting"]  # no file says it started yet
    assert waiting["message"].endswith("(Slurm node lrdn[0001-0002])")
    # The job leaves the queue: where it ran is still known (kept in the store).
    del api.scheduler.jobs["1001"]
    api.refresh()
    [status] = api.get("/status", [data["pod"]]).json()
    assert status["NodeName"] == "lrdn[0001-0002]"
    assert "Slurm node lrdn[0001-0002]" in status["containers"][0]["state"]["terminated"]["message"]


def test_ping_is_status_with_an_empty_list(api: Harness) -> None:
    r = api.get("/status", [])
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok",
        "resources": {
            "cpu": "64",
            "memory": "256000Mi",
            "pods": "1000",
            "accelerators": [{"resourceType": "nvidia.com/gpu", "available": "8"}],
        },
    }


@pytest.mark.parametrize(
    ("config", "sent"),
    [
        ({}, None),  # absent: interLink leaves the NodeTaints of its own configuration
        ({"taints": []}, []),  # an operator who wants the node's taints cleared says so
        (
            {"taints": [{"key": "site", "value": "hpc", "effect": "NoExecute"}]},
            [{"key": "site", "value": "hpc", "effect": "NoExecute"}],
        ),
    ],
)
def test_ping_sends_taints_only_when_configured(
    tmp_path: Path, config: dict[str, Any], sent: list[dict[str, str]] | None
) -> None:
    h = Harness(tmp_path, **config)
    try:
        answer = h.get("/status", []).json()
    finally:
        h.close()
    assert answer.get("taints") == sent
    assert ("taints" in answer) == (sent is not None)


def test_ping_with_no_usable_node_is_an_error_naming_the_last_capacity(tmp_path: Path) -> None:
    h = Harness(tmp_path, ping_cache_seconds=0)
    try:
        assert h.get("/status", []).status_code == 200
        for empty in (
            ClusterResources(cpus=0, memory_mb=0, nodes=0),
            ClusterResources(cpus=8, memory_mb=0, nodes=1),
        ):
            h.scheduler.resources_answer = empty
            r = h.get("/status", [])
            # Never a zero capacity with 200: the virtual kubelet would drain the node.
            assert r.status_code == 503
            assert "no Slurm node is usable in partitions cpu, gpu" in r.text
            assert "cpu 64, memory 256000Mi" in r.text
        h.scheduler.resources_answer = ClusterResources(cpus=2, memory_mb=4000, nodes=1)
        assert h.get("/status", []).json()["resources"]["cpu"] == "2"
    finally:
        h.close()


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        ({"Tail": 5, "Bytes": 10}, ["Tail", "Bytes"]),
        ({"SinceSeconds": 5, "SinceTime": "2026-01-01T00:00:00Z"}, ["SinceSeconds", "SinceTime"]),
        ({"Tail": -1}, ["Tail"]),
    ],
)
def test_log_requests_interlink_would_refuse_are_refused(
    api: Harness, opts: dict[str, Any], words: list[str]
) -> None:
    body = {
        "Namespace": "default",
        "PodUID": "6f1c2a4e-3b5d-4e7f-8a9b-0c1d2e3f4a5b",
        "PodName": "p",
        "ContainerName": "c",
        "Opts": opts,
    }
    r = api.get("/getLogs", body)
    assert r.status_code == 400
    for w in words:
        assert w in r.text


@pytest.mark.parametrize(
    ("field", "value"),
    [("PodUID", "nope"), ("Namespace", "Not_A_Label"), ("ContainerName", "../c")],
)
def test_log_requests_with_bad_names_are_refused(api: Harness, field: str, value: str) -> None:
    body = {
        "Namespace": "default",
        "PodUID": "6f1c2a4e-3b5d-4e7f-8a9b-0c1d2e3f4a5b",
        "PodName": "p",
        "ContainerName": "c",
        "Opts": {},
        field: value,
    }
    r = api.get("/getLogs", body)
    assert r.status_code == 400
    assert field in r.text


def test_logs_of_unknown_pod_or_container_are_404(api: Harness) -> None:
    data = simple("known")
    api.post("/create", data)
    meta = data["pod"]["metadata"]
    body = {
        "Namespace": "default",
        "PodUID": meta["uid"],
        "PodName": "known",
        "ContainerName": "other",
        "Opts": {},
    }
    r = api.get("/getLogs", body)
    assert r.status_code == 404 and "'other'" in r.text
    body["PodUID"] = "6f1c2a4e-3b5d-4e7f-8a9b-0c1d2e3f4a5b"
    assert api.get("/getLogs", body).status_code == 404


def test_logs_without_a_container_name_are_the_one_containers(api: Harness) -> None:
    # interLink passes an empty ContainerName on (it checks the name only when there is one).
    data = podgen.retrieved(
        podgen.pod("one", [podgen.container("c", "")], init=[podgen.container("setup", "")])
    )
    assert api.post("/create", data).status_code == 200
    meta = data["pod"]["metadata"]
    pod_dir = api.data_root / "default" / f"one-{meta['uid']}"
    (pod_dir / "containers" / "c.log").write_text("from c\n")
    body = {"Namespace": "default", "PodUID": meta["uid"], "PodName": "one", "Opts": {}}
    for request in (body, {**body, "ContainerName": ""}):
        r = api.get("/getLogs", request)
        assert r.status_code == 200, r.text
        assert r.text == "from c\n"


def test_logs_without_a_container_name_of_a_pod_of_two_name_both(api: Harness) -> None:
    containers = [podgen.container("a", ""), podgen.container("b", "")]
    data = podgen.retrieved(podgen.pod("two", containers))
    assert api.post("/create", data).status_code == 200
    meta = data["pod"]["metadata"]
    body = {"Namespace": "default", "PodUID": meta["uid"], "PodName": "two", "ContainerName": ""}
    r = api.get("/getLogs", body)
    assert r.status_code == 400
    assert "ContainerName" in r.text and "a, b" in r.text


def test_slurm_unreachable_on_create_is_503_with_retry_after_and_nothing_is_lost(
    api: Harness,
) -> None:
    data = simple("retry")
    api.scheduler.fail_next["submit"] = SchedulerUnavailable("Slurm is not reachable: timeout")

    r = api.post("/create", data)

    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert "not reachable" in r.text
    r = api.post("/create", data)  # interLink retries; Slurm is back
    assert r.status_code == 200
    assert api.scheduler.calls.count("submit") == 2


def test_submission_that_did_reach_slurm_is_not_submitted_again(api: Harness) -> None:
    data = simple("landed")
    uid = data["pod"]["metadata"]["uid"]

    # sbatch timed out after Slurm had accepted the job: the answer was lost, the job was not.
    async def submit_then_fail(script_path: str, workdir: str, directives: Sequence[str]) -> str:
        await FakeScheduler.submit(api.scheduler, script_path, workdir, directives)
        raise SchedulerUnavailable("sbatch did not answer within 30 s")

    api.scheduler.submit = submit_then_fail  # type: ignore[method-assign]
    assert api.post("/create", data).status_code == 503
    del api.scheduler.submit  # back to the class's method

    r = api.post("/create", data)

    assert r.status_code == 200
    assert r.json() == {"PodUID": uid, "PodJID": "1001"}
    assert len(api.scheduler.jobs) == 1


def test_job_refused_by_slurm_is_422_and_leaves_no_pod_behind(api: Harness) -> None:
    data = simple("refused")
    api.scheduler.fail_next["submit"] = SubmitRejected(
        "Slurm refused the job: Requested node configuration is not available"
    )

    r = api.post("/create", data)

    assert r.status_code == 422
    assert "Requested node configuration is not available" in r.text
    assert not (api.data_root / "default").exists() or not any(
        (api.data_root / "default").iterdir()
    )
    assert api.store.get(data["pod"]["metadata"]["uid"]) is None


def test_readyz_fails_when_slurm_does_not_answer(api: Harness) -> None:
    assert api.client.get("/readyz").status_code == 200
    api.scheduler.down = SchedulerUnavailable("Slurm is not reachable: connect failure")
    r = api.client.get("/readyz")
    assert r.status_code == 503
    assert "connect failure" in r.text
    assert api.client.get("/healthz").status_code == 200


def test_status_during_a_slurm_outage_serves_the_last_known_state(api: Harness) -> None:
    data = simple("outage")
    api.post("/create", data)
    api.refresh()
    api.scheduler.down = SchedulerUnavailable("Slurm is not reachable: connect failure")
    api.refresh()

    r = api.get("/status", [data["pod"]])

    assert r.status_code == 200
    waiting = r.json()[0]["containers"][0]["state"]["waiting"]
    assert waiting["reason"] == "Priority"
    assert "last known state" in waiting["message"]


def test_request_body_over_the_limit_is_413(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_body_bytes=2048)
    try:
        r = h.post("/create", "x" * 4096)
        assert r.status_code == 413
    finally:
        h.close()


def test_token_is_required_on_every_endpoint_but_the_probes(tmp_path: Path) -> None:
    h = Harness(tmp_path, auth_token=TOKEN)
    try:
        assert h.get("/status", []).status_code == 401
        assert h.post("/create", simple()).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert h.get("/status", [], headers=wrong).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert h.get("/status", [], headers=good).status_code == 200
        assert h.client.get("/healthz").status_code == 200
        assert h.client.get("/readyz").status_code == 200
        assert TOKEN not in h.get("/status", [], headers=wrong).text
    finally:
        h.close()


def test_token_can_come_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    h = Harness(tmp_path, auth_token_file=str(token_file))
    try:
        assert h.get("/status", []).status_code == 401
        ok = h.get("/status", [], headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
    finally:
        h.close()


def test_delete_of_unknown_pod_and_pod_without_uid_is_fine(api: Harness) -> None:
    data = simple("ghost")
    assert api.post("/delete", data["pod"]).status_code == 200
    del data["pod"]["metadata"]["uid"]
    assert api.post("/delete", data["pod"]).status_code == 200
    assert api.post("/delete", "{bad").status_code == 400


def test_status_when_pod_files_cannot_be_read_serves_what_they_said_last(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = simple("unreadable")
    api.post("/create", data)
    api.refresh()
    first = api.get("/status", [data["pod"]]).json()[0]

    def down(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied", "/data")

    # The refresher reads every pod's state files at once (here, in process): it cannot.
    monkeypatch.setattr(jobdir, "scan_states", down)
    api.refresh()
    r = api.get("/status", [data["pod"]])

    assert r.status_code == 200
    waiting = r.json()[0]["containers"][0]["state"]["waiting"]
    assert waiting["reason"] == first["containers"][0]["state"]["waiting"]["reason"]
    assert "cannot read the pod's files" in waiting["message"]


def test_a_submission_cut_short_is_settled_from_slurm_or_from_the_jobs_own_output(
    tmp_path: Path,
) -> None:
    """A crash between sbatch and recording the job: Slurm knows the job by its comment while
    it is queued; once it left the queue (no accounting), its first line in job.out says it."""
    h = Harness(tmp_path, enter=False)
    try:
        ran, never, queued = (podgen.pod(n, [podgen.container("main", "1")]) for n in "abc")
        for pod in (ran, never, queued):
            meta = pod["metadata"]
            pod_dir = tmp_path / "data" / meta["namespace"] / f"{meta['name']}-{meta['uid']}"
            pod_dir.mkdir(parents=True)
            h.store.begin_submit(
                meta["uid"], meta["namespace"], meta["name"], str(pod_dir), [], ["main"]
            )
            if pod is ran:
                (pod_dir / "job.out").write_text(
                    f"interlink-slurm: pod default/{meta['name']} starts as job 4242 on node7\n"
                )
        script = tmp_path / "queued.sh"
        script.write_text(f"#SBATCH --comment=interlink-slurm:{queued['metadata']['uid']}\n")
        queued_job = asyncio.run(h.scheduler.submit(str(script), str(tmp_path), ()))

        asyncio.run(h.service.reconcile())

        def job_of(pod: dict[str, Any]) -> str | None:
            rec = h.store.get(pod["metadata"]["uid"])
            return None if rec is None else rec.job_id

        assert job_of(ran) == "4242"
        assert job_of(queued) == queued_job
        assert h.store.get(never["metadata"]["uid"]) is None  # never submitted: created anew
    finally:
        h.close()


def test_a_uid_with_another_namespace_or_name_shows_nothing_of_the_pod(api: Harness) -> None:
    data = simple("mine", namespace="team-a")
    assert api.post("/create", data).status_code == 200
    meta = data["pod"]["metadata"]
    api.refresh()
    for namespace, name in (("team-b", "mine"), ("team-a", "other")):
        stranger = json.loads(json.dumps(data["pod"]))
        stranger["metadata"].update(namespace=namespace, name=name)
        # status: an empty answer, as for a pod the plugin does not know
        r = api.get("/status", [stranger])
        assert r.status_code == 200 and r.json() == []
        # logs: 404
        logs = {
            "Namespace": namespace,
            "PodUID": meta["uid"],
            "PodName": name,
            "ContainerName": "c",
            "Opts": {},
        }
        r = api.get("/getLogs", logs)
        assert r.status_code == 404 and "not known" in r.text
        # delete: nothing is cancelled
        r = api.post("/delete", stranger)
        assert r.status_code == 200 and "not known here" in r.text
        assert "cancel" not in api.scheduler.calls and "signal" not in api.scheduler.calls
    # The pod itself, named rightly, is still served.
    assert [s["name"] for s in api.get("/status", [data["pod"]]).json()] == ["mine"]
    logs["Namespace"], logs["PodName"] = "team-a", "mine"
    assert api.get("/getLogs", logs).status_code == 200


def test_every_answer_carries_the_request_id_interlink_sent_or_a_new_one(api: Harness) -> None:
    session = {"InterLink-Http-Session": "sess-42"}
    assert api.post("/create", simple("rid"), headers=session).headers["X-Request-Id"] == "sess-42"
    refused = api.post("/create", "{bad", headers=session)
    assert refused.status_code == 400
    assert refused.headers["X-Request-Id"] == "sess-42"
    first = api.client.get("/healthz").headers["X-Request-Id"]
    second = api.client.get("/healthz").headers["X-Request-Id"]
    assert first and second and first != second


def test_an_unexpected_error_is_500_naming_the_request_and_counted(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.service, "status", broken)
    r = api.get("/status", [simple()["pod"]], headers={"InterLink-Http-Session": "sess-7"})

    assert r.status_code == 500
    assert r.text == "internal error in interlink-slurm (request sess-7); see the service log"
    assert r.headers["X-Request-Id"] == "sess-7"
    metrics = api.client.get("/metrics").text
    assert 'interlink_slurm_http_requests_total{code="500",endpoint="/status"} 1.0' in metrics


def test_a_refused_token_is_asked_for_again_with_the_request_id(tmp_path: Path) -> None:
    h = Harness(tmp_path, auth_token=TOKEN)
    try:
        r = h.get("/status", [], headers={"InterLink-Http-Session": "sess-9"})
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.headers["X-Request-Id"] == "sess-9"
    finally:
        h.close()


def test_the_access_line_of_a_create_names_the_request_the_pod_and_its_job(api: Harness) -> None:
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(record)))  # formatted where logged

    access = logging.getLogger("interlink_slurm.access")
    handler, level = Collect(), access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        data = simple("logged")
        r = api.post("/create", data, headers={"InterLink-Http-Session": "sess-1"})
    finally:
        access.removeHandler(handler)
        access.setLevel(level)

    [line] = lines
    assert line["message"] == "POST /create 200"
    assert line["request_id"] == "sess-1"
    assert line["pod_uid"] == data["pod"]["metadata"]["uid"]
    assert line["job_id"] == r.json()["PodJID"]


class MeetingSbatch(LocalTransport):
    """sbatch that returns only once ``n`` of its calls are running at the same time."""

    def __init__(self, n: int) -> None:
        super().__init__()
        # Not a timing: the wait ends as soon as n calls meet; the timeout only ends a test
        # whose calls never overlap (BrokenBarrierError fails the creates).
        self.meeting = threading.Barrier(n, timeout=60)
        self.ids = iter(range(5000, 6000))

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        if argv[0] != "sbatch":
            return CommandResult(tuple(argv), 0, "", "")
        self.meeting.wait()
        return CommandResult(tuple(argv), 0, f"{next(self.ids)}\n", "")


def test_eight_concurrent_creates_run_their_sbatch_at_the_same_time(tmp_path: Path) -> None:
    transport = MeetingSbatch(8)
    h = Harness(tmp_path, scheduler=CliScheduler(transport))  # type: ignore[arg-type]
    try:
        bodies = [simple(f"together-{i}") for i in range(8)]
        with ThreadPoolExecutor(8) as clients:
            answers = list(clients.map(lambda b: h.post("/create", b), bodies))
        assert [a.status_code for a in answers] == [200] * 8, answers[0].text
        assert sorted(a.json()["PodJID"] for a in answers) == [str(5000 + i) for i in range(8)]
    finally:
        h.close()
