"""Status, logs and deletion on the real Slurm: every state this cluster can produce, every log
option, and the scheduler queried once per refresh whatever the number of /status calls."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podgen
from tests.integration.conftest import (
    GPUS_PER_NODE,
    Plugin,
    all_terminated,
    any_running,
    nodes,
    slurm,
    squeue,
    states,
)

pytestmark = pytest.mark.slurm
RFC3339NANO = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z) (.*)$")


@pytest.fixture(scope="module")
def local(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """A plugin of this module's own, with a short refresh, retention and GC interval."""
    p = Plugin(
        tmp_path_factory.mktemp("status"),
        cluster,
        status_refresh_seconds=1,
        retention_seconds=2,
        gc_interval_seconds=1,
    )
    p.start()
    yield p
    p.stop()


def job_of(plugin: Plugin, pod: dict[str, Any]) -> str:
    return str(plugin.pod_status(pod)["JID"])


def scheduler_queries(plugin: Plugin) -> float:
    text = plugin.client.get("/metrics").text
    m = re.search(
        r'^interlink_slurm_scheduler_calls_total\{operation="query",outcome="ok"\} (\S+)$',
        text,
        re.M,
    )
    return float(m.group(1)) if m else 0.0


def test_status_storm_does_not_multiply_scheduler_queries(local: Plugin) -> None:
    pods = [
        podgen.pod(f"storm-{i}", [podgen.container("main", "import time; time.sleep(20)")])
        for i in range(5)
    ]
    for p in pods:
        local.create_ok(podgen.retrieved(p))
    local.wait_for(pods[-1], any_running)
    before = scheduler_queries(local)
    started = time.monotonic()

    calls = 0
    while time.monotonic() - started < 4:
        for p in pods:  # one pod per call, as the virtual kubelet does
            assert local.status([p]).status_code == 200
            calls += 1

    elapsed = time.monotonic() - started
    queries = scheduler_queries(local) - before
    assert calls > 100
    # One query per refresh interval (1 s here), plus the odd early refresh: never per call.
    assert queries <= elapsed / 1.0 + 3, (queries, calls)
    for p in pods:
        local.delete(p)


@pytest.mark.alone  # every GPU of every node
def test_pending_job_waits_with_slurm_reason_resources(local: Plugin) -> None:
    # The hog holds every GPU of every node.
    n = len(nodes(local.cluster))
    hog = podgen.pod(
        "gpu-hog",
        [
            podgen.container(
                "main",
                "import time; time.sleep(120)",
                resources={"limits": {"nvidia.com/gpu": str(GPUS_PER_NODE * n)}},
            )
        ],
        annotations={"interlink-slurm/nodes": str(n)},
    )
    waiter = podgen.pod(
        "gpu-waiter",
        [
            podgen.container(
                "main", "print('got the gpus')", resources={"limits": {"nvidia.com/gpu": "4"}}
            )
        ],
    )
    local.create_ok(podgen.retrieved(hog))
    local.wait_for(hog, any_running)
    local.create_ok(podgen.retrieved(waiter))

    status = local.wait_for(
        waiter,
        lambda s: states(s)["main"].get("waiting", {}).get("reason") == "Resources",
        timeout=30,
    )

    message = states(status)["main"]["waiting"]["message"]
    assert "pending (Resources)" in message and "GPUs" in message
    local.delete(hog)
    status = local.wait_for(waiter, all_terminated, timeout=90)
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert local.logs(waiter, "main").text == "got the gpus\n"


def test_job_cancelled_by_an_admin_is_reported_as_cancelled_outside_kubernetes(
    local: Plugin, cluster: dict[str, str]
) -> None:
    pod = podgen.pod("admin-cancel", [podgen.container("main", "import time; time.sleep(300)")])
    job_id = local.create_ok(podgen.retrieved(pod))
    local.wait_for(pod, any_running)

    slurm(cluster, "scancel", job_id)

    status = local.wait_for(pod, all_terminated, timeout=60)
    term = states(status)["main"]["terminated"]
    assert term["reason"] == "Cancelled"
    assert "outside Kubernetes" in term["message"]
    assert term["exitCode"] != 0


def test_timeout_from_active_deadline_is_deadline_exceeded(local: Plugin) -> None:
    pod = podgen.pod(
        "deadline",
        [podgen.container("main", "import time; print('start', flush=True); time.sleep(600)")],
        activeDeadlineSeconds=60,
    )
    local.create_ok(podgen.retrieved(pod))
    assert "#SBATCH --time=0-00:01:00" in (local.pod_dir(pod) / "job.sh").read_text()

    # Slurm enforces time limits on its own clock (about every 30 s), so allow it time.
    status = local.wait_for(pod, all_terminated, timeout=180)

    term = states(status)["main"]["terminated"]
    assert term["reason"] == "DeadlineExceeded"
    assert local.logs(pod, "main").text == "start\n"


