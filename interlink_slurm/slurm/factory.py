"""How Slurm is reached, chosen from the configuration: one Transport and one Scheduler.

| transport | scheduler | commands / files                     | jobs submitted with        |
|-----------|-----------|--------------------------------------|----------------------------|
| local     | cli       | this machine                         | sbatch, squeue, ...        |
| ssh       | cli       | the login node (exec, SFTP)          | sbatch, ... on login node  |
| local/ssh | rest      | where the transport says             | slurmrestd (script content)|
| local     | pyslurm   | this machine                         | Slurm's C API (pyslurm)    |
"""

from __future__ import annotations

import logging
import os
from fnmatch import fnmatchcase

from interlink_slurm.config import DEFAULT_CLUSTER, ConfigError, Settings
from interlink_slurm.slurm.cli import CliScheduler
from interlink_slurm.slurm.scheduler import Scheduler
from interlink_slurm.slurm.transport import LocalTransport, Transport

SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "sacct", "scontrol")
# Variables Slurm's commands read as options: set in the service's environment, an operator may
# expect them to act (SBATCH_ACCOUNT...), but only what pass_environment lists reaches them.
SLURM_INPUT_VARIABLES = ("SBATCH_*", "SLURM_*", "SALLOC_*", "SRUN_*", "SQUEUE_*", "SINFO_*")

log = logging.getLogger(__name__)


def build_transport(settings: Settings) -> Transport:
    """The transport the configuration names: local processes and files, or SSH to a
    login node."""
    if settings.transport == "ssh":
        from interlink_slurm.slurm.ssh import SSHTransport

        assert settings.ssh is not None  # checked by Settings
        return SSHTransport(
            settings.ssh, env=settings.command_env(), timeout=settings.command_timeout
        )
    env = settings.local_command_env(os.environ)
    left = sorted(
        name
        for name in os.environ
        if name not in env and any(fnmatchcase(name, p) for p in SLURM_INPUT_VARIABLES)
    )
    if left:
        log.warning(
            "not passed to the Slurm commands (list them in pass_environment to pass them): %s",
            ", ".join(left),
        )
    return LocalTransport(env)


def build_scheduler(settings: Settings, transport: Transport) -> Scheduler:
    """The scheduler the configuration names (cli, rest or pyslurm), over ``transport``."""
    if settings.scheduler == "rest":
        from interlink_slurm.slurm.rest import RestScheduler

        assert settings.rest is not None  # checked by Settings
        return RestScheduler(settings.rest, transport, sbatch=settings.slurm_command("sbatch"))
    if settings.scheduler == "pyslurm":
        from interlink_slurm.slurm.pyslurm_scheduler import PyslurmScheduler

        if settings.transport != "local":
            raise ConfigError(
                "scheduler: pyslurm calls Slurm from this process, which must then run on a "
                "login node: use it with transport: local"
            )
        return PyslurmScheduler(
            transport,
            sbatch=settings.slurm_command("sbatch"),
            environment=settings.local_command_env(os.environ),
        )
    return CliScheduler(
        transport,
        timeout=settings.command_timeout,
        command={name: settings.slurm_command(name) for name in SLURM_COMMANDS},
    )


def build(settings: Settings) -> tuple[Transport, Scheduler]:
    """The transport and scheduler of ``settings``. Nothing is contacted yet: connections are
    opened on first use. Raises ConfigError, or SchedulerError when pyslurm is missing."""
    transport = build_transport(settings)
    return transport, build_scheduler(settings, transport)


def build_clusters(settings: Settings) -> dict[str, tuple[Transport, Scheduler]]:
    """The transport and scheduler of every cluster pods can go to (``cluster_names``), the
    default one first and always. Nothing is contacted yet."""
    out = {DEFAULT_CLUSTER: build(settings)}
    for name in settings.cluster_names:
        if name != DEFAULT_CLUSTER:
            out[name] = build(settings.for_cluster(name))
    return out


def close(transport: Transport) -> None:
    """Close what the transport holds open (the SSH connection)."""
    closer = getattr(transport, "close", None)
    if callable(closer):
        closer()


async def aclose(scheduler: Scheduler) -> None:
    """Close what the scheduler holds open (slurmrestd's HTTP connections)."""
    closer = getattr(scheduler, "aclose", None)
    if callable(closer):
        await closer()


def describe(settings: Settings) -> str:
    """One line saying how Slurm is reached, for logs and doctor."""
    where = "this machine"
    if settings.transport == "ssh" and settings.ssh is not None:
        where = f"ssh {settings.ssh.target}"
    how = {"cli": "Slurm commands", "pyslurm": "pyslurm"}.get(settings.scheduler, "")
    if settings.scheduler == "rest" and settings.rest is not None:
        how = f"slurmrestd {settings.rest.url} ({settings.rest.api_version})"
    return f"transport {settings.transport} ({where}), scheduler {settings.scheduler} ({how})"


def describe_all(settings: Settings) -> str:
    """How each cluster pods can go to is reached, for logs and doctor."""
    names = settings.cluster_names
    if names == [DEFAULT_CLUSTER]:
        return describe(settings)
    return "; ".join(f"cluster {n}: {describe(settings.for_cluster(n))}" for n in names)
