"""Pod fidelity on the real local Slurm + Charliecloud: annotations, volumes, restarts, probes.

One plugin process (local mode) with a configuration of its own: fast restarts, a claim root,
a host path prefix. Pods are created together where they can run side by side, to keep the
module quick.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import podgen
from tests.integration.conftest import (
    REPO,
    Plugin,
    all_terminated,
    any_running,
    free_port,
    slurm,
    states,
)

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def fplugin(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    workdir = tmp_path_factory.mktemp("fidelity")
    claims = workdir / "claims"
    claims.mkdir()
    p = Plugin(
        workdir,
        cluster,
        pvc_root=str(claims),
        restart_backoff_seconds=1,
        restart_backoff_max_seconds=2,
        status_refresh_seconds=0.5,
        gpus_per_node=4,
        images={"debian-python": cluster["ILS_IMAGE"], "python:3.12-slim": cluster["ILS_IMAGE"]},
    )
    p.start()
    try:
        yield p
    finally:
        p.stop()


def create(plugin: Plugin, data: dict[str, Any]) -> str:
    """create_ok, riding out a controller another test module stops for a while (503)."""
    deadline = time.monotonic() + 90
    while True:
        r = plugin.create(data)
        if r.status_code != 503 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return str(r.json()["PodJID"])
        time.sleep(1)


def test_containers_share_a_memory_backed_empty_dir_removed_when_the_job_ends(
    fplugin: Plugin,
) -> None:
    shared = [{"name": "shm", "mountPath": "/mnt/shared"}]
    writer = podgen.container(
        "writer",
        "import os\nopen('/mnt/shared/msg.tmp', 'w').write('via shared memory')\n"
        "os.rename('/mnt/shared/msg.tmp', '/mnt/shared/msg')",
        volumeMounts=shared,
    )
    reader = podgen.container(
        "reader",
        "import os, time\n"
        "while not os.path.exists('/mnt/shared/msg'): time.sleep(0.1)\n"
        "print(open('/mnt/shared/msg').read())",
        volumeMounts=shared,
    )
    pod = podgen.pod(
        "shm", [writer, reader], volumes=[{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    )
    create(fplugin, podgen.retrieved(pod))

    status = fplugin.wait_for(pod, all_terminated)

    assert {n: s["terminated"]["exitCode"] for n, s in states(status).items()} == {
        "writer": 0,
        "reader": 0,
    }
    assert fplugin.logs(pod, "reader").text == "via shared memory\n"
    # The containers' end is reported before the job's own exit (its cleanup) has run.
    shm = Path(f"/dev/shm/interlink-slurm-{pod['metadata']['uid']}")
    deadline = time.monotonic() + 30
    while shm.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not shm.exists()


def test_config_map_items_sub_path_projected_token_and_claim(fplugin: Plugin) -> None:
    script = (
        "import os\n"
        "print(open('/mnt/config/app.yaml').read(), end='')\n"
        "print(sorted(os.listdir('/mnt/config')))\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "print(open(sa + '/token').read(), open(sa + '/namespace').read())\n"
        "open('/mnt/data/result', 'w').write('kept')\n"
    )
    main = podgen.container(
        "main",
        script,
        volumeMounts=[
            {"name": "cfg", "mountPath": "/mnt/config", "subPath": "conf"},
            {"name": "sa", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            {"name": "data", "mountPath": "/mnt/data"},
        ],
    )
    volumes = [
        {
            "name": "cfg",
            "configMap": {
                "name": "app",
                "items": [
                    {"key": "app", "path": "conf/app.yaml"},
                    {"key": "extra", "path": "conf/extra.txt", "mode": 0o600},
                    {"key": "other", "path": "elsewhere.txt"},
                ],
            },
        },
        {"name": "sa", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "results"}},
    ]
    pod = podgen.pod("volumes-plus", [main], volumes=volumes)
    token = "eyJhbGciOiJSUzI1NiJ9.payload.signature"
    data = podgen.retrieved(
        pod,
        config_maps=[podgen.config_map("app", {"app": "port: 8080\n", "extra": "x", "other": "y"})],
        projected=[
            {
                "metadata": {"name": "sa", "namespace": "default"},
                "data": {"token": token, "namespace": "default", "ca.crt": "-----BEGIN..."},
            }
        ],
    )
    create(fplugin, data)

    status = fplugin.wait_for(pod, all_terminated)

    assert states(status)["main"]["terminated"]["exitCode"] == 0, fplugin.logs(pod, "main").text
    assert fplugin.logs(pod, "main").text == (
        f"port: 8080\n['app.yaml', 'extra.txt']\n{token} default\n"
    )
    claim = Path(fplugin.settings["pvc_root"]) / "default" / "results" / "result"
    assert claim.read_text() == "kept"  # a claim outlives its pod


def test_on_failure_restarts_a_failing_container_and_counts_its_restarts(
    fplugin: Plugin,
) -> None:
    script = (
        "import os, sys\n"
        "n = len(os.listdir('/mnt/work'))\n"
        "open(f'/mnt/work/run{n}', 'w').close()\n"
        "print('attempt', n + 1, flush=True)\n"
        "sys.exit(0 if n >= 2 else 3)"
    )
    main = podgen.container(
        "main", script, volumeMounts=[{"name": "work", "mountPath": "/mnt/work"}]
    )
    pod = podgen.pod(
        "flaky", [main], volumes=[{"name": "work", "emptyDir": {}}], restartPolicy="OnFailure"
    )
    create(fplugin, podgen.retrieved(pod))

    seen: set[str] = set()

    def done(status: dict[str, Any]) -> bool:
        c = status["containers"][0]
        seen.update(c["state"])
        if "waiting" in c["state"]:
            seen.add(c["state"]["waiting"]["reason"])
        return all_terminated(status)

    status = fplugin.wait_for(pod, done, timeout=120)

    c = status["containers"][0]
    assert c["state"]["terminated"]["exitCode"] == 0
    assert c["restartCount"] == 2
    assert "CrashLoopBackOff" in seen
    assert fplugin.logs(pod, "main").text == "attempt 3\n"
    assert fplugin.logs(pod, "main", Previous=True).text == "attempt 2\n"


def test_readiness_probe_makes_the_container_ready_once_it_answers(fplugin: Plugin) -> None:
    port = free_port()
    # The image has python3-minimal (no http.server): a tiny HTTP server on a socket.
    script = (
        "import socket, time\n"
        "print('warming up', flush=True)\n"
        "time.sleep(3)\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port}))\n"
        "s.listen()\n"
        "print('serving', flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        "    c.recv(4096)\n"
        "    c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n"
        "    c.close()\n"
    )
    main = podgen.container(
        "main",
        script,
        workingDir="/mnt/work",
        volumeMounts=[{"name": "work", "mountPath": "/mnt/work"}],
        ports=[{"name": "http", "containerPort": port}],
        startupProbe={"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 30},
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    )
    pod = podgen.pod("ready", [main], volumes=[{"name": "work", "emptyDir": {}}])
    create(fplugin, podgen.retrieved(pod))
    try:
        first = fplugin.wait_for(pod, any_running)
        assert first["containers"][0]["ready"] is False
        status = fplugin.wait_for(pod, lambda s: s["containers"][0]["ready"] is True, timeout=60)
        assert "running" in status["containers"][0]["state"]
        assert (fplugin.pod_dir(pod) / "containers" / "main.startup-ok").exists()
        fplugin.wait_for_log(pod, "main", "warming up\nserving\n")
    finally:
        assert fplugin.delete(pod).status_code == 200
    status = fplugin.wait_for(pod, all_terminated)
    assert status["containers"][0]["ready"] is False


def test_annotations_flags_pre_exec_pod_ip_tunnel_and_tasks(
    fplugin: Plugin, cluster: dict[str, str]
) -> None:
    script = "import os; print(os.environ.get('FROM_PRE_EXEC'), os.environ.get('POD_IP'))"
    pod = podgen.pod(
        "annotated",
        [podgen.container("main", script)],
        annotations={
            "slurm-job.vk.io/flags": "-t 7 --requeue",
            "slurm-job.vk.io/pre-exec": "export FROM_PRE_EXEC=hello",
            "interlink.eu/pod-ip": "10.244.0.42",
            "interlink.eu/wstunnel-client-commands": "echo up > state; sleep 300 & echo $! > pid",
            "interlink-slurm/tasks-per-node": "2",
        },
    )
    job_id = create(fplugin, podgen.retrieved(pod))
    time_limit = slurm(cluster, "squeue", "-h", "-j", job_id, "-o", "%l").strip()

    status = fplugin.wait_for(pod, all_terminated)

    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert time_limit == "7:00"
    # srun ran the container on both tasks of the job.
    assert fplugin.logs(pod, "main").text == "hello 10.244.0.42\n" * 2
    pod_dir = fplugin.pod_dir(pod)
    assert (pod_dir / "tunnel" / "state").read_text() == "up\n"
    tunnel_pid = int((pod_dir / "tunnel" / "pid").read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{tunnel_pid}").exists():
        assert time.monotonic() < deadline, "the tunnel outlived the job"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("annotations", "words"),
    [
        ({"slurm-job.vk.io/flags": "--uid=0"}, ["slurm-job.vk.io/flags", "--uid"]),
        ({"slurm-job.vk.io/flags": "-o /etc/passwd"}, ["--output"]),
        ({"slurm-job.vk.io/flags": "--partition=secret"}, ["--partition secret"]),
        ({"slurm-job.vk.io/singularity-options": "--nv"}, ["charliecloud"]),
    ],
)
def test_refused_annotations_answer_422_naming_them(
    fplugin: Plugin, annotations: dict[str, str], words: list[str]
) -> None:
    pod = podgen.pod("refused", [podgen.container("main", "pass")], annotations=annotations)
    r = fplugin.create(podgen.retrieved(pod))
    assert r.status_code == 422, r.text
    for w in words:
        assert w in r.text


def test_a_pod_asking_more_gpus_than_a_node_has_is_refused(fplugin: Plugin) -> None:
    gpus = {"nvidia.com/gpu": "8"}
    pod = podgen.pod(
        "too-many-gpus", [podgen.container("main", "pass", resources={"limits": gpus})]
    )
    r = fplugin.create(podgen.retrieved(pod))
    assert r.status_code == 422
    assert "8 GPUs on one node" in r.text and "interlink-slurm/nodes" in r.text


def test_datagen_job_example_runs_its_shard(fplugin: Plugin) -> None:
    pod = yaml.safe_load((REPO / "examples" / "datagen-job.yaml").read_text())
    pod["metadata"]["uid"] = str(uuid.uuid4())
    create(fplugin, {"pod": pod, "container": [{"name": "generate"}]})

    status = fplugin.wait_for(pod, all_terminated)

    assert states(status)["generate"]["terminated"]["exitCode"] == 0
    assert fplugin.logs(pod, "generate").text.startswith("shard 7: 1000 rows, sha256 ")


def test_liveness_restarts_a_hung_container_and_hooks_run_in_its_image(fplugin: Plugin) -> None:
    work = [{"name": "work", "mountPath": "/mnt/work"}]
    # Alive while /mnt/work/alive exists; the container removes it on its first run and hangs.
    # postStart runs beside the container's process (as in Kubernetes): wait for its file.
    script = (
        "import os, time\n"
        "first = not os.path.exists('/mnt/work/started-once')\n"
        "open('/mnt/work/started-once', 'a').close()\n"
        "print('first run' if first else 'second run', flush=True)\n"
        "while first and not os.path.exists('/mnt/work/alive'): time.sleep(0.05)\n"
        "if first: os.remove('/mnt/work/alive')\n"
        "time.sleep(300)\n"
    )
    main = podgen.container(
        "main",
        script,
        volumeMounts=work,
        livenessProbe={
            "exec": {"command": ["test", "-e", "/mnt/work/alive"]},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
        lifecycle={
            "postStart": {"exec": {"command": ["touch", "/mnt/work/alive"]}},
            "preStop": {"exec": {"command": ["touch", "/mnt/work/pre-stop-ran"]}},
        },
    )
    pod = podgen.pod(
        "liveness",
        [main],
        volumes=[{"name": "work", "emptyDir": {}}],
        restartPolicy="Always",
        terminationGracePeriodSeconds=5,
    )
    create(fplugin, podgen.retrieved(pod))
    try:
        status = fplugin.wait_for(
            pod,
            lambda s: s["containers"][0]["restartCount"] >= 1 and any_running(s),
            timeout=90,
        )
        fplugin.wait_for_log(pod, "main", "second run\n")
        assert fplugin.logs(pod, "main", Previous=True).text == "first run\n"
        assert status["containers"][0]["ready"] is True  # no readiness probe: ready while running
    finally:
        assert fplugin.delete(pod).status_code == 200
    fplugin.wait_for(pod, all_terminated)
    volume = fplugin.pod_dir(pod) / "volumes" / "work"
    assert (volume / "pre-stop-ran").exists()
    job_out = (fplugin.pod_dir(pod) / "job.out").read_text()
    assert "container main failed its liveness probe 2 times: stopping it" in job_out


def test_delete_runs_the_pre_stop_hook_before_the_container_gets_sigterm(
    fplugin: Plugin,
) -> None:
    work = [{"name": "work", "mountPath": "/mnt/work"}]
    script = (
        "import os, signal, sys, time\n"
        "def bye(*_):\n"
        "    done = os.path.exists('/mnt/work/pre-stop-done')\n"
        "    print('SIGTERM; preStop done before it:', done, flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    main = podgen.container(
        "main",
        script,
        volumeMounts=work,
        lifecycle={
            # Slow on purpose: SIGTERM must wait for it.
            "preStop": {"exec": {"command": ["sh", "-c", "sleep 2; touch /mnt/work/pre-stop-done"]}}
        },
    )
    pod = podgen.pod(
        "prestop",
        [main],
        volumes=[{"name": "work", "emptyDir": {}}],
        terminationGracePeriodSeconds=20,
    )
    create(fplugin, podgen.retrieved(pod))
    fplugin.wait_for_log(pod, "main", "ready\n")

    assert fplugin.delete(pod).status_code == 200

    status = fplugin.wait_for(pod, all_terminated, timeout=60)
    assert fplugin.logs(pod, "main").text == "ready\nSIGTERM; preStop done before it: True\n"
    assert states(status)["main"]["terminated"]["exitCode"] == 0


def test_an_empty_dir_over_its_size_limit_evicts_the_pod(fplugin: Plugin) -> None:
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    print('stopping', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "open('/mnt/scratch/blob', 'wb').write(b'x' * (3 << 20))\n"
        "print('wrote 3 MiB', flush=True)\n"
        "time.sleep(300)\n"
    )
    main = podgen.container(
        "main", script, volumeMounts=[{"name": "scratch", "mountPath": "/mnt/scratch"}]
    )
    pod = podgen.pod(
        "evicted",
        [main],
        volumes=[{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}],
        restartPolicy="Always",
        terminationGracePeriodSeconds=5,
    )
    create(fplugin, podgen.retrieved(pod))

    # The job looks every 10 s.
    status = fplugin.wait_for(pod, all_terminated, timeout=90)

    term = states(status)["main"]["terminated"]
    assert term["reason"] == "Evicted"
    assert term["message"] == 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi".'
    assert term["exitCode"] == 0  # it ended on its SIGTERM, and was not restarted
    assert fplugin.logs(pod, "main").text == "wrote 3 MiB\nstopping\n"
    job_out = (fplugin.pod_dir(pod) / "job.out").read_text()
    assert "emptyDir volume scratch uses 3" in job_out and "the pod is evicted" in job_out