def test_requeued_job_counts_a_restart_and_keeps_the_previous_log(
    local: Plugin, cluster: dict[str, str]
) -> None:
    # The first run waits to be requeued; the second one ends at once.
    pod = podgen.pod(
        "requeued",
        [
            podgen.container(
                "main",
                "import os, time\nsecond = os.path.exists('/mnt/work/n')\n"
                "open('/mnt/work/n', 'w').write('x')\n"
                "print('run', 2 if second else 1, flush=True)\ntime.sleep(0 if second else 300)",
                volumeMounts=[{"name": "work", "mountPath": "/mnt/work"}],
            )
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    job_id = local.create_ok(podgen.retrieved(pod))
    local.wait_for(pod, any_running)
    # Requeued before the first run has left its mark, the second run would be a first run too.
    local.wait_for_log(pod, "main", "run 1\n")

    slurm(cluster, "scontrol", "requeue", job_id)
    # A requeued job waits about two minutes before it may start again; let it start sooner
    # (once it is pending again: until then Slurm refuses the update). Not at once: started
    # within a second or two, it fails with "Job credential revoked" (the old run's).
    deadline = time.monotonic() + 30
    while squeue(cluster, job_id) != "PENDING":
        assert time.monotonic() < deadline, squeue(cluster, job_id)
        time.sleep(0.2)
    time.sleep(5)
    slurm(cluster, "scontrol", "update", f"JobId={job_id}", "StartTime=now")

    status = local.wait_for(
        pod,
        lambda s: all_terminated(s) and s["containers"][0]["restartCount"] == 1,
        timeout=90,
    )
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert local.logs(pod, "main").text == "run 2\n"
    assert local.logs(pod, "main", Previous=True).text == "run 1\n"
    # The first run, ended by the requeue's SIGTERM, is the container's last state.
    last = status["containers"][0]["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (143, "Error"), last


@pytest.fixture(scope="module")
def chatty(local: Plugin) -> dict[str, Any]:
    """A finished pod that wrote five lines about 0.6 s apart, and the times it wrote them."""
    pod = podgen.pod(
        "chatty",
        [
            podgen.container(
                "main",
                "import time\nfor i in range(1, 6):\n    print(f'line {i}', flush=True)\n"
                "    time.sleep(0.6)\nprint('no newline at the end', end='', flush=True)",
            )
        ],
    )
    local.create_ok(podgen.retrieved(pod))
    local.wait_for(pod, all_terminated)
    return pod


def stamped(text: bytes) -> list[tuple[datetime, bytes]]:
    out = []
    for line in text.splitlines():
        m = RFC3339NANO.match(line)
        assert m, line
        stamp = m.group(1).decode()
        whole, _, frac = stamp.rstrip("Z").partition(".")
        t = datetime.fromisoformat(f"{whole}.{(frac + '000000')[:6]}+00:00")
        out.append((t, m.group(2)))
    return out


def test_logs_tail_and_bytes(local: Plugin, chatty: dict[str, Any]) -> None:
    full = local.logs(chatty, "main").text
    assert full == "line 1\nline 2\nline 3\nline 4\nline 5\nno newline at the end"
    assert local.logs(chatty, "main", Tail=2).text == "line 5\nno newline at the end"
    assert local.logs(chatty, "main", Bytes=9).text == "line 1\nli"


def test_logs_timestamps_are_when_each_line_was_written(
    local: Plugin, chatty: dict[str, Any]
) -> None:
    lines = stamped(local.logs(chatty, "main", Timestamps=True).content)

    assert [text for _, text in lines] == [
        b"line 1",
        b"line 2",
        b"line 3",
        b"line 4",
        b"line 5",
        b"no newline at the end",
    ]
    # Stamped as each line came (in order, spread over the ~2.4 s the container took), not when
    # the log was read. How evenly depends on the node's load, which a test cannot promise.
    gaps = [(b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(lines[:5])]
    assert all(g >= 0 for g in gaps) and 0.5 < sum(gaps) < 10, gaps
    term = states(local.pod_status(chatty))["main"]["terminated"]
    started = datetime.fromisoformat(term["startedAt"].replace("Z", "+00:00"))
    assert abs((lines[0][0] - started).total_seconds()) < 2
    tail = stamped(local.logs(chatty, "main", Tail=1, Timestamps=True).content)
    assert tail == lines[-1:]


def test_logs_since_time_and_since_seconds(local: Plugin, chatty: dict[str, Any]) -> None:
    lines = stamped(local.logs(chatty, "main", Timestamps=True).content)
    third = lines[2][0]
    since = third.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    after = local.logs(chatty, "main", SinceTime=since).text

    assert after == "line 3\nline 4\nline 5\nno newline at the end"
    assert local.logs(chatty, "main", SinceSeconds=3600).text.startswith("line 1\n")
    age = (datetime.now(UTC) - lines[-1][0]).total_seconds()
    assert local.logs(chatty, "main", SinceSeconds=max(1, int(age) - 30)).text == "" or age < 31


def test_follow_streams_lines_as_they_come_and_ends_with_the_container(local: Plugin) -> None:
    pod = podgen.pod(
        "follow",
        [
            podgen.container(
                "main",
                "import time\nfor i in range(4):\n    print('tick', i, flush=True)\n"
                "    time.sleep(1)",
            )
        ],
    )
    local.create_ok(podgen.retrieved(pod))
    local.wait_for(pod, any_running)
    body = {
        "Namespace": "default",
        "PodUID": pod["metadata"]["uid"],
        "PodName": "follow",
        "ContainerName": "main",
        "Opts": {"Follow": True, "Timestamps": True},
    }
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    with local.client.stream(
        "GET", "/getLogs", content=json.dumps(body), headers=local.headers, timeout=60
    ) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))

    text = b"".join(c for _, c in arrivals)
    assert [t for _, t in stamped(text)] == [b"tick 0", b"tick 1", b"tick 2", b"tick 3"]
    # Streamed, not collected: the last tick came well after the first chunk was sent.
    assert arrivals[-1][0] - arrivals[0][0] > 1.5
    # The stream ends on the container's exit file; /status says so at the next refresh.
    local.wait_for(pod, all_terminated, timeout=30)


def test_follow_ends_when_the_client_goes_away(local: Plugin) -> None:
    pod = podgen.pod(
        "follow-away",
        [
            podgen.container(
                "main", "import time\nwhile True:\n    print('.', flush=True)\n    time.sleep(0.2)"
            )
        ],
    )
    local.create_ok(podgen.retrieved(pod))
    local.wait_for(pod, any_running)
    body = {
        "Namespace": "default",
        "PodUID": pod["metadata"]["uid"],
        "PodName": "follow-away",
        "ContainerName": "main",
        "Opts": {"Follow": True},
    }
    with local.client.stream(
        "GET", "/getLogs", content=json.dumps(body), headers=local.headers
    ) as r:
        next(r.iter_raw())
    # The server is still fine and answers at once.
    assert local.status([pod]).status_code == 200
    local.delete(pod)


def test_job_prologue_output_is_reachable(local: Plugin, chatty: dict[str, Any]) -> None:
    body = {
        "Namespace": "default",
        "PodUID": chatty["metadata"]["uid"],
        "PodName": "chatty",
        "ContainerName": "main",
        "Opts": {},
    }
    r = local.client.request(
        "GET", "/getLogs?source=job", content=json.dumps(body), headers=local.headers
    )
    assert r.status_code == 200
    assert f"interlink-slurm: pod default/chatty starts as job {job_of(local, chatty)}" in r.text


def test_delete_gives_the_grace_period_and_sigterm_reaches_the_container(
    local: Plugin, cluster: dict[str, str]
) -> None:
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n    print('got SIGTERM, saving', flush=True); time.sleep(1)\n"
        "    print('saved', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(300)"
    )
    pod = podgen.pod(
        "graceful", [podgen.container("main", script)], terminationGracePeriodSeconds=20
    )
    job_id = local.create_ok(podgen.retrieved(pod))
    local.wait_for_log(pod, "main", "ready\n")

    r = local.delete(pod)

    assert r.status_code == 200 and "20 s" in r.text
    status = local.wait_for(pod, all_terminated, timeout=60)
    assert local.logs(pod, "main").text == "ready\ngot SIGTERM, saving\nsaved\n"
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    deadline = time.monotonic() + 30
    while squeue(cluster, job_id) not in ("", "COMPLETED", "CANCELLED"):
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_deleted_pod_keeps_its_logs_for_the_retention_then_goes(local: Plugin) -> None:
    pod = podgen.pod("retained", [podgen.container("main", "print('keep me a while')")])
    local.create_ok(podgen.retrieved(pod))
    local.wait_for(pod, all_terminated)

    assert local.delete(pod).status_code == 200
    assert local.logs(pod, "main").text == "keep me a while\n"  # right after delete
    pod_dir: Path = local.pod_dir(pod)
    deadline = time.monotonic() + 30
    while pod_dir.exists():
        assert time.monotonic() < deadline, "not collected after the retention"
        time.sleep(0.5)
    assert local.status([pod]).json() == []
    assert local.logs(pod, "main").status_code == 404
    assert local.delete(pod).status_code == 200


def test_metrics_name_requests_scheduler_calls_and_pods(local: Plugin) -> None:
    text = local.client.get("/metrics").text
    for name in (
        'interlink_slurm_http_requests_total{code="200",endpoint="/status"}',
        'interlink_slurm_scheduler_calls_total{operation="query",outcome="ok"}',
        "interlink_slurm_scheduler_call_seconds_bucket",
        "interlink_slurm_http_request_seconds_bucket",
        "interlink_slurm_pods{",
        "interlink_slurm_status_snapshot_age_seconds",
    ):
        assert name in text, name
    assert httpx.get(f"{local.url}/metrics").status_code == 200
