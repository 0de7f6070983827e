"""Images pulled on the submit host into the shared cache while the job waits, held, in Slurm.

Apptainer is not installable here, so `runtime_path` points at a stand-in that does what the
plugin relies on: `pull --force OUT SOURCE` writes OUT (and fails for a reference containing
"missing", as a registry would), `exec`/`run` checks that its SIF file is there and runs the
command on the node. Everything else is real: the held job in Slurm, the pull started on the
submit host (locally, or over SSH on the login node), the release (scontrol, or slurmrestd's
job update), the job running afterwards, and the back-off when a pull fails.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import podgen
from tests.integration.conftest import (
    Plugin,
    all_terminated,
    rest_plugin,
    slurm,
    squeue,
    states,
    user_dir,
)
from tests.standin import APPTAINER

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", params=["local", "rest"])
def pulling(
    request: pytest.FixtureRequest,
    cluster: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Plugin, Path]]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"pulls-{mode}")
    # Readable by the job user in the SSH/REST setup, where jobs run as that user.
    if mode == "rest":
        node = request.getfixturevalue("login_node")
        base = user_dir(node.user, "pulls")
    else:
        base = user_dir("root", "pulls")
    cache = base / "cache"
    stand_in = base / "apptainer"
    stand_in.write_text(APPTAINER)
    stand_in.chmod(0o755)
    if mode == "rest":
        cache.mkdir()
        shutil.chown(cache, node.user, node.user)
    config: dict[str, Any] = {
        "runtime": "apptainer",
        "runtime_path": str(stand_in),
        "images": {},
        "image_cache_dir": str(cache),
        "status_refresh_seconds": 0.5,
    }
    if mode == "rest":
        p = rest_plugin(workdir, cluster, request.getfixturevalue("rest_server"), node, **config)
    else:
        p = Plugin(workdir, cluster, **config)
    p.start()
    try:
        yield p, cache
    finally:
        p.stop()


def pod(name: str, image: str) -> dict[str, Any]:
    c = {"name": "main", "image": image, "command": ["sh", "-c", "echo hello from the node"]}
    return podgen.pod(f"{name}-{uuid.uuid4().hex[:6]}", [c])


def pull_log(plugin: Plugin, pod: dict[str, Any]) -> str:
    """The output of the pod's image pulls on the submit host, through the API."""
    r = plugin.client.request(
        "GET", "/getLogs?source=pull", content=plugin.log_body(pod, "main"), headers=plugin.headers
    )
    assert r.status_code == 200, r.text
    return r.text


def waiting(status: dict[str, Any]) -> dict[str, str]:
    return dict(states(status)["main"].get("waiting") or {})


def test_a_missing_image_is_pulled_once_on_the_submit_host_then_the_job_runs(
    pulling: tuple[Plugin, Path], cluster: dict[str, str]
) -> None:
    plugin, cache = pulling
    first = pod("first", "docker.io/library/busybox:1.36")
    job_id = plugin.create_ok(podgen.retrieved(first))

    assert "#SBATCH --hold" in (plugin.pod_dir(first) / "job.sh").read_text()
    held = plugin.pod_status(first)
    if not all_terminated(held):  # the stand-in pulls in 2 s: usually seen waiting
        assert waiting(held)["reason"] == "ContainerCreating"
    status = plugin.wait_for(first, all_terminated, timeout=120)
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert plugin.logs(first, "main").text == (
        "image: SIF of docker://docker.io/library/busybox:1.36\nhello from the node\n"
    )
    assert (cache / "pulls.log").read_text() == "docker://docker.io/library/busybox:1.36\n"
    assert "interlink-slurm: pulling docker://docker.io/library/busybox:1.36 into " in (
        pull_log(plugin, first)
    )

    # A second pod of the same image finds it in the cache: not held, not pulled again.
    second = pod("second", "docker.io/library/busybox:1.36")
    plugin.create_ok(podgen.retrieved(second))
    assert "--hold" not in (plugin.pod_dir(second) / "job.sh").read_text()
    status = plugin.wait_for(second, all_terminated, timeout=120)
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert (cache / "pulls.log").read_text().count("busybox") == 1
    assert squeue(cluster, job_id) in ("", "COMPLETED")


def test_a_failed_pull_keeps_the_job_held_with_err_image_pull_until_the_pod_goes(
    pulling: tuple[Plugin, Path], cluster: dict[str, str]
) -> None:
    plugin, _ = pulling
    bad = pod("bad", "registry.example.org/team/missing:1")
    job_id = plugin.create_ok(podgen.retrieved(bad))

    status = plugin.wait_for(bad, lambda s: waiting(s).get("reason") == "ErrImagePull", timeout=60)

    message = waiting(status)["message"]
    assert "docker://registry.example.org/team/missing:1" in message
    assert "manifest unknown" in message
    assert "next attempt in 10 s" in message
    state, reason = slurm(cluster, "squeue", "-h", "-j", job_id, "-o", "%T %r").split()
    # Still held after the failure: nothing ran on a compute node.
    assert (state, reason) == ("PENDING", "JobHeldUser")
    assert "FATAL: While making image from oci registry" in pull_log(plugin, bad)

    assert plugin.delete(bad).status_code == 200
    plugin.wait_for(bad, all_terminated, timeout=60)
    assert squeue(cluster, job_id) in ("", "CANCELLED")
