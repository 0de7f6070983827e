"""doctor's checks of the image cache and of what pulls on the submit host need (locally), and
of the largest multi-node job of each partition."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path

from interlink_slurm.config import load_settings
from interlink_slurm.errors import SchedulerUnavailable, SubmitRejected
from interlink_slurm.slurm.doctor import Check, Doctor
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.slurm.scheduler import ClusterResources, Estimate
from interlink_slurm.slurm.transport import LocalTransport


def checks(tmp_path: Path, **config: object) -> dict[str, tuple[bool, str, str]]:
    settings = load_settings(None, data_root=str(tmp_path / "data"), **config)
    doctor = Doctor(settings, LocalTransport(), FakeScheduler())
    asyncio.run(doctor.check_image_cache())
    return {c.name: (c.ok, c.detail, c.fix) for c in doctor.checks}


def test_a_writable_cache_and_the_pull_tools_pass(tmp_path: Path) -> None:
    found = checks(tmp_path, image_cache_dir=str(tmp_path / "cache"))
    assert found["image cache"][0] is True
    assert found["image pulls"][0] is True
    assert "flock" in found["image pulls"][1]
    assert (tmp_path / "cache").is_dir()
    assert list((tmp_path / "cache").iterdir()) == []  # the probe is gone


def test_a_cache_that_cannot_be_written_is_named_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    found = checks(tmp_path, image_cache_dir=str(tmp_path / "file" / "cache"))
    ok, detail, fix = found["image cache"]
    assert not ok and str(tmp_path / "file" / "cache") in detail
    assert "image_cache_dir" in fix


def test_no_cache_no_checks_and_compute_node_pulls_need_no_tools_here(tmp_path: Path) -> None:
    assert checks(tmp_path) == {}
    found = checks(tmp_path, image_cache_dir=str(tmp_path / "c"), image_pull_on="compute_node")
    assert set(found) == {"image cache"}


# --- multi-node jobs ----------------------------------------------------------------------------


class Partitions(FakeScheduler):
    """Nodes per partition, and the most nodes Slurm takes in one job there (MaxNodes)."""

    def __init__(self, nodes: dict[str, int], max_nodes: int = 10000, silent: bool = False):
        super().__init__()
        self.nodes, self.max_nodes, self.silent = nodes, max_nodes, silent
        self.asked: list[list[str]] = []

    async def resources(self, partitions: Sequence[str]) -> ClusterResources:
        n = sum(self.nodes.get(p, 0) for p in partitions)
        return ClusterResources(cpus=16 * n, memory_mb=10000 * n, nodes=n)

    async def estimate(self, directives: Sequence[str], timeout: float) -> Estimate:
        self.asked.append(list(directives))
        if self.silent:
            raise SchedulerUnavailable("Unable to contact slurm controller")
        nodes = int(next(d for d in directives if d.startswith("--nodes=")).split("=")[1])
        if nodes > self.max_nodes:
            raise SubmitRejected("Node count specification invalid")
        return Estimate(start=0.0, detail="")


def multinode(tmp_path: Path, scheduler: Partitions) -> list[Check]:
    settings = load_settings(None, data_root=str(tmp_path), partition="cpu", gpu_partition="gpu")
    doctor = Doctor(settings, LocalTransport(), scheduler)
    asyncio.run(doctor.check_partitions())
    asyncio.run(doctor.check_multinode())
    return [c for c in doctor.checks if c.name == "multi-node"]


def test_doctor_says_the_largest_multi_node_job_of_each_partition(tmp_path: Path) -> None:
    scheduler = Partitions({"cpu": 2, "gpu": 1})
    cpu, gpu = multinode(tmp_path, scheduler)
    assert (cpu.label, cpu.detail) == (
        "ok",
        "cpu: jobs of up to 2 nodes (sbatch --test-only --nodes=2 accepted)",
    )
    assert scheduler.asked == [["--partition=cpu", "--nodes=2", "--ntasks-per-node=1"]]
    # One node: a warning, which fails nothing.
    assert (gpu.label, gpu.ok) == ("warn", True)
    assert gpu.detail.startswith("gpu: 1 usable node: pods over several nodes")


def test_a_partition_limit_below_its_nodes_is_a_warning_with_slurms_words(
    tmp_path: Path,
) -> None:
    [cpu, _] = multinode(tmp_path, Partitions({"cpu": 4, "gpu": 1}, max_nodes=2))
    assert (cpu.label, cpu.detail) == (
        "warn",
        "cpu: jobs of 2 nodes, not of 4 (sbatch --test-only --nodes=4: "
        "Node count specification invalid)",
    )
    [cpu, _] = multinode(tmp_path, Partitions({"cpu": 4, "gpu": 1}, max_nodes=1))
    assert cpu.label == "warn"
    assert "no multi-node job is accepted (sbatch --test-only --nodes=2: " in cpu.detail


def test_no_answer_about_multi_node_jobs_is_a_failure(tmp_path: Path) -> None:
    [cpu, _] = multinode(tmp_path, Partitions({"cpu": 2, "gpu": 1}, silent=True))
    assert (cpu.label, cpu.ok) == ("FAIL", False)
    assert "cpu: no answer from Slurm: Unable to contact slurm controller" in cpu.detail


# --- what the login node needs over SSH ---------------------------------------------------------


def test_over_ssh_the_login_nodes_tools_are_looked_for_and_a_missing_one_is_named(
    tmp_path: Path,
) -> None:
    """The state reader and the pod directory's unpacking run there (bash, find, awk, tar...);
    checked through the transport, here a local one whose PATH lacks tar."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "bash", "date", "find", "sort", "xargs", "awk", "ch-run"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    settings = load_settings(
        None,
        data_root=str(tmp_path / "data"),
        runtime="charliecloud",
        scheduler="rest",  # no Slurm commands to look for
        transport="ssh",
        ssh={"host": "login.example", "user": "ils"},
        state_db=str(tmp_path / "state.db"),
        rest={"url": "unix:///run/slurmrestd/slurmrestd.socket"},
    )
    doctor = Doctor(settings, LocalTransport(env={"PATH": str(bin_dir)}), FakeScheduler())
    asyncio.run(doctor.check_commands())
    found = {c.name: (c.ok, c.detail, c.fix) for c in doctor.checks}
    ok, detail, fix = found["login node tools"]
    assert not ok and detail == "not found on the login node: tar", detail
    assert "tar" in fix
    (bin_dir / "tar").symlink_to(shutil.which("tar") or "/bin/tar")
    doctor = Doctor(settings, LocalTransport(env={"PATH": str(bin_dir)}), FakeScheduler())
    asyncio.run(doctor.check_commands())
    assert {c.name: c.ok for c in doctor.checks} == {"runtime": True, "login node tools": True}


