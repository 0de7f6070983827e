"""Choosing how Slurm is reached: the transport/scheduler keys, their nested settings, the
combinations that cannot work (each named), and what the factory builds from them."""

from __future__ import annotations

import asyncio
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.errors import SchedulerError, SubmitRejected
from interlink_slurm.slurm import factory
from interlink_slurm.slurm.cli import CliScheduler
from interlink_slurm.slurm.pyslurm_scheduler import PyslurmScheduler
from interlink_slurm.slurm.rest import RestScheduler
from interlink_slurm.slurm.ssh import SSHTransport
from interlink_slurm.slurm.transport import LocalTransport

SSH = {"host": "login.leonardo.cineca.it", "user": "a08trb01", "key_file": "/etc/ils/id_ed25519"}
REST = {"url": "unix:///run/slurmrestd/slurmrestd.socket"}


def settings(**config: Any) -> Any:
    return load_settings(None, data_root="/scratch/pods", **config)


def test_defaults_are_local_commands() -> None:
    s = settings()
    assert (s.transport, s.scheduler, s.ssh, s.rest) == ("local", "cli", None, None)
    transport, scheduler = factory.build(s)
    assert isinstance(transport, LocalTransport)
    assert isinstance(scheduler, CliScheduler)


def test_slurm_options_in_the_services_environment_left_out_are_named_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """sbatch reads SBATCH_ACCOUNT as --account: an operator who set it in the unit's
    environment is told it no longer reaches sbatch unless pass_environment lists it."""
    for name in list(os.environ):  # this shell's own (SLURM_CONF of the test cluster...)
        if name.startswith(("SBATCH_", "SLURM_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SBATCH_ACCOUNT", "a08trb01")
    monkeypatch.setenv("SQUEUE_FORMAT", "%i")
    monkeypatch.setenv("SBATCH_QOS", "boost_qos_dbg")
    monkeypatch.setenv("LAB_SECRET", "not Slurm's")
    with caplog.at_level("WARNING", logger="interlink_slurm.slurm.factory"):
        factory.build_transport(settings(pass_environment=["PATH", "SBATCH_QOS"]))
    [record] = caplog.records
    assert record.getMessage().endswith(": SBATCH_ACCOUNT, SQUEUE_FORMAT")
    caplog.clear()
    with caplog.at_level("WARNING", logger="interlink_slurm.slurm.factory"):
        factory.build_transport(settings(pass_environment=["PATH", "SBATCH_*", "SQUEUE_*"]))
    assert caplog.records == []


def test_ssh_settings_have_safe_defaults() -> None:
    s = settings(transport="ssh", ssh=SSH, state_db="/var/lib/ils/state.db")
    assert s.ssh is not None
    assert (s.ssh.port, s.ssh.insecure_skip_host_key_check) == (22, False)
    assert s.ssh.known_hosts == Path("~/.ssh/known_hosts")
    assert (s.ssh.keepalive_seconds, s.ssh.connect_timeout, s.ssh.max_channels) == (30, 10, 8)
    transport, scheduler = factory.build(s)
    assert isinstance(transport, SSHTransport)
    assert isinstance(scheduler, CliScheduler)


def test_rest_settings_default_to_slurm_22_05s_version() -> None:
    s = settings(scheduler="rest", rest=REST)
    assert s.rest is not None
    assert (s.rest.api_version, s.rest.unix_socket) == (
        "v0.0.38",
        "/run/slurmrestd/slurmrestd.socket",
    )
    _, scheduler = factory.build(s)
    assert isinstance(scheduler, RestScheduler)


def test_environment_variables_can_choose_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERLINK_SLURM_SCHEDULER", "rest")
    monkeypatch.setenv(
        "INTERLINK_SLURM_REST", '{"url": "https://rest.hpc:6820", "token_file": "/run/jwt"}'
    )
    s = settings()
    assert s.rest is not None and s.rest.url == "https://rest.hpc:6820"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"transport": "ssh", "state_db": "/s.db"}, ["ssh: required with transport: ssh"]),
        ({"transport": "ssh", "ssh": SSH}, ["state_db: required with transport: ssh"]),
        ({"scheduler": "rest"}, ["rest: required with scheduler: rest"]),
        ({"transport": "scp"}, ["transport"]),
        ({"scheduler": "slurmrestd"}, ["scheduler"]),
        ({"ssh": {**SSH, "port": 0}}, ["ssh.port"]),
        ({"ssh": {**SSH, "hots": "x"}}, ["ssh.hots: unknown key"]),
        ({"ssh": {"host": "h"}}, ["ssh.user", "Field required"]),
        ({"ssh": {**SSH, "key_file": "id_rsa"}}, ["ssh.key_file", "absolute"]),
        ({"ssh": {**SSH, "key_file": None, "certificate_file": "/c"}}, ["certificate_file needs"]),
        ({"ssh": {**SSH, "max_channels": 0}}, ["ssh.max_channels"]),
        ({"rest": {"url": "slurmrestd:6820"}}, ["rest.url", "http(s)://host:port"]),
        ({"rest": {"url": "unix://run/x.sock"}}, ["rest.url", "absolute"]),
        ({"rest": {"url": "http://rest:6820"}}, ["token_file is required with a TCP url"]),
        ({"rest": {**REST, "api_version": "v0.0.37"}}, ["rest.api_version", "v0.0.38"]),
        ({"rest": {**REST, "api_version": "0.0.40"}}, ["rest.api_version"]),
        ({"rest": {**REST, "timeout": 0}}, ["rest.timeout"]),
    ],
)
def test_a_wrong_setting_or_combination_is_named(config: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        settings(**config)
    for w in words:
        assert w in str(err.value)


def test_pyslurm_cannot_work_through_ssh() -> None:
    s = settings(transport="ssh", ssh=SSH, state_db="/var/lib/ils/state.db", scheduler="pyslurm")
    with pytest.raises(ConfigError, match="transport: local"):
        factory.build(s)


# --- pyslurm (optional: absent here, as on most machines) ----------------------------------------


def test_choosing_pyslurm_without_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)  # makes the import fail
    with pytest.raises(SchedulerError) as err:
        factory.build(settings(scheduler="pyslurm"))
    assert "pip install 'pyslurm==<major>.<minor>.*'" in str(err.value)
    assert "scheduler: cli or scheduler: rest" in str(err.value)


