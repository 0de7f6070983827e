"""Real Kubernetes pods, as the API server defaults them, on the real local Slurm + Charliecloud.

The image is a hard-linked copy of the test image whose /var/run is an absolute symlink to /run,
as debootstrap and most distributions make it: seen from the host it would point at the host's
/run, so every mount target is looked up inside the image.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import podgen
from tests.integration.conftest import Plugin, all_terminated, states

pytestmark = pytest.mark.slurm

KUBE_IMAGE = "kube-image"


def hard_linked_image(source: str, into: Path) -> Path:
    """A copy of the image sharing its files' contents (new directories, so nothing done to the
    copy's entries reaches the shared image)."""
    subprocess.run(["cp", "-al", "--", source, str(into)], check=True)
    return into


@pytest.fixture(scope="module")
def kimage(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = hard_linked_image(cluster["ILS_IMAGE"], tmp_path_factory.mktemp("kimg") / "img")
    run = img / "var" / "run"
    run.unlink()
    os.symlink("/run", run)
    return img


@pytest.fixture(scope="module")
def kplugin(
    cluster: dict[str, str], kimage: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plugin]:
    workdir = tmp_path_factory.mktemp("real-pods")
    p = Plugin(
        workdir,
        cluster,
        images={"debian-python": cluster["ILS_IMAGE"], KUBE_IMAGE: str(kimage)},
        status_refresh_seconds=0.5,
    )
    p.start()
    try:
        yield p
    finally:
        p.stop()


def run_to_end(plugin: Plugin, data: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    plugin.create_ok(data)
    return plugin.wait_for(data["pod"], all_terminated, timeout)


def test_service_account_volume_is_read_through_the_image_s_absolute_var_run_link(
    kplugin: Plugin, kimage: Path
) -> None:
    assert os.readlink(kimage / "var" / "run") == "/run"
    sa = podgen.SA_MOUNT_PATH
    the_pod = podgen.pod(
        "sa-pod",
        [
            podgen.container(
                "main",
                f"import os; d = {sa!r}\n"
                "print(open(d + '/ca.crt').read().splitlines()[0])\n"
                "print(open(d + '/namespace').read(), len(open(d + '/token').read()) > 0)",
                image=KUBE_IMAGE,
            )
        ],
    )
    data = podgen.kube_retrieved(the_pod)
    status = run_to_end(kplugin, data)
    st = states(status)["main"]["terminated"]
    assert st["exitCode"] == 0, (st, kplugin.logs(the_pod, "main").text)
    assert kplugin.logs(the_pod, "main").text == "-----BEGIN CERTIFICATE-----\ndefault True\n"
    assert "warning" not in (st.get("message") or "")


def test_disable_projected_volumes_runs_the_pod_without_the_token_and_says_so(
    kplugin: Plugin,
) -> None:
    sa = podgen.SA_MOUNT_PATH
    the_pod = podgen.pod(
        "no-sa",
        [
            podgen.container(
                "main",
                f"import os; print(sorted(os.listdir({sa!r})))",
                image=KUBE_IMAGE,
            )
        ],
    )
    data = podgen.kube_retrieved(the_pod, projected_volumes=False)
    status = run_to_end(kplugin, data)
    st = states(status)["main"]["terminated"]
    assert st["exitCode"] == 0
    assert kplugin.logs(the_pod, "main").text == "[]\n"
    assert "warning" in st["message"] and podgen.sa_volume_name(the_pod) in st["message"]


def test_a_mount_path_the_read_only_image_lacks_is_left_out_with_a_warning(
    kplugin: Plugin,
) -> None:
    the_pod = podgen.pod(
        "no-target",
        [
            podgen.container(
                "main",
                "import os; print(os.path.exists('/opt/nowhere'), os.path.exists('/mnt/config/k'))",
                image=KUBE_IMAGE,
                volumeMounts=[
                    {"name": "cfg", "mountPath": "/opt/nowhere"},
                    {"name": "cfg", "mountPath": "/mnt/config"},
                ],
            )
        ],
        volumes=[{"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420}}],
    )
    data = podgen.kube_retrieved(the_pod, config_maps=[podgen.config_map("cfg", {"k": "v"})])
    status = run_to_end(kplugin, data)
    st = states(status)["main"]["terminated"]
    assert st["exitCode"] == 0
    assert kplugin.logs(the_pod, "main").text == "False True\n"
    assert "/opt/nowhere" in st["message"] and "does not exist in image" in st["message"]