def test_squashfs_images_under_charliecloud_need_unsquashfs_where_jobs_are_submitted(
    tmp_path: Path,
) -> None:
    """Mapped to a .sqfs image, a pod's command, ENV, WORKDIR and mount points are read with
    unsquashfs: doctor looks for it (through the transport, here a PATH without it, then
    with it), and not at all when no image is a SquashFS file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "ch-run"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)

    def run(images: dict[str, str]) -> dict[str, tuple[bool, str, str]]:
        settings = load_settings(
            None,
            data_root=str(tmp_path / "data"),
            runtime="charliecloud",
            scheduler="rest",  # no Slurm commands to look for
            rest={"url": "unix:///run/slurmrestd/slurmrestd.socket"},
            images=images,
        )
        doctor = Doctor(settings, LocalTransport(env={"PATH": str(bin_dir)}), FakeScheduler())
        asyncio.run(doctor.check_commands())
        return {c.name: (c.ok, c.detail, c.fix) for c in doctor.checks}

    assert "squashfs tools" not in run({"tool": "/images/tool"})
    ok, detail, fix = run({"tool": "/images/tool.sqfs"})["squashfs tools"]
    assert not ok and detail == "not found on this machine: unsquashfs", detail
    assert "squashfs-tools" in fix
    (bin_dir / "unsquashfs").symlink_to(shutil.which("unsquashfs") or "/usr/bin/unsquashfs")
    assert run({"tool": "/images/tool.sqfs"})["squashfs tools"][0] is True
