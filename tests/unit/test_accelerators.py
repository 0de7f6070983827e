"""Accelerators beyond NVIDIA: the ``accelerators`` map (extended resource → gres) in the job's
options, the runtime's device flag and the ping; anything unmapped is refused naming it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.service import Service
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.slurm.scheduler import ClusterResources
from interlink_slurm.slurm.transport import LocalTransport
from interlink_slurm.store import Store
from interlink_slurm.translate.script import render_script
from tests import podgen as pg
from tests.unit.test_translate import main, option, plan_of, pod_of, rejection, settings

MAP = {"nvidia.com/gpu": "gpu:a100", "amd.com/gpu": "gpu:mi250x"}


def asking(resource: str, n: Any) -> dict[str, Any]:
    return {"resources": {"limits": {resource: n}}}


@pytest.mark.parametrize(
    ("resource", "gres"), [("nvidia.com/gpu", "gpu:a100:2"), ("amd.com/gpu", "gpu:mi250x:2")]
)
def test_each_mapped_accelerator_becomes_its_gres(resource: str, gres: str) -> None:
    s = settings(partition="cpu", gpu_partition="gpu", accelerators=MAP)
    plan = plan_of(pod_of(main(**asking(resource, 2))), s)
    assert option(plan, "--gres") == gres
    assert option(plan, "--partition") == "gpu"  # a GPU pod, whatever the vendor


def test_the_map_wins_over_gpu_type_and_nvidia_stays_the_default() -> None:
    typed = settings(gpu_type="h100", accelerators={"nvidia.com/gpu": "gpu:a100"})
    assert option(plan_of(pod_of(main(**asking("nvidia.com/gpu", 1))), typed), "--gres") == (
        "gpu:a100:1"
    )
    default = settings(gpu_type="h100")
    assert option(plan_of(pod_of(main(**asking("nvidia.com/gpu", 1))), default), "--gres") == (
        "gpu:h100:1"
    )


def test_an_amd_gpu_container_gets_rocm_not_nv_with_apptainer() -> None:
    s = settings(runtime="apptainer", accelerators=MAP)
    amd = pg.container("amd", command=["rocminfo"], **asking("amd.com/gpu", 1))
    script = render_script(plan_of(pod_of(amd), s))
    assert "--rocm" in script and "--nv" not in script
    nvidia = pg.container("nv", command=["nvidia-smi"], **asking("nvidia.com/gpu", 1))
    script = render_script(plan_of(pod_of(nvidia), s))
    assert "--nv" in script and "--rocm" not in script


@pytest.mark.parametrize(
    ("config", "resource"),
    [
        ({"accelerators": MAP}, "xilinx.com/fpga"),
        ({}, "amd.com/gpu"),  # no map: NVIDIA only
        ({"accelerators": {"amd.com/gpu": "gpu:mi250x"}}, "nvidia.com/gpu"),
    ],
)
def test_an_unmapped_extended_resource_is_refused_naming_it(
    config: dict[str, Any], resource: str
) -> None:
    err = rejection(pod_of(main(**asking(resource, 1))), settings(**config))
    assert err.field == f"spec.containers[0].resources.limits.{resource}"
    assert f"extended resource {resource!r} has no Slurm gres on this site" in err.reason


def test_two_kinds_of_accelerator_in_one_pod_are_refused() -> None:
    pod = pod_of(
        main(**asking("nvidia.com/gpu", 1)), pg.container("b", "", **asking("amd.com/gpu", 1))
    )
    err = rejection(pod, settings(accelerators=MAP))
    assert "amd.com/gpu and nvidia.com/gpu" in err.reason


@pytest.mark.parametrize(
    ("accelerators", "words"),
    [
        ({"gpu": "gpu:a100"}, ["accelerators", "'gpu' is not an extended resource name"]),
        ({"amd.com/gpu": "gpu:mi250x:4"}, ["accelerators", "amd.com/gpu", "without a count"]),
        ({"amd.com/gpu": "gpu mi250x"}, ["accelerators", "amd.com/gpu"]),
    ],
)
def test_the_map_is_checked_at_start(accelerators: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, data_root="/data/ils", accelerators=accelerators)
    for w in words:
        assert w in str(info.value)


def test_the_ping_counts_each_accelerator_by_its_gres_type(tmp_path: Path) -> None:
    s = load_settings(None, data_root=str(tmp_path), accelerators=MAP, ping_cache_seconds=0)
    fake = FakeScheduler(
        resources_answer=ClusterResources(cpus=64, memory_mb=1000, gpus={"a100": 8, "mi250x": 4})
    )
    store = Store(s.state_db_path)
    store.open()
    try:
        answer = asyncio.run(Service(s, fake, LocalTransport(), store).ping())
    finally:
        store.close()
    found = {a.resourceType: a.available for a in answer.resources.accelerators}
    assert found == {"nvidia.com/gpu": "8", "amd.com/gpu": "4"}
