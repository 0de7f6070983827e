"""The partitions and GPU types of site profiles count in the ping and are checked by doctor,
like the top-level ones (a scripted Slurm with one answer per partition)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from interlink_slurm.config import Settings, load_settings
from interlink_slurm.service import Service
from interlink_slurm.slurm.doctor import Doctor
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.slurm.scheduler import ClusterResources
from interlink_slurm.slurm.transport import LocalTransport
from interlink_slurm.store import Store

PARTITIONS = {
    "dcgp_usr_prod": ClusterResources(cpus=112, memory_mb=512_000, nodes=1),
    "boost_usr_prod": ClusterResources(cpus=32, memory_mb=512_000, gpus={"a100": 4}, nodes=1),
    "lrd_all_serial": ClusterResources(cpus=8, memory_mb=32_000, gpus={"v100": 1}, nodes=1),
}


class PerPartition(FakeScheduler):
    async def resources(self, partitions: Sequence[str]) -> ClusterResources:
        self.calls.append(f"resources {','.join(partitions)}")
        found = [PARTITIONS[p] for p in partitions if p in PARTITIONS]
        gpus: dict[str, int] = {}
        for r in found:
            for t, n in r.gpus.items():
                gpus[t] = gpus.get(t, 0) + n
        return ClusterResources(
            cpus=sum(r.cpus for r in found),
            memory_mb=sum(r.memory_mb for r in found),
            gpus=gpus,
            nodes=sum(r.nodes for r in found),
        )


def leonardo(tmp_path: Path, **profile: object) -> Settings:
    return load_settings(
        None,
        data_root=str(tmp_path),
        partition="dcgp_usr_prod",
        gpu_partition="boost_usr_prod",
        gpu_type="a100",
        profiles={"serial": {"partition": "lrd_all_serial", "gpu_type": "v100", **profile}},
    )


def test_the_ping_counts_the_profiles_partitions_and_gpu_types(tmp_path: Path) -> None:
    settings = leonardo(tmp_path)
    scheduler = PerPartition()
    store = Store(tmp_path / "state.db")
    store.open()
    try:
        service = Service(settings, scheduler, LocalTransport(), store)
        ping = asyncio.run(service.ping())
    finally:
        store.close()
    assert scheduler.calls == ["resources boost_usr_prod,dcgp_usr_prod,lrd_all_serial"]
    assert ping.resources.cpu == "152"
    [gpus] = ping.resources.accelerators
    assert gpus.available == "5"  # 4 a100 + 1 v100


def test_doctor_checks_the_profiles_partitions_and_gpu_types(tmp_path: Path) -> None:
    doctor = Doctor(leonardo(tmp_path), LocalTransport(), PerPartition())
    asyncio.run(doctor.check_partitions())
    assert {c.name: c.ok for c in doctor.checks} == {
        "partition": True,
        "gpu_partition": True,
        "profiles.serial.partition": True,
        "gpu_type": True,
        "profiles.serial.gpu_type": True,
    }

    wrong = Doctor(
        leonardo(tmp_path, partition="nope", gpu_type="h100"), LocalTransport(), PerPartition()
    )
    asyncio.run(wrong.check_partitions())
    failed = {c.name: c for c in wrong.checks if not c.ok}
    assert set(failed) == {"profiles.serial.partition", "profiles.serial.gpu_type"}
    assert "nope: no usable node" in failed["profiles.serial.partition"].detail
    assert "set profiles.serial.partition to a partition" in failed["profiles.serial.partition"].fix
    assert "no GRES gpu:h100 in partition nope" in failed["profiles.serial.gpu_type"].detail


def test_doctor_checks_each_targets_partition_on_its_own_cluster(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        data_root=str(tmp_path),
        partition="dcgp_usr_prod",
        clusters={"far": {"data_root": str(tmp_path / "far")}},
        targets={
            "here": {"partition": "dcgp_usr_prod"},
            "there": {"partition": "boost_usr_prod", "gpu_type": "h100", "cluster": "far"},
        },
    )
    far = Doctor(settings.for_cluster("far"), LocalTransport(), PerPartition(), "far")
    asyncio.run(far.check_partitions())
    # Only the far cluster's target: the top-level partition is the default cluster's.
    assert {c.name: c.ok for c in far.checks} == {
        "targets.there.partition": True,
        "targets.there.gpu_type": False,
    }
    here = Doctor(settings, LocalTransport(), PerPartition())
    asyncio.run(here.check_partitions())
    assert [c.name for c in here.checks] == ["partition", "targets.here.partition"]
