"""The container runtimes, one module each (see base.py for what a runtime says of itself), and
what the rest of the plugin asks of the configured one.

The environment never goes on the command line (values would show in ``ps`` and need quoting):
each runtime says how the variables it is given in the process environment reach the container,
and ``env_entries`` writes them in that form to the container's env file.
"""

from __future__ import annotations

from collections.abc import Sequence

from interlink_slurm.translate.plan import ContainerPlan
from interlink_slurm.translate.runtimes.apptainer import Apptainer, Singularity
from interlink_slurm.translate.runtimes.base import Runtime
from interlink_slurm.translate.runtimes.charliecloud import (
    Charliecloud,
    image_paths_argv,
    parse_image_paths,
)
from interlink_slurm.translate.runtimes.enroot import Enroot

__all__ = [
    "RUNTIMES",
    "Runtime",
    "container_argv",
    "env_entries",
    "has_read_only_binds",
    "host_heeded",
    "image_paths_argv",
    "launcher_heeded",
    "local_images_only",
    "parse_image_paths",
    "register",
    "runs_image_command",
    "runtime_of",
]

RUNTIMES: dict[str, Runtime] = {
    rt.name: rt for rt in (Apptainer(), Singularity(), Enroot(), Charliecloud())
}


def register(runtime: Runtime) -> None:
    """Make a runtime known by its name (the built-in ones are; a test adds its own)."""
    RUNTIMES[runtime.name] = runtime


def runtime_of(name: str) -> Runtime:
    """The runtime of this name (configuration accepts only known names)."""
    return RUNTIMES[name]


def host_heeded(runtime: str, name: str) -> bool:
    """Whether the runtime's own process, on the host, would act on this variable."""
    return RUNTIMES[runtime].heeds(name)


# Variables Slurm's commands and the MPI launchers act on (srun --task-prolog is
# SLURM_TASK_PROLOG, mpirun -x is OMPI_MCA_..., Hydra's launcher is HYDRA_LAUNCHER...). The job
# keeps the pod's variables from the launcher (they are set after it, for the runtime only), but
# a site that runs no code of the pod's choosing refuses them outright.
LAUNCHER_HEEDED = (
    "SLURM_",
    "SRUN_",
    "SALLOC_",
    "SBATCH_",
    "OMPI_",
    "PRTE_",
    "PMIX_",
    "PMI",
    "HYDRA_",
    "MPIEXEC_",
    "I_MPI_",
)


def launcher_heeded(name: str) -> bool:
    """Whether Slurm or an MPI launcher would act on this variable."""
    return name.startswith(LAUNCHER_HEEDED)


def env_entries(runtime: str, env: Sequence[tuple[str, str]]) -> list[str]:
    """``NAME=VALUE`` strings for the job to put in the runtime's environment."""
    prefix = RUNTIMES[runtime].env_prefix
    return [f"{prefix}{name}={value}" for name, value in env]


def runs_image_command(runtime: str) -> bool:
    """Whether the runtime itself runs an image's ENTRYPOINT and CMD when given no command
    (Apptainer's run, Enroot's start). Charliecloud does not: the plugin reads them from the
    image's ch-image metadata (images.image_command)."""
    return RUNTIMES[runtime].runs_image_command


def has_read_only_binds(runtime: str) -> bool:
    """Whether the runtime can bind a volume read-only (Charliecloud 0.31 cannot: its binds are
    read-write, and the job falls back on the files' permissions)."""
    return RUNTIMES[runtime].read_only_binds


def container_argv(
    runtime: str, binary: str, options: Sequence[str], c: ContainerPlan
) -> list[str]:
    """The command that runs a container with this runtime."""
    return RUNTIMES[runtime].argv(binary, options, c)


def local_images_only(runtime: str, image_cache: bool) -> bool:
    """Whether the runtime can only be given an image staged on the cluster (mapped, rooted or
    an absolute path); ``image_cache``: whether image_cache_dir is set, into which the runtimes
    that can import registry images (Runtime.pull_schemes) have them pulled first."""
    rt = RUNTIMES[runtime]
    return not rt.runs_registry_images and not (image_cache and rt.pull_schemes)
