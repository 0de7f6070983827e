"""A pod posted the way interLink posts it runs as a real Slurm job with real containers."""

from __future__ import annotations

import json
import time

import pytest

from tests import podgen
from tests.integration.conftest import (
    GPUS_PER_NODE,
    REPO,
    Plugin,
    all_terminated,
    any_running,
    nodes,
    squeue,
    states,
)

pytestmark = pytest.mark.slurm


def test_pod_that_prints_and_exits_zero_succeeds_with_its_log(plugin: Plugin) -> None:
    pod = podgen.pod("hello", [podgen.container("main", "print('hello from slurm')")])
    job_id = plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated)

    assert status["JID"] == job_id
    assert status["UID"] == pod["metadata"]["uid"]
    assert (status["name"], status["namespace"]) == ("hello", "default")
    term = states(status)["main"]["terminated"]
    assert term["exitCode"] == 0
    assert term["reason"] == "Completed"
    assert term["startedAt"] <= term["finishedAt"]
    assert plugin.logs(pod, "main").text == "hello from slurm\n"


def test_exit_code_of_a_container_is_reported(plugin: Plugin) -> None:
    pod = podgen.pod("exit42", [podgen.container("main", "import sys; sys.exit(42)")])
    plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated)

    term = states(status)["main"]["terminated"]
    assert term["exitCode"] == 42
    assert term["reason"] == "Error"


def test_failing_init_container_stops_the_pod(plugin: Plugin) -> None:
    pod = podgen.pod(
        "init-fails",
        [podgen.container("main", "print('main ran')")],
        init=[
            podgen.container("first", "print('first ok')"),
            podgen.container("second", "import sys; print('second fails'); sys.exit(3)"),
            podgen.container("third", "print('third ran')"),
        ],
    )
    plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated)

    init = states(status, "initContainers")
    assert init["first"]["terminated"]["exitCode"] == 0
    assert init["second"]["terminated"]["exitCode"] == 3
    assert init["third"]["terminated"]["reason"] == "InitContainerFailed"
    main = states(status)["main"]["terminated"]
    assert main["reason"] == "InitContainerFailed"
    assert "second" in main["message"]
    assert "startedAt" not in main
    assert plugin.logs(pod, "main").text == ""
    assert plugin.logs(pod, "second").text == "second fails\n"
    assert not (plugin.pod_dir(pod) / "containers" / "main.started").exists()


