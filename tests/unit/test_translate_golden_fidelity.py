"""Golden scripts of pods using the fidelity features (annotations, MPI, node directories,
restarts, probes and hooks), per runtime; read the diff when they change."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import RetrievedPodData
from tests import podgen as pg
from tests.unit.golden import check_golden
from tests.unit.test_translate import GPU_SETTINGS, RUNTIMES, runtime_settings

MPI_UID = "44444444-5555-4666-8777-888888888888"
SERVICE_UID = "55555555-6666-4777-8888-999999999999"
SING_UID = "66666666-7777-4888-8999-aaaaaaaaaaaa"


def mpi_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """A 2-node MPI simulation with a data claim, a pre-exec and site flags."""
    sim = pg.container(
        "sim",
        command=["/opt/sim/bin/solver"],
        args=["--input=/data/case.nml", "--steps=1000"],
        resources={"limits": {"cpu": "64", "memory": "128Gi"}},
        volumeMounts=[
            {"name": "data", "mountPath": "/data"},
            {"name": "fast", "mountPath": "/scratch"},
        ],
    )
    p = pg.pod(
        "mpi-sim",
        [sim],
        uid=MPI_UID,
        volumes=[
            {"name": "data", "persistentVolumeClaim": {"claimName": "cases"}},
            {"name": "fast", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        ],
        annotations={
            "slurm-job.vk.io/flags": "--constraint=ib -t 2:00:00 --exclusive",
            "slurm-job.vk.io/pre-exec": "module load openmpi/4.1\nulimit -s unlimited",
            "slurm-job.vk.io/mpi-flags": "--mpi=pmix --cpu-bind=cores",
            "interlink-slurm/mpi-launcher": "srun",
            "interlink-slurm/nodes": "2",
            "interlink-slurm/tasks-per-node": "32",
        },
    )
    return p, {}


def service_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """A long-running service: restarts, probes, hooks, the tunnel and the pod's IP."""
    web = pg.container(
        "web",
        command=["python3", "-m", "http.server", "8888"],
        ports=[{"name": "http", "containerPort": 8888}],
        startupProbe={"tcpSocket": {"port": 8888}, "periodSeconds": 2, "failureThreshold": 30},
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
        livenessProbe={"exec": {"command": ["test", "-e", "/tmp/alive"]}, "failureThreshold": 5},
        lifecycle={
            "postStart": {"exec": {"command": ["touch", "/tmp/alive"]}},
            "preStop": {"httpGet": {"path": "/quit", "port": 8888}},
        },
    )
    p = pg.pod(
        "web-0",
        [web],
        uid=SERVICE_UID,
        restartPolicy="Always",
        terminationGracePeriodSeconds=20,
        annotations={
            "interlink.eu/pod-ip": "10.244.3.17",
            "interlink.eu/wstunnel-client-commands": (
                "./wstunnel client -R tcp://[::]:8888:localhost:8888 "
                "ws://web-0.tunnels.example:80 &"
            ),
        },
    )
    return p, {}


def singularity_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """Apptainer/Singularity only: extra options and mounts from annotations."""
    p = pg.pod(
        "sing",
        [pg.container("main", "print('hi')", resources={"limits": {"nvidia.com/gpu": "1"}})],
        uid=SING_UID,
        annotations={
            "slurm-job.vk.io/singularity-options": "--cleanenv --env OMP_NUM_THREADS=8",
            "slurm-job.vk.io/singularity-mounts": "--bind /leonardo_work/p1/in:/in:ro",
        },
    )
    return p, {}


PODS = {"mpi": mpi_pod, "service": service_pod, "singularity": singularity_pod}
RUNTIMES_OF = {"mpi": RUNTIMES, "service": RUNTIMES, "singularity": ["apptainer", "singularity"]}
CASES = [(pod, runtime) for pod, runtimes in RUNTIMES_OF.items() for runtime in runtimes]


def plan(pod_name: str, runtime: str) -> JobPlan:
    the_pod, objects = PODS[pod_name]()
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod, **objects))
    s = runtime_settings(
        runtime,
        **GPU_SETTINGS,
        pvc_root="/shared/claims",
        host_path_prefixes=["/leonardo_work/p1"],
        account="site_acct",
    )
    return build_plan(data, s, f"/data/ils/pods/{the_pod['metadata']['uid']}")


@pytest.mark.parametrize(("pod_name", "runtime"), CASES)
def test_rendered_script_matches_golden(pod_name: str, runtime: str) -> None:
    check_golden(f"{pod_name}.{runtime}.sh", render_script(plan(pod_name, runtime)))


@pytest.mark.parametrize(("pod_name", "runtime"), CASES)
def test_rendered_script_is_valid_bash(pod_name: str, runtime: str) -> None:
    script = render_script(plan(pod_name, runtime))
    run = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# Enroot's create mode (enroot_create_dir): one node (probes and hooks start the created name
# too) and two (unpacked, created and removed on each node).
CREATE_CASES = ["service", "mpi"]


def create_plan(pod_name: str) -> JobPlan:
    the_pod, objects = PODS[pod_name]()
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod, **objects))
    s = runtime_settings(
        "enroot",
        **GPU_SETTINGS,
        pvc_root="/shared/claims",
        host_path_prefixes=["/leonardo_work/p1"],
        account="site_acct",
        enroot_create_dir="/local/enroot",
    )
    return build_plan(data, s, f"/data/ils/pods/{the_pod['metadata']['uid']}")


@pytest.mark.parametrize("pod_name", CREATE_CASES)
def test_enroot_create_script_matches_golden(pod_name: str) -> None:
    check_golden(f"{pod_name}.enroot-create.sh", render_script(create_plan(pod_name)))


@pytest.mark.parametrize("pod_name", CREATE_CASES)
def test_enroot_create_script_is_valid_bash(pod_name: str) -> None:
    script = render_script(create_plan(pod_name))
    run = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
