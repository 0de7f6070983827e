"""doctor's checks of the image cache and of what pulls on the submit host need (locally)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from interlink_slurm.config import load_settings
from interlink_slurm.slurm.doctor import Doctor
from interlink_slurm.slurm.fake import FakeScheduler
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