def test_init_containers_run_in_order_before_the_containers(plugin: Plugin) -> None:
    record = "/mnt/work/order"
    pod = podgen.pod(
        "init-order",
        [
            podgen.container(
                "main",
                f"print(open('{record}').read(), end='')",
                volumeMounts=[{"name": "work", "mountPath": "/mnt/work"}],
            )
        ],
        init=[
            podgen.container(
                f"step{i}",
                f"open('{record}', 'a').write('step{i}\\n')",
                volumeMounts=[{"name": "work", "mountPath": "/mnt/work"}],
            )
            for i in (1, 2, 3)
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated)

    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert plugin.logs(pod, "main").text == "step1\nstep2\nstep3\n"


def test_config_map_and_secret_volumes_are_readable_in_the_container(plugin: Plugin) -> None:
    secret_value = "p@ss 'word' $HOME `x`\nsecond line ✓"
    pod = podgen.pod(
        "volumes",
        [
            podgen.container(
                "main",
                "import os\n"
                "print(open('/mnt/config/greeting').read())\n"
                "print(repr(open('/mnt/secret/password').read()))\n"
                "print(oct(os.stat('/mnt/secret/password').st_mode & 0o777))",
                volumeMounts=[
                    {"name": "cfg", "mountPath": "/mnt/config"},
                    {"name": "sec", "mountPath": "/mnt/secret"},
                ],
            )
        ],
        volumes=[
            {"name": "cfg", "configMap": {"name": "app-config"}},
            {"name": "sec", "secret": {"secretName": "app-secret"}},
        ],
    )
    data = podgen.retrieved(
        pod,
        config_maps=[podgen.config_map("app-config", {"greeting": "hello from a configMap"})],
        secrets=[podgen.secret("app-secret", {"password": secret_value})],
    )
    plugin.create_ok(data)

    status = plugin.wait_for(pod, all_terminated)

    assert states(status)["main"]["terminated"]["exitCode"] == 0, plugin.logs(pod, "main").text
    # Owner-only, and read-only while the job runs (Charliecloud's binds are read-write).
    assert plugin.logs(pod, "main").text == (f"hello from a configMap\n{secret_value!r}\n0o400\n")


def test_gpu_pod_sees_the_requested_number_of_gpus(plugin: Plugin) -> None:
    pod = podgen.pod(
        "gpu",
        [
            podgen.container(
                "train",
                "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))",
                resources={"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}},
            )
        ],
    )
    plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated)

    assert states(status)["train"]["terminated"]["exitCode"] == 0
    devices = plugin.logs(pod, "train").text.strip().split(",")
    assert len(devices) == 2
    script = (plugin.pod_dir(pod) / "job.sh").read_text()
    assert "#SBATCH --gres=gpu:a100:2" in script
    assert "#SBATCH --partition=boost_usr_prod" in script


def test_delete_of_a_running_pod_ends_its_job(plugin: Plugin, cluster: dict[str, str]) -> None:
    pod = podgen.pod(
        "sleeper",
        [podgen.container("main", "import time\nprint('started', flush=True)\ntime.sleep(300)")],
    )
    job_id = plugin.create_ok(podgen.retrieved(pod))
    plugin.wait_for(pod, any_running)

    r = plugin.delete(pod)

    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while squeue(cluster, job_id) not in ("", "CANCELLED", "COMPLETED", "FAILED"):
        assert time.monotonic() < deadline, squeue(cluster, job_id)
        time.sleep(0.5)
    status = plugin.wait_for(pod, all_terminated)
    term = states(status)["main"]["terminated"]
    assert term["exitCode"] != 0
    assert plugin.delete(pod).status_code == 200  # a second delete is fine


def test_create_is_idempotent_on_the_pod_uid(plugin: Plugin, cluster: dict[str, str]) -> None:
    pod = podgen.pod("twice", [podgen.container("main", "print('once')")])
    data = podgen.retrieved(pod)

    first = plugin.create_ok(data)
    second = plugin.create_ok(data)
    legacy = plugin.create([data])  # interLink <= 0.4 sent a one-element array

    assert first == second
    assert legacy.status_code == 200 and legacy.json()["PodJID"] == first
    status = plugin.wait_for(pod, all_terminated)
    assert plugin.logs(pod, "main").text == "once\n"
    assert status["JID"] == first


def test_pods_survive_a_restart_of_the_service(plugin: Plugin) -> None:
    pod = podgen.pod("restart", [podgen.container("main", "print('before restart')")])
    job_id = plugin.create_ok(podgen.retrieved(pod))
    plugin.wait_for(pod, all_terminated)

    plugin.restart()

    status = plugin.pod_status(pod)
    assert status["JID"] == job_id
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert plugin.logs(pod, "main").text == "before restart\n"
    assert plugin.create_ok(podgen.retrieved(pod)) == job_id
    assert plugin.delete(pod).status_code == 200


def test_unknown_pods_get_no_status_and_their_delete_is_fine(plugin: Plugin) -> None:
    pod = podgen.pod("never-created", [podgen.container("main", "print(1)")])

    assert plugin.status([pod]).json() == []
    assert plugin.delete(pod).status_code == 200
    assert plugin.logs(pod, "main").status_code == 404


def test_ping_reports_the_cluster_resources(plugin: Plugin) -> None:
    r = plugin.status([])

    assert r.status_code == 200
    ping = r.json()
    assert ping["status"] == "ok"
    assert int(ping["resources"]["cpu"]) > 0
    assert ping["resources"]["memory"].endswith("Mi")
    assert ping["resources"]["accelerators"] == [
        {
            "resourceType": "nvidia.com/gpu",
            "available": str(GPUS_PER_NODE * len(nodes(plugin.cluster))),
        }
    ]
    assert plugin.client.get("/readyz").status_code == 200


def test_readme_walkthrough_examples_work(plugin: Plugin) -> None:
    """The files the README's curl walkthrough posts, posted the same way."""
    examples = REPO / "examples"
    pod_data = json.loads((examples / "hello-pod.json").read_text())
    status_body = json.loads((examples / "hello-status.json").read_text())
    logs_body = json.loads((examples / "hello-logs.json").read_text())
    assert status_body == [pod_data["pod"]]
    assert logs_body["PodUID"] == pod_data["pod"]["metadata"]["uid"]
    headers = {"Content-Type": "application/json"}

    r = plugin.client.post("/create", content=json.dumps(pod_data), headers=headers)
    assert r.status_code == 200, r.text
    status = plugin.wait_for(pod_data["pod"], all_terminated, timeout=120)
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    r = plugin.client.request("GET", "/getLogs", content=json.dumps(logs_body), headers=headers)
    assert r.text.startswith("hello, Leonardo\nthis file came from a configMap\nworking 0\n")
    r = plugin.client.post("/delete", content=json.dumps(status_body), headers=headers)
    assert r.status_code == 200, r.text