class FakePyslurm(types.SimpleNamespace):
    """The slice of pyslurm's object API the scheduler uses (pyslurm itself cannot be built
    against Slurm 22.05, so this stands in for it)."""

    def __init__(self) -> None:
        submitted: list[Any] = []
        released: list[int] = []

        class Job:
            def __init__(self, job_id: int) -> None:
                self.job_id = job_id

            def release(self) -> None:
                if self.job_id == 79:
                    raise RuntimeError("Job has already finished")
                if self.job_id == 80:
                    raise RuntimeError("Access/permission denied")
                released.append(self.job_id)

        class Desc:
            def __init__(self, **kw: Any) -> None:
                self.kw = kw
                self.loaded = False

            def load_sbatch_options(self) -> None:
                self.loaded = True

            def submit(self) -> int:
                if "nope" in self.kw["script"]:
                    raise RuntimeError("Invalid partition name specified")
                submitted.append(self)
                return 77

        job = types.SimpleNamespace(
            id=77, state="PENDING", state_reason="Priority", comment="interlink-slurm:u1"
        )
        node = types.SimpleNamespace(
            partitions=["gpu"],
            state="MIXED",
            total_cpus=32,
            real_memory=1000,
            configured_gres={"gpu:a100": 4},
        )
        drained = types.SimpleNamespace(
            partitions=["gpu"],
            state="IDLE+DRAIN",
            total_cpus=32,
            real_memory=1000,
            configured_gres={},
        )
        super().__init__(
            JobSubmitDescription=Desc,
            Job=Job,
            released=released,
            Jobs=types.SimpleNamespace(load=lambda: {77: job}),
            Nodes=types.SimpleNamespace(load=lambda: {"n1": node, "n2": drained}),
            submitted=submitted,
        )


def test_pyslurm_scheduler_maps_pyslurms_objects(tmp_path: Path) -> None:
    py = FakePyslurm()
    scheduler = PyslurmScheduler(LocalTransport(), module=py, environment={"PATH": "/usr/bin"})
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --partition=gpu\ntrue\n")

    async def scenario() -> None:
        assert await scheduler.submit(str(script), str(tmp_path), ["--partition=gpu"]) == "77"
        jobs = await scheduler.query(["77", "78"])
        assert list(jobs) == ["77"] and jobs["77"].reason == "Priority"
        found = await scheduler.find_by_comment("interlink-slurm:u1")
        assert found is not None and found.job_id == "77"
        res = await scheduler.resources(["gpu"])
        assert (res.nodes, res.cpus, res.gpus) == (1, 32, {"a100": 4})
        bad = tmp_path / "nope.sh"
        bad.write_text("#!/bin/bash\n")
        with pytest.raises(SubmitRejected, match="Invalid partition"):
            await scheduler.submit(str(bad), str(tmp_path), ())
        await scheduler.release("77")
        await scheduler.release("79")  # ended meanwhile: nothing to release, not an error
        with pytest.raises(SchedulerError, match="permission denied"):
            await scheduler.release("80")

    asyncio.run(scenario())
    assert py.released == [77]
    (desc,) = py.submitted
    # The job gets the environment given, not this process's (pyslurm's default, "ALL").
    assert desc.loaded and desc.kw == {
        "script": str(script),
        "working_directory": str(tmp_path),
        "environment": {"PATH": "/usr/bin"},
    }
